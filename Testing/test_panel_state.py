"""The panel's rules without Qt: which tasks a filter lists, what a filter change selects, speeds, ROI, Apply."""

from __future__ import annotations

import pytest
from totalseg_engine.tasks import all_tasks
from totalseg_slicer import panel_state as ps


def test_filters_list_their_modality_in_registry_order():
    every = list(all_tasks())
    assert [t.name for t in ps.tasks_for("All")] == every
    assert {t.modality for t in ps.tasks_for("MR")} == {"MR"}
    assert len(ps.tasks_for("CT")) + len(ps.tasks_for("MR")) == len(every)


def test_choices_mark_licensed_tasks_and_describe_them():
    choices = {c.name: c for c in ps.task_choices("All")}
    assert choices["heartchambers_highres"].label == "heartchambers_highres  (CT, licence)"
    assert choices["total"].label == "total  (CT)"
    assert "Needs a licence key" in choices["heartchambers_highres"].tooltip
    assert choices["total"].tooltip.startswith("total (CT): 117 structures") and ", ..." in choices["total"].tooltip


@pytest.mark.parametrize("modality, current, expected", [
    ("MR", "total", "total_mr"), ("CT", "total_mr", "total"), ("MR", "tissue_types", "tissue_types_mr"),
    ("MR", "vertebrae_mr", "vertebrae_mr"), ("All", "lung_vessels", "lung_vessels"),
    ("MR", "lung_vessels", "total_mr"), ("CT", "brain_aneurysm", "total"),
])
def test_a_filter_change_selects_the_counterpart_or_the_first_listed(modality, current, expected):
    assert ps.task_after_filter_change(modality, current) == expected


def test_a_task_set_elsewhere_widens_the_filter_only_when_hidden():
    assert ps.filter_showing("MR", "total_mr") == "MR"
    assert ps.filter_showing("MR", "total") == "All"
    assert ps.filter_showing("All", "total") == "All"


def test_speeds_offered_and_kept():
    assert ps.offered_speeds("total") == {"normal": True, "fast": True, "fastest": True}
    assert ps.offered_speeds("lung_vessels") == {"normal": True, "fast": False, "fastest": False}
    assert ps.speed_for("lung_vessels", "fast") == "normal"
    assert ps.speed_for("total_mr", "fast") == "fast"


def test_roi_rules():
    assert ps.roi_supported("total") and ps.roi_supported("total_mr") and not ps.roi_supported("body")
    assert ps.roi_summary([]) == "All structures" and ps.roi_summary(["liver", "spleen"]) == "2 selected"
    assert ps.roi_matches(" KID", "Left kidney", "kidney_left")
    assert ps.roi_matches("", "Liver", "liver")
    assert not ps.roi_matches("lung", "Liver", "liver")


def test_apply_button_states():
    assert ps.apply_button(running=True, has_input=False).text == "Cancel"
    idle = ps.apply_button(running=False, has_input=False)
    assert (idle.text, idle.enabled) == ("Apply", False)
    assert ps.apply_button(running=False, has_input=True).enabled
