"""The web app end to end: ``totalseg_web`` started as a program, driven by Playwright in Debian's Chromium.

The launcher runs on 127.0.0.1 with a weights home holding the fast ``total`` model in the release layout
(untrained weights from the model factory, as the command-line tests use) and a data root. Nothing is
skipped: a missing Chromium or Playwright fails these tests (``.ci/run`` installs both). Screenshots land in
``$TOTALSEG_WEB_SCREENSHOTS`` when set (the README's pictures come from there).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import slicerio
from PIL import Image
from totalseg_engine import imageio, terminology
from web_support import (
    MAX_UPLOAD_MB,
    RUN_TIMEOUT_MS,
    engine_processes,
    new_page,
    open_image,
    run_fast,
    start_launcher,
    stop_launcher,
    upload,
    wait_for_text,
)


def screenshot(page, name: str, tmp_path: Path) -> Image.Image:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    if os.environ.get("TOTALSEG_WEB_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["TOTALSEG_WEB_SCREENSHOTS"]) / f"web-{name}.png")
    return Image.open(path).convert("RGB")


def coloured_pixels(image: Image.Image, box: tuple[int, int, int, int]) -> int:
    """Pixels of clearly non-grey colour in a region: a CT is grey, segment colours are not."""
    rgb = np.asarray(image.crop(box)).astype(int)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > 60).sum())


def wait_for_screen(page, condition: Callable[[Image.Image], bool], timeout_s: float = 30) -> Image.Image:
    """Screenshots until ``condition`` holds: the views' new frames are rendered and streamed some time later."""
    deadline = time.monotonic() + timeout_s
    while True:
        image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
        if condition(image):
            return image
        assert time.monotonic() < deadline, "the views never showed what was expected"
        page.wait_for_timeout(500)


def view_boxes(page) -> dict[str, tuple[int, int, int, int]]:
    """Screen boxes of the four views: the right-hand layout is coronal, 3D / sagittal, axial (Quad View)."""
    boxes = {}
    for element in page.query_selector_all(".v-main img, .v-main canvas, .v-main video"):
        b = element.bounding_box()
        if b and b["width"] > 100:
            boxes[(round(b["x"]), round(b["y"]))] = (int(b["x"]), int(b["y"]), int(b["x"] + b["width"]),
                                                     int(b["y"] + b["height"]))
    ordered = [boxes[key] for key in sorted(boxes, key=lambda k: (k[1] > 300, k[0]))]
    assert len(ordered) == 4, f"expected four views, found {len(ordered)}"
    return dict(zip(("coronal", "threed", "sagittal", "axial"), ordered))


@pytest.fixture(scope="module")
def cli_outputs(home, data_dir, tmp_path_factory) -> Path:
    """The command line's multilabel result and surfaces on the same file and weights (``-ot nifti stl``)."""
    out = tmp_path_factory.mktemp("cli") / "example_ct_total"
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home)}
    subprocess.run([sys.executable, "-m", "totalseg_engine", "-i", str(data_dir / "example_ct.nii.gz"), "-o",
                    str(out), "-ot", "nifti", "stl", "--fast", "--device", "cpu"], env=env, check=True, timeout=600)
    return out.parent


@pytest.fixture(scope="module")
def cli_result(cli_outputs):
    return imageio.read_image(cli_outputs / "example_ct_total.nii.gz")


# ------------------------------------------------------------------------------------------------ tests


def test_upload_run_view_and_download_equal_the_command_line(browser, server, data_dir, cli_result, cli_outputs,
                                                            tmp_path):
    page = new_page(browser, server)
    open_image(page, data_dir / "example_ct.nii.gz")
    before = screenshot(page, "loaded", tmp_path)
    boxes = view_boxes(page)
    assert all(coloured_pixels(before, boxes[v]) < 50 for v in ("axial", "coronal", "sagittal", "threed"))

    page.click('[data-testid="surfaces"] input[type="checkbox"]')
    page.wait_for_function("window.trame.state.get('surfaces') === true", timeout=15_000)
    run_fast(page)
    page.wait_for_selector('[data-testid="run"]:has-text("Cancel")', timeout=30_000)
    page.wait_for_selector('[data-testid="segments"]', timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(3000)  # let the views stream their new frames

    labels = np.asanyarray(cli_result.dataobj)
    label_map = imageio.read_label_map(cli_result)
    expected = [terminology.segment_info(label_map[v])[0] for v in sorted(set(np.unique(labels)) - {0})]
    shown = [e.inner_text().strip() for e in page.query_selector_all('[data-testid="segments"] .segment-name')]
    assert shown == expected and len(shown) > 3

    page.click('[data-testid="segments"] .segment-name')  # move the slices through the first segment
    after = wait_for_screen(page, lambda image: all(coloured_pixels(image, box) > 200 for box in boxes.values()))
    screenshot(page, "segmented", tmp_path)

    with page.expect_download() as download:
        page.click('[data-testid="download-nifti"]')
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    web = imageio.read_image(saved)
    assert np.array_equal(np.asanyarray(web.dataobj), labels)
    assert np.allclose(web.affine, cli_result.affine) and imageio.read_label_map(web) == label_map
    with page.expect_download() as seg_download:
        page.click('[data-testid="download-seg_nrrd"]')
    segmentation = slicerio.read_segmentation(seg_download.value.path())
    assert [segment["name"] for segment in segmentation["segments"]] == shown
    assert all(segment["terminology"]["type"][1] and segment["terminology"]["category"][1]
               for segment in segmentation["segments"])  # every segment carries its coded terminology
    for kind in ("statistics_csv", "statistics_json"):
        assert page.query_selector(f'[data-testid="download-{kind}"]') is not None
    check_surfaces_download(page, cli_outputs / "example_ct_total_stl", label_map, labels)
    assert page.query_selector('[data-testid="download-dicom_seg"]') is None  # only for DICOM inputs
    table = page.inner_text('[data-testid="statistics"]')
    assert all(name in table for name in shown[:10])  # a row per segment (10 to a page)

    soft_tissue = np.asarray(after.crop(boxes["axial"])).mean()
    page.click('[data-testid="preset-CT_LUNG"]')
    wait_for_screen(page, lambda image: abs(np.asarray(image.crop(boxes["axial"])).mean() - soft_tissue) > 1)
    screenshot(page, "lung-window", tmp_path)
    check_probe_names_the_structure_under_the_mouse(page, boxes["axial"], labels, label_map)

    first = page.query_selector('[data-testid="segments"] input[type="checkbox"]')
    first.click()
    page.wait_for_function("!window.trame.state.get('segments')[0].visible", timeout=15_000)  # the server's word
    assert not first.is_checked()

    shown_axial = coloured_pixels(after, boxes["axial"])
    page.evaluate("window.trame.state.set('opacity', 0)")
    wait_for_screen(page, lambda image: coloured_pixels(image, boxes["axial"]) < shown_axial / 10)
    page.context.close()


def check_surfaces_download(page, cli_surfaces: Path, label_map: dict, labels: np.ndarray) -> None:
    """The zip holds the STL of every structure found, byte for byte the command line's ``-ot stl`` file."""
    with page.expect_download() as download:
        page.click('[data-testid="download-surfaces_stl"]')
    assert download.value.suggested_filename == "example_ct_total_surfaces_stl.zip"
    with zipfile.ZipFile(download.value.path()) as archive:
        names = sorted(archive.namelist())
        assert names == sorted(f"{label_map[v]}.stl" for v in set(np.unique(labels)) - {0})
        assert all(archive.read(name) == (cli_surfaces / name).read_bytes() for name in names)


def check_probe_names_the_structure_under_the_mouse(page, box, labels: np.ndarray, label_map: dict) -> None:
    """Hover over several points of the axial view; the probe must name the label the CLI has at that voxel."""
    named = set()
    for fx, fy in ((0.5, 0.5), (0.4, 0.6), (0.6, 0.4), (0.45, 0.55), (0.55, 0.5)):
        before = page.inner_text('[data-testid="probe"]')
        page.mouse.move(box[0] + fx * (box[2] - box[0]), box[1] + fy * (box[3] - box[1]))
        wait_for_text(page, "probe", f"text !== {before!r}")
        text = page.inner_text('[data-testid="probe"]')
        voxel = tuple(int(v) for v in re.search(r"voxel \((\d+), (\d+), (\d+)\)", text).groups())
        label = int(labels[voxel])
        expected = terminology.segment_info(label_map[label])[0] if label else "no structure"
        assert text.startswith(expected + " ·"), (text, expected)
        named.add(expected)
    assert len(named) >= 1


def test_a_dicom_series_from_the_data_root_gives_a_dicom_seg(browser, server, data_root, tmp_path):
    page = new_page(browser, server)
    page.click('[data-testid="entry-ct_dicom"]')
    page.wait_for_selector('[data-testid="input-name"]:has-text("ct_dicom")', timeout=120_000)
    run_fast(page)
    page.wait_for_selector('[data-testid="download-dicom_seg"]', timeout=RUN_TIMEOUT_MS)
    with page.expect_download() as download:
        page.click('[data-testid="download-dicom_seg"]')
    import pydicom

    seg = pydicom.dcmread(download.value.path())
    page.wait_for_selector('[data-testid="segments"] .segment-name')  # the list may render a frame after the links
    shown = page.query_selector_all('[data-testid="segments"] .segment-name')
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == len(shown) > 0
    referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    # the SEG points at each slice it was computed from (this series' own UIDs are empty: the writer fills them)
    assert len(referenced) == len(list((data_root / "ct_dicom").iterdir()))
    page.context.close()


def test_escaping_the_data_root_is_refused(browser, server):
    page = new_page(browser, server)
    names = page.inner_text('[data-testid="data-root"]')
    assert "ct_dicom" in names and "private" not in names  # the link to a file outside is not listed
    for path in ("../outside/private.nii.gz", "/etc/passwd", "private.nii.gz"):
        page.evaluate(f"window.trame.trigger('totalseg_open_entry', ['{path}', 'image'])")
        page.wait_for_selector('[data-testid="error"]', timeout=15_000)
        assert "data folder" in page.inner_text('[data-testid="error"]')
        page.evaluate("window.trame.state.set('error_message', '')")
        page.wait_for_selector('[data-testid="error"]', state="detached")
    assert page.inner_text('[data-testid="input-name"]') == ""
    page.context.close()


def test_a_corrupt_or_too_large_upload_gets_a_message_and_the_session_stays_usable(
        browser, server, data_dir, tmp_path):
    page = new_page(browser, server)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes((data_dir / "example_ct.nii.gz").read_bytes()[:5000])
    upload(page, broken)
    page.wait_for_selector('[data-testid="error"]', timeout=60_000)
    assert "broken.nii.gz" in page.inner_text('[data-testid="error"]')

    big = tmp_path / "big.nii"
    big.write_bytes(b"\0" * ((MAX_UPLOAD_MB + 1) * 2**20))
    upload(page, big)
    wait_for_text(page, "error", "text.includes('limit')", timeout=60_000)
    screenshot(page, "corrupt-upload", tmp_path)

    open_image(page, data_dir / "example_ct_sm.nii.gz")  # the same session opens a good file afterwards
    assert page.query_selector('[data-testid="error"]') is None
    page.context.close()


def test_the_upload_limit_holds_for_a_client_that_ignores_the_page(server, browser):
    """A request that skips the page's own size check is cut off by the server, and nothing of it is kept."""
    page = new_page(browser, server)
    session_url = page.url.rsplit("/", 1)[0] + "/"
    body = b"\0" * ((MAX_UPLOAD_MB + 2) * 2**20)
    answer = page.request.post(session_url + "upload", multipart={
        "file": {"name": "huge.nii", "mimeType": "application/octet-stream", "buffer": body}}, timeout=120_000)
    assert answer.status == 413 and "limit" in answer.json()["error"]
    assert not list(Path(server["work"]).rglob("huge.nii"))
    page.context.close()


def test_two_sessions_queue_their_runs_and_cancel_leaves_nothing_running(browser, server, data_dir, tmp_path):
    first, second = new_page(browser, server), new_page(browser, server)
    open_image(first, data_dir / "chest_cta_1.5mm.nii.gz")  # the larger CT: its run lasts long enough to cancel
    assert second.inner_text('[data-testid="input-name"]') == ""  # the other session's scene is not shown here
    open_image(second, data_dir / "example_ct_sm.nii.gz")
    assert first.inner_text('[data-testid="input-name"]') == "chest_cta_1.5mm.nii.gz"

    run_fast(first)
    first.wait_for_selector('[data-testid="run"]:has-text("Cancel")', timeout=30_000)
    run_fast(second)
    wait_for_text(second, "progress-message", "text.includes('1 run ahead')")
    screenshot(second, "queued", tmp_path)

    wait_for_text(first, "progress-message", "/Loading|Reading|Resampling|Predicting/.test(text)")
    first.click('[data-testid="run"]')  # Cancel
    first.wait_for_selector('[data-testid="run"]:has-text("Run")', timeout=30_000)
    assert "Cancelled" in first.inner_text('[data-testid="status"]')
    sessions = list(Path(server["work"]).glob("*/sessions/*"))
    deadline = time.monotonic() + 10
    while any(engine_processes(str(s)) for s in sessions) and time.monotonic() < deadline:
        time.sleep(0.2)

    # its turn came once the first was cancelled
    wait_for_text(second, "progress-message", "text !== '' && !text.includes('ahead')")
    second.click('[data-testid="run"]')  # Cancel the second run too
    second.wait_for_selector('[data-testid="run"]:has-text("Run")', timeout=30_000)
    deadline = time.monotonic() + 10
    while any(engine_processes(str(s)) for s in sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(engine_processes(str(s)) for s in sessions), "an engine process outlived Cancel"

    run_fast(first)  # the app stays usable: the first session runs to the end
    first.wait_for_selector('[data-testid="segments"]', timeout=RUN_TIMEOUT_MS)
    first.context.close()
    second.context.close()


def test_a_closed_session_is_removed_with_its_files(browser, server, data_dir):
    page = new_page(browser, server)
    name = "closed-session.nii.gz"  # a name no other test uploads: it finds this session's folder
    page.set_input_files('[data-testid="upload"]', files=[{
        "name": name, "mimeType": "application/gzip", "buffer": (data_dir / "example_ct_sm.nii.gz").read_bytes()}])
    page.wait_for_selector(f'[data-testid="input-name"]:has-text("{name}")', timeout=120_000)
    sid = page.url.split("/s/")[1].split("/")[0]
    folder = next(Path(server["work"]).glob(f"*/sessions/*/uploads/*/{name}")).parents[2]
    assert sid not in str(folder)  # the folder is named apart from the session's address (command lines show it)
    page.context.close()
    deadline = time.monotonic() + 60  # --session-timeout 5 in this server
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not folder.exists()
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(f"{server['url']}s/{sid}/")
    assert gone.value.code == 404


def test_a_token_is_required_when_set(home, tmp_path):
    process, port = start_launcher(home, tmp_path / "work", "--token", "s3cret")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/")
        assert refused.value.code == 401 and "token" in refused.value.read().decode()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        page = opener.open(f"http://127.0.0.1:{port}/?token=s3cret", timeout=180)
        assert page.status == 200 and "/s/" in page.url  # the cookie carries the token to the session
        with pytest.raises(urllib.error.HTTPError) as other:
            urllib.request.urlopen(page.url)  # the session's address without the token
        assert other.value.code == 401
    finally:
        stop_launcher(process, tmp_path / "work")


def test_a_session_that_cannot_start_is_reported_at_once(home, tmp_path):
    """The data folder vanished after the server started: each new session fails; say so instead of waiting."""
    data = tmp_path / "data"
    data.mkdir()
    process, port = start_launcher(home, tmp_path / "work", "--data-root", str(data))
    try:
        data.rmdir()
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=120)
        assert failed.value.code == 503 and "could not start" in failed.value.read().decode()
        assert time.monotonic() - started < 60  # not the 180 s start timeout
    finally:
        output = stop_launcher(process, tmp_path / "work")
    assert "data" in output  # the session's own error reached the server's log


def test_a_non_local_host_gets_a_token_unless_told_loudly_otherwise():
    from totalseg_web import launcher

    parser = launcher.build_parser()
    local = parser.parse_args([])
    assert launcher.access_token(local) is None and "?token" not in launcher.banner(local, None, 8080)
    public = parser.parse_args(["--host", "0.0.0.0"])
    token = launcher.access_token(public)
    assert token and len(token) >= 20 and f"?token={token}" in launcher.banner(public, token, 8080)
    assert launcher.access_token(public) != token  # a new random one each start
    open_server = parser.parse_args(["--host", "10.0.0.5", "--no-token"])
    assert launcher.access_token(open_server) is None
    assert "WARNING" in launcher.banner(open_server, None, 8080) and "OPEN" in launcher.banner(open_server, None, 8080)
    assert launcher.is_loopback("::1") and launcher.is_loopback("localhost") and not launcher.is_loopback("0.0.0.0")
    assert launcher.is_loopback("127.0.0.2")  # all of 127.0.0.0/8 stays on this machine (README: the localhost rule)
    with pytest.raises(SystemExit):
        launcher.check_options(parser, parser.parse_args(["--token", "a", "--no-token"]))


def test_the_token_comes_from_the_environment_or_a_file_and_no_child_inherits_it(tmp_path, monkeypatch):
    from totalseg_web import launcher

    parser = launcher.build_parser()
    monkeypatch.setenv("TOTALSEG_WEB_TOKEN", "from-environment")
    assert launcher.access_token(parser.parse_args([])) == "from-environment"
    assert "TOTALSEG_WEB_TOKEN" not in os.environ  # sessions and engines are started without it
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    assert launcher.access_token(parser.parse_args(["--token-file", str(token_file)])) == "from-file"
    monkeypatch.setenv("TOTALSEG_WEB_TOKEN", "x")
    with pytest.raises(SystemExit):
        launcher.check_options(parser, parser.parse_args(["--host", "0.0.0.0", "--no-token"]))
