"""The page of one session: a panel on the left (input, run, segments, statistics, downloads), views on the right.

Only layout lives here; every rule (which tasks a filter lists, which speeds a task offers, what the button
says) comes from the Slicer panel's ``panel_state`` through the session's state, and every action calls the
session's controller. ``data-testid`` attributes are what the browser tests click.
"""

from __future__ import annotations

from trame.ui.vuetify3 import VAppLayout
from trame.widgets import html
from trame.widgets import vuetify3 as v3

PANEL_WIDTH = 400


def _id(name: str) -> list[str]:
    return [f'data-testid="{name}"']


def build_page(server, layout_manager, title: str) -> VAppLayout:
    ctrl = server.controller
    with VAppLayout(server, template_name="main") as page:
        page.root.theme = "dark"
        with v3.VAppBar(density="compact"):
            v3.VToolbarTitle(title)
            html.Div("{{ input_name }}", classes="text-caption mr-4", raw_attrs=_id("input-name"))
        with v3.VNavigationDrawer(permanent=True, width=PANEL_WIDTH, location="left"), html.Div(
                classes="pa-3 d-flex flex-column ga-3"):
            _messages()
            _input_section(ctrl)
            _run_section(ctrl)
            _segments_section(ctrl)
            _results_section()
        with v3.VMain(), html.Div(classes="d-flex fill-height", style="height: calc(100vh - 48px);"):
            layout_manager.initialize_layout_grid(page)
    return page


def _messages() -> None:
    v3.VAlert(v_if=("error_message",), type="error", density="compact", closable=True,
              text=("error_message",), raw_attrs=_id("error"), **{"click:close": "error_message = ''"})
    v3.VAlert(v_if=("status_message",), type="info", density="compact", text=("status_message",),
              raw_attrs=_id("status"))


def _input_section(ctrl) -> None:
    html.Div("Input", classes="text-subtitle-2")
    html.Input(type="file", accept=".nii,.gz,.nrrd,.nhdr,.mha,.mhd,.zip", disabled=("busy_loading || running",),
               change="window.totalsegUpload($event.target)", raw_attrs=_id("upload"))
    html.Div("Max. {{ max_upload_mb }} MB. NIfTI, NRRD, MHA, or a .zip of one DICOM series.",
             classes="text-caption")
    with html.Div(v_if=("data_root_enabled",), classes="d-flex flex-column"):
        html.Div("On the server: /{{ data_path }}", classes="text-caption")
        with v3.VList(density="compact", max_height=180, classes="overflow-y-auto", raw_attrs=_id("data-root")):
            v3.VListItem(title="..", v_if=("data_path",), click=(ctrl.browse_up,), prepend_icon="mdi-folder-arrow-up")
            v3.VListItem(v_for="entry in data_entries", key="entry.path", title=("entry.name",),
                         prepend_icon=("entry.kind === 'image' ? 'mdi-file-image' : "
                                       "(entry.kind === 'dicom' ? 'mdi-folder-image' : 'mdi-folder')",),
                         click="trigger('totalseg_open_entry', [entry.path, entry.kind])",
                         raw_attrs=[':data-testid="\'entry-\' + entry.name"'])
    v3.VProgressLinear(v_if=("busy_loading",), indeterminate=True)


def _run_section(ctrl) -> None:
    v3.VDivider()
    with v3.VBtnToggle(v_model=("modality_filter",), mandatory=True, density="compact", divided=True,
                       raw_attrs=_id("modality")):
        for name in ("All", "CT", "MR"):
            v3.VBtn(name, value=name, size="small")
    v3.VSelect(v_model=("task",), items=("task_items",), label="Task", density="compact", hide_details=True,
               raw_attrs=_id("task"))
    v3.VSelect(v_model=("speed",), items=("speed_items",), label="Speed", density="compact", hide_details=True,
               raw_attrs=_id("speed"))
    v3.VAutocomplete(v_if=("roi_enabled",), v_model=("roi_subset",), items=("roi_items",), label="ROI subset",
                     multiple=True, chips=True, closable_chips=True, density="compact", hide_details=True,
                     placeholder="All structures", raw_attrs=_id("roi"))
    v3.VSelect(v_model=("device",), items=("device_items",), label="Device", density="compact", hide_details=True,
               raw_attrs=_id("device"))
    v3.VCheckbox(v_model=("surfaces",), label="Surfaces for 3D printing (STL download)", density="compact",
                 hide_details=True, raw_attrs=_id("surfaces"))
    v3.VTextField(v_if=("task_licensed",), v_model=("license_number",), label="Licence number",
                  density="compact", hide_details=True)
    v3.VBtn("{{ running ? 'Cancel' : 'Run' }}", color=("running ? 'error' : 'primary'",), block=True,
            disabled=("!has_input && !running",), click=(ctrl.run_or_cancel,), raw_attrs=_id("run"))
    with html.Div(v_if=("running || progress_message",)):
        # Never indeterminate: its endless animation kept a core of a software-rendering browser busy (a third of
        # a core in headless Chromium here), taken from the engine when both share a machine.
        v3.VProgressLinear(model_value=("progress",), height=8, raw_attrs=_id("progress"))
        html.Div("{{ queue_message || progress_message }}", classes="text-caption", raw_attrs=_id("progress-message"))


def _segments_section(ctrl) -> None:
    with html.Div(v_if=("segments.length",), classes="d-flex flex-column"):
        v3.VDivider()
        html.Div("Segments ({{ segments.length }})", classes="text-subtitle-2")
        with v3.VList(density="compact", max_height=260, classes="overflow-y-auto", raw_attrs=_id("segments")), \
                v3.VListItem(v_for="s in segments", key="s.id", raw_attrs=[':data-testid="\'segment-\' + s.id"']), \
                html.Div(classes="d-flex align-center justify-start ga-2", style="width: 100%;"):
            html.Span(style=("`display:inline-block;width:14px;height:14px;border-radius:3px;"
                             "background:${s.color}`",), raw_attrs=[':data-color="s.color"'])
            v3.VCheckboxBtn(model_value=("s.visible",), density="compact",
                            update_modelValue=(ctrl.set_segment_visible, "[s.id, $event]"))
            html.Span("{{ s.name }}", classes="segment-name text-left flex-grow-1", style="cursor: pointer;",
                      title="Show this segment in the slice views", click=(ctrl.jump_to_segment, "[s.id]"))
        v3.VSlider(v_model=("opacity",), min=0, max=1, step=0.05, label="Opacity", density="compact",
                   hide_details=True, raw_attrs=_id("opacity"))
        v3.VCheckbox(v_model=("show_3d",), label="3D surfaces", density="compact", hide_details=True)
    with html.Div(v_if=("has_input",), classes="d-flex flex-column ga-1"):
        html.Div("Window/level", classes="text-subtitle-2")
        with html.Div(classes="d-flex ga-1"):
            for preset, label in (("CT_ABDOMEN", "Soft tissue"), ("CT_BONE", "Bone"), ("CT_LUNG", "Lung")):
                v3.VBtn(label, size="small", click=(ctrl.apply_preset, f"['{preset}']"),
                        raw_attrs=_id(f"preset-{preset}"))
        html.Div("{{ probe_text }}", classes="text-caption", raw_attrs=_id("probe"))


def _results_section() -> None:
    with html.Div(v_if=("statistics.length",)):
        v3.VDivider()
        html.Div("Statistics", classes="text-subtitle-2")
        v3.VDataTable(items=("statistics",), headers=("statistics_headers",), density="compact",
                      items_per_page=10, raw_attrs=_id("statistics"))
    with html.Div(v_if=("downloads.length",), classes="d-flex flex-column"):
        html.Div("Download", classes="text-subtitle-2")
        html.A("{{ d.label }}", v_for="d in downloads", key="d.kind", href=("d.href",), download=("d.file",),
               raw_attrs=[':data-testid="\'download-\' + d.kind"'])
