"""Weights cache, downloads, imports and the licence key, against a real HTTP server on 127.0.0.1.

Zips are built in the release layout (``DatasetXXX_name/Trainer__Plans__config/...`` with the files the release
holds beside the model, directory entries as ``zip -r`` writes them; Mac-made ones with their clutter) from small
dummy files, since these tests only move them; the last tests download and import real model folders and run
them.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Optional

import pytest
from model_factory import TINY, write_task_models
from model_factory import release_zip as zip_folder
from totalseg_engine import tasks
from totalseg_engine.cli import weights as weights_cli
from totalseg_engine.errors import (
    DownloadError,
    LicenseError,
    TotalSegmentatorError,
    UnknownTaskError,
    WeightsMissingError,
)
from totalseg_engine.progress import ProgressEvent
from totalseg_engine.weights import archive as weights_archive
from totalseg_engine.weights import cache as weights
from totalseg_engine.weights import licensing, paths
from totalseg_engine.weights import transfer as weights_transfer
from weights_server import Server as _Server
from weights_server import serving

OPEN = tasks.models_of_task("lung_vessels")[0]  # Dataset117, one open model
LICENSED = tasks.models_of_task("heartchambers_highres")[0]  # Dataset301, licence required
LICENSE_KEY = "aca_ABCDEFGHIJKLMN"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private TotalSegmentator home; no proxy and no real server is ever used."""
    for name in ("TOTALSEG_WEIGHTS_PATH", "TOTALSEG_WEIGHTS_URL", "TOTALSEG_LICENSE_URL",
                 "TOTALSEG_LICENSE_CHECK_URL", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                 "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", "http://127.0.0.1:9/{version}/{folder}.zip")  # discard port
    return tmp_path / "home"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    with serving(monkeypatch) as httpd:
        yield httpd


def _route(spec: tasks.ModelSpec) -> str:
    return f"/{spec.release}/{spec.folder}.zip"


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# Weights in the release layout


def make_dataset(root: Path, spec: tasks.ModelSpec, marker: bytes = b"v1", size: int = 0,
                 name: Optional[str] = None) -> Path:
    """A dataset folder as the release zips hold it; the checkpoint holds ``marker`` (+ ``size`` bytes)."""
    result = root / (name or spec.folder) / spec.result_subfolder
    for fold in spec.folds or (0,):
        (result / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (result / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(marker + os.urandom(size))
        (result / f"fold_{fold}" / "debug.json").write_text("{}")
        (result / f"fold_{fold}" / "progress.png").write_bytes(b"\x89PNG")
    (result / "plans.json").write_text(json.dumps({"plans_name": spec.plans}))
    (result / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    (result / "dataset_fingerprint.json").write_text("{}")
    return root / (name or spec.folder)


def release_zip(tmp_path: Path, spec: tasks.ModelSpec, marker: bytes = b"v1", size: int = 0,
                compression: int = zipfile.ZIP_DEFLATED, mac: bool = False) -> bytes:
    root = tmp_path / f"build-{spec.dataset_id}-{marker.decode()}"
    make_dataset(root, spec, marker, size)
    return zip_folder(root, mac, compression)


def installed_checkpoint(spec: tasks.ModelSpec) -> bytes:
    return (weights.model_dir(spec) / "fold_0" / "checkpoint_final.pth").read_bytes()


def cache_entries() -> list[str]:
    """Everything in the weights folder (temporary files included)."""
    root = paths.weights_dir()
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ----------------------------------------------------------------------------------------------
# Layout and reuse of an existing cache


def test_model_dir_is_the_official_layout(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = home / "nnunet" / "results" / OPEN.folder / "nnUNetTrainerSkeletonRecall__nnUNetPlans__3d_fullres"
    assert weights.model_dir(OPEN) == expected
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "elsewhere"))
    assert weights.model_dir(OPEN) == tmp_path / "elsewhere" / OPEN.folder / OPEN.result_subfolder


@pytest.mark.parametrize("remove", ["plans.json", "dataset.json", "fold_0/checkpoint_final.pth"])
def test_a_missing_file_means_not_installed(remove: str) -> None:
    make_dataset(paths.weights_dir(), OPEN)
    assert weights.is_installed(OPEN)
    (weights.model_dir(OPEN) / remove).unlink()
    assert not weights.is_installed(OPEN)
    assert weights.missing_models([OPEN, OPEN]) == [OPEN]


def test_required_folds() -> None:
    five = replace(OPEN, folds=(0, 1, 2, 3, 4))
    make_dataset(paths.weights_dir(), replace(five, folds=(0, 1, 2, 4)))
    assert not weights.is_installed(five)
    assert weights.is_installed(replace(OPEN, folds=None))  # any fold with a checkpoint
    (weights.model_dir(OPEN) / "fold_3").mkdir()  # a fold folder without checkpoint is not enough
    assert not weights.is_installed(five)


def test_dataset_without_registry_folder_is_found_by_id() -> None:
    spec = tasks.models_of_task("test")[0]
    assert spec.folder is None
    assert not weights.is_installed(spec)
    make_dataset(paths.weights_dir(), spec, name=f"Dataset{spec.dataset_id}_my_model")
    assert weights.is_installed(spec)
    assert weights.model_dir(spec).parent.name == f"Dataset{spec.dataset_id}_my_model"


def test_existing_totalsegmentator_cache_is_reused_without_network(home: Path, server: _Server) -> None:
    make_dataset(home / "nnunet" / "results", OPEN)
    weights.ensure_weights([OPEN])
    assert weights.download_task("lung_vessels") == [weights.model_dir(OPEN)]
    assert server.requests == []


# ----------------------------------------------------------------------------------------------
# Downloads


def test_download_installs_with_progress(tmp_path: Path, server: _Server,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_transfer, "CHUNK_SIZE", 1024)
    server.serve(_route(OPEN), release_zip(tmp_path, OPEN, size=20_000, compression=zipfile.ZIP_STORED))
    events: list[ProgressEvent] = []
    weights.ensure_weights([OPEN], progress=events.append)
    fractions = [e.fraction for e in events if e.stage == "download" and e.fraction is not None]
    assert len(fractions) > 10 and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    assert weights.is_installed(OPEN) and installed_checkpoint(OPEN).startswith(b"v1")
    assert cache_entries() == [OPEN.folder]  # no temporary file or folder left
    assert server.requests == [("GET", _route(OPEN), b"")]


def test_download_replaces_an_incomplete_folder(tmp_path: Path, server: _Server) -> None:
    make_dataset(paths.weights_dir(), OPEN, marker=b"old")
    (weights.model_dir(OPEN) / "plans.json").unlink()
    server.serve(_route(OPEN), release_zip(tmp_path, OPEN, marker=b"new"))
    weights.ensure_weights([OPEN])
    assert installed_checkpoint(OPEN).startswith(b"new")
    assert cache_entries() == [OPEN.folder]


def test_failed_move_restores_the_previous_folder(tmp_path: Path, server: _Server,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    make_dataset(paths.weights_dir(), OPEN, marker=b"old")
    (weights.model_dir(OPEN) / "plans.json").unlink()
    server.serve(_route(OPEN), release_zip(tmp_path, OPEN, marker=b"new"))
    rename = os.rename

    def failing_rename(src, dst) -> None:
        if Path(src).parent.name == "extracted":  # moving the new folder into place
            raise OSError("disk on fire")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(WeightsMissingError, match="disk on fire"):
        weights.ensure_weights([OPEN])
    assert cache_entries() == [OPEN.folder]
    assert installed_checkpoint(OPEN).startswith(b"old")


def test_bad_mirror_pattern(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", "http://mirror/{release}.zip")
    with pytest.raises(DownloadError, match="TOTALSEG_WEIGHTS_URL must be a URL pattern"):
        weights.download_dataset(OPEN.dataset_id)


def test_download_task_fetches_every_mode(tmp_path: Path, server: _Server) -> None:
    specs = tasks.models_of_task("body")
    assert len(specs) == 2
    for spec in specs:
        server.serve(_route(spec), release_zip(tmp_path, spec))
    assert weights.download_task("body") == [weights.model_dir(spec) for spec in specs]
    assert all(weights.is_installed(spec) for spec in specs)


def test_interrupted_transfer_leaves_nothing(tmp_path: Path, server: _Server) -> None:
    body = release_zip(tmp_path, OPEN, size=50_000)
    server.serve(_route(OPEN), body, announce=len(body) + 10_000)
    with pytest.raises(DownloadError, match="broke off"):
        weights.download_dataset(OPEN.dataset_id)
    with pytest.raises(WeightsMissingError):
        weights.ensure_weights([OPEN])
    assert not weights.is_installed(OPEN)
    assert cache_entries() == []


def test_ctrl_c_during_download_leaves_nothing(tmp_path: Path, server: _Server,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights_transfer, "CHUNK_SIZE", 1024)
    server.serve(_route(OPEN), release_zip(tmp_path, OPEN, size=20_000, compression=zipfile.ZIP_STORED))

    def interrupt(event: ProgressEvent) -> None:
        if event.fraction and event.fraction > 0.3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        weights.ensure_weights([OPEN], progress=interrupt)
    assert cache_entries() == []


def _flip_checkpoint_byte(data: bytes) -> bytes:
    at = data.index(b"CORRUPTME") + 4
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize(("damage", "problem"), [(_flip_checkpoint_byte, "is corrupt"),
                                                 (lambda data: data[: len(data) // 2], "not a valid zip"),
                                                 (lambda data: b"<html>not a zip</html>", "not a valid zip")],
                         ids=["crc", "truncated", "html"])
def test_corrupt_zip_installs_nothing(tmp_path: Path, server: _Server, damage, problem: str) -> None:
    body = release_zip(tmp_path, OPEN, marker=b"CORRUPTME", compression=zipfile.ZIP_STORED)
    server.serve(_route(OPEN), damage(body))
    with pytest.raises(DownloadError, match=problem):
        weights.download_dataset(OPEN.dataset_id)
    assert cache_entries() == []


def _unsafe_zip(tmp_path: Path, member: str, link: bool = False) -> bytes:
    """A complete release zip plus one member that must never be written."""
    buffer = io.BytesIO(release_zip(tmp_path, OPEN))
    with zipfile.ZipFile(buffer, "a") as zf:
        info = zipfile.ZipInfo(member)
        if link:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, str(tmp_path / "outside.txt") if link else "escaped")
    return buffer.getvalue()


UNSAFE = [("../escape.txt", False), (f"{OPEN.folder}/../../escape.txt", False), ("/tmp/escape-abs.txt", False),
          ("C:/escape.txt", False), (f"{OPEN.folder}/link", True)]


@pytest.mark.parametrize(("member", "link"), UNSAFE)
def test_unsafe_zip_member_is_rejected(tmp_path: Path, server: _Server, member: str, link: bool) -> None:
    server.serve(_route(OPEN), _unsafe_zip(tmp_path, member, link))
    with pytest.raises(DownloadError, match="unsafe path|symbolic link"):
        weights.download_dataset(OPEN.dataset_id)
    assert cache_entries() == []
    assert not list(tmp_path.rglob("escape*.txt")) and not Path("/tmp/escape-abs.txt").exists()


def test_offline_failure_explains_both_fixes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOTALSEG_WEIGHTS_URL", f"http://127.0.0.1:{_refused_port()}/{{version}}/{{folder}}.zip")
    with pytest.raises(WeightsMissingError) as caught:
        weights.ensure_weights([OPEN])
    message = str(caught.value)
    assert str(weights.model_dir(OPEN)) in message and "dataset 117" in message
    assert "connect this computer to the internet" in message
    assert "totalseg_download_weights -t lung_vessels" in message and "totalseg_import_weights -i" in message
    assert "\n" not in message and "Traceback" not in message
    assert cache_entries() == []


def test_offline_mode_never_touches_the_network(server: _Server) -> None:
    with pytest.raises(WeightsMissingError, match="switched off") as caught:
        weights.ensure_weights([OPEN], download=False, task="my_task")
    assert "totalseg_download_weights -t my_task" in str(caught.value)
    assert server.requests == []


def test_http_error_is_reported(server: _Server) -> None:
    with pytest.raises(WeightsMissingError, match="HTTP 404"):
        weights.ensure_weights([OPEN])
    assert cache_entries() == []


def test_archive_without_the_dataset_is_rejected(tmp_path: Path, server: _Server) -> None:
    other = tasks.models_of_task("liver_vessels")[0]
    server.serve(_route(OPEN), release_zip(tmp_path, other))
    with pytest.raises(DownloadError, match=f"does not contain the folder {OPEN.folder}"):
        weights.download_dataset(OPEN.dataset_id)
    assert cache_entries() == []


def test_unknown_dataset_id() -> None:
    with pytest.raises(UnknownTaskError):
        weights.download_dataset(99999)


# ----------------------------------------------------------------------------------------------
# Import


def test_import_zip(tmp_path: Path) -> None:
    archive = tmp_path / "weights.zip"
    archive.write_bytes(release_zip(tmp_path, OPEN))
    report = weights_archive.import_weights(archive)
    assert report.installed == [paths.weights_dir() / OPEN.folder] and report.skipped == []
    assert weights.is_installed(OPEN)
    assert cache_entries() == [OPEN.folder]


@pytest.mark.parametrize("layout", ["dataset", "parent", "copied_home"])
def test_import_folder(tmp_path: Path, layout: str) -> None:
    other = tasks.models_of_task("liver_vessels")[0]
    parent = tmp_path / "src" / ("nnunet/results" if layout == "copied_home" else "")
    made = [make_dataset(parent, OPEN), make_dataset(parent, other)]
    if layout == "copied_home":
        (tmp_path / "src" / "config.json").write_text("{}")  # the official tool's settings, not weights
    source = made[0] if layout == "dataset" else tmp_path / "src"
    report = weights_archive.import_weights(source)
    expected = [OPEN] if layout == "dataset" else [other, OPEN]  # found in name order
    assert report.installed == [weights.model_dir(spec).parent for spec in expected]
    assert report.skipped == []
    assert all(weights.is_installed(spec) for spec in expected)
    assert all(folder.is_dir() for folder in made)  # the source is copied, not moved


def test_import_refuses_to_overwrite(tmp_path: Path) -> None:
    first, second = tmp_path / "first.zip", tmp_path / "second.zip"
    first.write_bytes(release_zip(tmp_path, OPEN, marker=b"v1"))
    second.write_bytes(release_zip(tmp_path, OPEN, marker=b"v2"))
    weights_archive.import_weights(first)
    with pytest.raises(DownloadError, match="already installed.*--overwrite"):
        weights_archive.import_weights(second)
    assert installed_checkpoint(OPEN).startswith(b"v1")
    weights_archive.import_weights(second, overwrite=True)
    assert installed_checkpoint(OPEN).startswith(b"v2")
    assert cache_entries() == [OPEN.folder]


def test_import_of_a_copied_cache_installs_what_it_can_and_names_the_rest(tmp_path: Path) -> None:
    """A ~/.totalsegmentator from another machine, with everything an old cache collects."""
    other = tasks.models_of_task("liver_vessels")[0]
    total_3mm = tasks.get_task("total").mode("fast").models[0]
    make_dataset(paths.weights_dir(), OPEN, marker=b"mine")  # already here: kept as it is
    results = tmp_path / "copied" / ".totalsegmentator" / "nnunet" / "results"
    make_dataset(results, OPEN, marker=b"theirs")
    make_dataset(results, other)
    make_dataset(results, total_3mm, name=f"{total_3mm.folder}_v204")  # removed by the official tool since 2.0.5
    make_dataset(results, total_3mm, name="Dataset302_vertebrae_body_1559subj")  # no task of 2.18 uses it
    incomplete = make_dataset(results, tasks.models_of_task("body")[0])
    next(incomplete.rglob("checkpoint_final.pth")).unlink()
    (results / "nnUNet" / "3d_fullres" / "Task251_TotalSegmentator_part1_organs_1139subj").mkdir(parents=True)
    (results / ".totalseg-tmp-abc").mkdir()  # an interrupted import of theirs: not a folder to report
    report = weights_archive.import_weights(tmp_path / "copied" / ".totalsegmentator")
    assert report.installed == [paths.weights_dir() / other.folder]
    reasons = {Path(item.folder).name: item.reason for item in report.skipped}
    assert reasons[OPEN.folder] == "already installed (--overwrite replaces it)"
    stale = reasons[f"{total_3mm.folder}_v204"]
    assert "older release" in stale and f"({total_3mm.folder})" in stale
    assert reasons["Dataset302_vertebrae_body_1559subj"] == ("dataset 302 is not used by any task of "
                                                             "TotalSegmentator 2.18.0")
    assert reasons[incomplete.name].startswith("incomplete") and "checkpoint_final.pth" in reasons[incomplete.name]
    assert reasons["nnUNet"] == "holds no DatasetXXX_* model folder"
    assert len(report.skipped) == 5
    assert installed_checkpoint(OPEN).startswith(b"mine")
    assert cache_entries() == sorted([OPEN.folder, other.folder])


def test_import_with_nothing_usable_installs_nothing_and_says_why(tmp_path: Path) -> None:
    other = tasks.models_of_task("liver_vessels")[0]
    broken = make_dataset(tmp_path / "src", other)
    (broken / other.result_subfolder / "fold_0" / "checkpoint_final.pth").unlink()
    make_dataset(tmp_path / "src", OPEN, name=f"{OPEN.folder}_v204")
    with pytest.raises(DownloadError, match="nothing was installed") as caught:
        weights_archive.import_weights(tmp_path / "src")
    assert f"{other.folder}: incomplete" in str(caught.value) and f"{OPEN.folder}_v204: not the folder" in str(
        caught.value)
    assert cache_entries() == []


@pytest.mark.parametrize("content", ["wrong_name", "no_dataset", "not_a_zip", "unsafe", "absent"])
def test_import_rejects_bad_sources(tmp_path: Path, content: str) -> None:
    source = tmp_path / "source.zip"
    if content == "wrong_name":
        source = make_dataset(tmp_path / "src", OPEN, name=f"Dataset{OPEN.dataset_id}_renamed")
    elif content == "no_dataset":
        source = tmp_path / "src"
        (source / "some_folder").mkdir(parents=True)
    elif content == "not_a_zip":
        source.write_text("hello")
    elif content == "unsafe":
        source.write_bytes(_unsafe_zip(tmp_path, "../escape.txt"))
    with pytest.raises(DownloadError):
        weights_archive.import_weights(source)
    assert cache_entries() == []
    assert not (tmp_path / "escape.txt").exists()


def test_zip_made_on_a_mac_downloads_and_imports_without_its_clutter(tmp_path: Path, server: _Server) -> None:
    body = release_zip(tmp_path, OPEN, mac=True)
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert any(n.startswith("__MACOSX/") for n in names) and any(n.endswith("/.DS_Store") for n in names)
    assert f"{OPEN.folder}/" in names  # directory entries, as zip -r writes them
    server.serve(_route(OPEN), body)
    weights.download_dataset(OPEN.dataset_id)
    archive = tmp_path / "mac.zip"
    archive.write_bytes(body)
    report = weights_archive.import_weights(archive, overwrite=True)
    assert report.installed == [paths.weights_dir() / OPEN.folder] and report.skipped == []
    assert cache_entries() == [OPEN.folder]
    left = [p.name for p in paths.weights_dir().rglob("*") if p.name.startswith(("._", ".DS_Store", "__MACOSX"))]
    assert left == []
    assert weights.is_installed(OPEN)


# ----------------------------------------------------------------------------------------------
# Licence


def _config() -> dict:
    return json.loads(paths.config_file().read_text())


def test_licensed_model_without_key_explains_how_to_get_one(server: _Server) -> None:
    with pytest.raises(LicenseError) as caught:
        weights.ensure_weights([LICENSED])
    message = str(caught.value)
    assert "https://backend.totalsegmentator.com/license-academic/" in message
    assert "totalseg_set_license -l KEY" in message and "--license_number" in message
    assert "heartchambers_highres" in message
    assert server.requests == []


@pytest.mark.parametrize("status", [403, 200])
def test_rejected_licence_key(server: _Server, status: int) -> None:
    licensing.set_license_key(LICENSE_KEY, validate=False)
    server.serve_json("/download_weights", {"status": "invalid_license", "message": "Unknown licence"}, status)
    with pytest.raises(LicenseError, match="refused the key.*Unknown licence"):
        weights.ensure_weights([LICENSED])
    assert cache_entries() == []


def test_accepted_licence_key_downloads(tmp_path: Path, server: _Server) -> None:
    licensing.set_license_key(LICENSE_KEY, validate=False)
    server.serve("/download_weights", release_zip(tmp_path, LICENSED))
    weights.ensure_weights([LICENSED])
    assert weights.is_installed(LICENSED)
    [(method, path, body)] = server.requests
    assert (method, path) == ("POST", "/download_weights")
    assert json.loads(body) == {"license_number": LICENSE_KEY, "task": "heartchambers_highres",
                                "version": "2.18.0"}


def test_licensed_download_sends_the_official_clients_task_name(tmp_path: Path, server: _Server) -> None:
    """Dataset 857 serves two tasks; the official client inverts its table, so the last name (MR) is sent."""
    spec = tasks.models_of_task("thigh_shoulder_muscles_mr")[0]
    assert spec.dataset_id == 857 and spec.licensed
    licensing.set_license_key(LICENSE_KEY, validate=False)
    server.serve("/download_weights", release_zip(tmp_path, spec))
    weights.ensure_weights([spec])
    assert json.loads(server.requests[0][2])["task"] == "thigh_shoulder_muscles_mr"


def test_licensed_download_waits_for_the_server_longer_than_a_release_download(
        tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The licence server answers once it has the zip ready: 300 s, as the official client waits."""
    assert weights_transfer.LICENSED_TIMEOUT_S == 300.0 and weights_transfer.TIMEOUT_S == 60.0
    monkeypatch.setattr(weights_transfer, "TIMEOUT_S", 0.2)  # the same ratio, in test time
    monkeypatch.setattr(weights_transfer, "LICENSED_TIMEOUT_S", 3.0)
    licensing.set_license_key(LICENSE_KEY, validate=False)
    server.serve("/download_weights", release_zip(tmp_path, LICENSED), delay=0.6)
    server.serve(_route(OPEN), release_zip(tmp_path, OPEN), delay=0.6)
    with pytest.raises(WeightsMissingError, match="timed out"):
        weights.ensure_weights([OPEN])
    weights.ensure_weights([LICENSED])
    assert weights.is_installed(LICENSED) and not weights.is_installed(OPEN)


def test_set_license_key_validates_and_keeps_other_settings(server: _Server) -> None:
    paths.config_file().parent.mkdir(parents=True)
    paths.config_file().write_text(json.dumps({"totalseg_id": "totalseg_abc", "prediction_counter": 3}))
    server.serve_json("/is_valid_license_number", {"status": "valid_license"})
    licensing.set_license_key(LICENSE_KEY)
    assert _config() == {"totalseg_id": "totalseg_abc", "prediction_counter": 3, "license_number": LICENSE_KEY}
    assert licensing.get_license_key() == LICENSE_KEY
    assert [json.loads(body) for _, _, body in server.requests] == [{"license_number": LICENSE_KEY}]
    licensing.set_license_key(LICENSE_KEY)  # the stored key is not checked again
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [200, 401])
def test_set_license_key_refuses_an_invalid_key(server: _Server, status: int) -> None:
    licensing.set_license_key("aca_OLDKEY00000000", validate=False)
    server.serve_json("/is_valid_license_number", {"status": "invalid_license", "message": "no such key"}, status)
    with pytest.raises(LicenseError, match="not valid.*no such key"):
        licensing.set_license_key(LICENSE_KEY)
    assert licensing.get_license_key() == "aca_OLDKEY00000000"


def test_set_license_key_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOTALSEG_LICENSE_CHECK_URL", f"http://127.0.0.1:{_refused_port()}/check")
    with pytest.raises(LicenseError, match="could not be checked.*--skip-validation"):
        licensing.set_license_key(LICENSE_KEY)
    assert not paths.config_file().exists()
    licensing.set_license_key(LICENSE_KEY, validate=False)  # creates config.json
    assert _config() == {"license_number": LICENSE_KEY}


def test_no_key_and_broken_config() -> None:
    assert licensing.get_license_key() is None
    paths.config_file().parent.mkdir(parents=True)
    paths.config_file().write_text("{not json")
    with pytest.raises(TotalSegmentatorError, match="config.json"):
        licensing.get_license_key()


# ----------------------------------------------------------------------------------------------
# Console commands


def test_download_command(tmp_path: Path, server: _Server, capsys: pytest.CaptureFixture) -> None:
    server.serve(_route(OPEN), release_zip(tmp_path, OPEN))
    assert weights_cli.download_main(["-t", "lung_vessels"]) == 0
    assert weights.is_installed(OPEN)
    assert str(weights.model_dir(OPEN)) in capsys.readouterr().out


def test_download_command_errors_are_one_message(server: _Server, capsys: pytest.CaptureFixture) -> None:
    assert weights_cli.download_main(["-t", "lung_vessels", "-t", "no_such_task"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: Unknown task 'no_such_task'") and "Traceback" not in err
    assert server.requests == []  # names are checked before anything is downloaded
    assert weights_cli.download_main(["-t", "lung_vessels"]) == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_import_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    archive = tmp_path / "weights.zip"
    archive.write_bytes(release_zip(tmp_path, OPEN))
    assert weights_cli.import_main(["-i", str(archive)]) == 0
    assert weights.is_installed(OPEN)
    assert weights_cli.import_main(["-i", str(archive)]) == 1
    assert "already installed (--overwrite replaces it)" in capsys.readouterr().err
    assert weights_cli.import_main(["-i", str(archive), "--overwrite"]) == 0


def test_import_command_names_what_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_dataset(tmp_path / "src", OPEN)
    make_dataset(tmp_path / "src", OPEN, name=f"{OPEN.folder}_v204")
    assert weights_cli.import_main(["-i", str(tmp_path / "src")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"Installed {paths.weights_dir() / OPEN.folder}"
    assert err.startswith(f"Skipped {tmp_path / 'src' / (OPEN.folder + '_v204')}: not the folder TotalSegmentator")


def test_license_command(server: _Server, capsys: pytest.CaptureFixture) -> None:
    assert weights_cli.license_main(["-l", LICENSE_KEY, "--skip-validation"]) == 0
    assert licensing.get_license_key() == LICENSE_KEY and server.requests == []
    server.serve_json("/is_valid_license_number", {"status": "invalid_license"}, 403)
    assert weights_cli.license_main(["-l", "aca_OTHER000000000"]) == 1
    assert capsys.readouterr().err.startswith("ERROR: The licence key aca_OTHER000000000 is not valid")
    assert licensing.get_license_key() == LICENSE_KEY


# ----------------------------------------------------------------------------------------------
# Real model folders, as the release ships them


def test_release_zip_made_on_a_mac_downloads_and_segments(tmp_path: Path, server: _Server, data_dir: Path) -> None:
    """First use with a real model in a Mac-remade release zip: old-format plans, a trainer's full checkpoint."""
    from totalseg_engine import api

    build = tmp_path / "build"
    [model] = write_task_models(build, "total", "fast", TINY, seed=3)
    plans = json.loads((model / "plans.json").read_text())
    assert "architecture" not in plans["configurations"]["3d_fullres"]  # nnU-Net's format before 2.3
    spec = tasks.get_task("total").mode("fast").models[0]
    server.serve(_route(spec), zip_folder(build, mac=True))
    seg = api.totalsegmentator(data_dir / "example_ct_sm.nii.gz", tmp_path / "seg.nii.gz", ml=True, fast=True,
                               device="cpu")
    assert cache_entries() == [spec.folder]
    assert len(set(seg.get_fdata().ravel().tolist())) > 5
