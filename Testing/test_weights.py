"""Weights cache, downloads, imports and the licence key, against a real HTTP server on 127.0.0.1.

Zips are built in the release layout (``DatasetXXX_name/Trainer__Plans__config/...``) with small
dummy files; the engine never loads them, so only the layout matters.
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
from totalseg_engine import paths, tasks, weights, weights_cli
from totalseg_engine.errors import (
    DownloadError,
    LicenseError,
    TotalSegmentatorError,
    UnknownTaskError,
    WeightsMissingError,
)
from totalseg_engine.progress import ProgressEvent
from weights_server import Server as _Server
from weights_server import serving, zip_folder

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
    (result / "plans.json").write_text(json.dumps({"plans_name": spec.plans}))
    (result / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    return root / (name or spec.folder)


def release_zip(tmp_path: Path, spec: tasks.ModelSpec, marker: bytes = b"v1", size: int = 0,
                compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    root = tmp_path / f"build-{spec.dataset_id}-{marker.decode()}"
    make_dataset(root, spec, marker, size)
    return zip_folder(root, compression)


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
    monkeypatch.setattr(weights, "CHUNK_SIZE", 1024)
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
    monkeypatch.setattr(weights, "CHUNK_SIZE", 1024)
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
    assert weights.import_weights(archive) == [paths.weights_dir() / OPEN.folder]
    assert weights.is_installed(OPEN)
    assert cache_entries() == [OPEN.folder]


@pytest.mark.parametrize("layout", ["dataset", "parent", "copied_home"])
def test_import_folder(tmp_path: Path, layout: str) -> None:
    other = tasks.models_of_task("liver_vessels")[0]
    parent = tmp_path / "src" / ("nnunet/results" if layout == "copied_home" else "")
    made = [make_dataset(parent, OPEN), make_dataset(parent, other)]
    source = made[0] if layout == "dataset" else tmp_path / "src"
    installed = weights.import_weights(source)
    expected = [OPEN] if layout == "dataset" else [other, OPEN]  # found in name order
    assert installed == [weights.model_dir(spec).parent for spec in expected]
    assert all(weights.is_installed(spec) for spec in expected)
    assert all(folder.is_dir() for folder in made)  # the source is copied, not moved


def test_import_refuses_to_overwrite(tmp_path: Path) -> None:
    first, second = tmp_path / "first.zip", tmp_path / "second.zip"
    first.write_bytes(release_zip(tmp_path, OPEN, marker=b"v1"))
    second.write_bytes(release_zip(tmp_path, OPEN, marker=b"v2"))
    weights.import_weights(first)
    with pytest.raises(DownloadError, match="already exists"):
        weights.import_weights(second)
    assert installed_checkpoint(OPEN).startswith(b"v1")
    weights.import_weights(second, overwrite=True)
    assert installed_checkpoint(OPEN).startswith(b"v2")
    assert cache_entries() == [OPEN.folder]


def test_import_conflict_installs_nothing(tmp_path: Path) -> None:
    other = tasks.models_of_task("liver_vessels")[0]  # Dataset008 sorts before the existing Dataset117
    make_dataset(paths.weights_dir(), OPEN)
    make_dataset(tmp_path / "src", OPEN)
    make_dataset(tmp_path / "src", other)
    with pytest.raises(DownloadError, match="already exists"):
        weights.import_weights(tmp_path / "src")
    assert cache_entries() == [OPEN.folder]


def test_import_checks_every_dataset_before_installing(tmp_path: Path) -> None:
    other = tasks.models_of_task("liver_vessels")[0]
    make_dataset(tmp_path / "src", OPEN)
    broken = make_dataset(tmp_path / "src", other)
    (broken / other.result_subfolder / "fold_0" / "checkpoint_final.pth").unlink()
    with pytest.raises(DownloadError, match="incomplete"):
        weights.import_weights(tmp_path / "src")
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
        weights.import_weights(source)
    assert cache_entries() == []
    assert not (tmp_path / "escape.txt").exists()


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
    weights.set_license_key(LICENSE_KEY, validate=False)
    server.serve_json("/download_weights", {"status": "invalid_license", "message": "Unknown licence"}, status)
    with pytest.raises(LicenseError, match="refused the key.*Unknown licence"):
        weights.ensure_weights([LICENSED])
    assert cache_entries() == []


def test_accepted_licence_key_downloads(tmp_path: Path, server: _Server) -> None:
    weights.set_license_key(LICENSE_KEY, validate=False)
    server.serve("/download_weights", release_zip(tmp_path, LICENSED))
    weights.ensure_weights([LICENSED])
    assert weights.is_installed(LICENSED)
    [(method, path, body)] = server.requests
    assert (method, path) == ("POST", "/download_weights")
    assert json.loads(body) == {"license_number": LICENSE_KEY, "task": "heartchambers_highres",
                                "version": "2.18.0"}


def test_set_license_key_validates_and_keeps_other_settings(server: _Server) -> None:
    paths.config_file().parent.mkdir(parents=True)
    paths.config_file().write_text(json.dumps({"totalseg_id": "totalseg_abc", "prediction_counter": 3}))
    server.serve_json("/is_valid_license_number", {"status": "valid_license"})
    weights.set_license_key(LICENSE_KEY)
    assert _config() == {"totalseg_id": "totalseg_abc", "prediction_counter": 3, "license_number": LICENSE_KEY}
    assert weights.get_license_key() == LICENSE_KEY
    assert [json.loads(body) for _, _, body in server.requests] == [{"license_number": LICENSE_KEY}]
    weights.set_license_key(LICENSE_KEY)  # the stored key is not checked again
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [200, 401])
def test_set_license_key_refuses_an_invalid_key(server: _Server, status: int) -> None:
    weights.set_license_key("aca_OLDKEY00000000", validate=False)
    server.serve_json("/is_valid_license_number", {"status": "invalid_license", "message": "no such key"}, status)
    with pytest.raises(LicenseError, match="not valid.*no such key"):
        weights.set_license_key(LICENSE_KEY)
    assert weights.get_license_key() == "aca_OLDKEY00000000"


def test_set_license_key_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOTALSEG_LICENSE_CHECK_URL", f"http://127.0.0.1:{_refused_port()}/check")
    with pytest.raises(LicenseError, match="could not be checked.*--skip-validation"):
        weights.set_license_key(LICENSE_KEY)
    assert not paths.config_file().exists()
    weights.set_license_key(LICENSE_KEY, validate=False)  # creates config.json
    assert _config() == {"license_number": LICENSE_KEY}


def test_no_key_and_broken_config() -> None:
    assert weights.get_license_key() is None
    paths.config_file().parent.mkdir(parents=True)
    paths.config_file().write_text("{not json")
    with pytest.raises(TotalSegmentatorError, match="config.json"):
        weights.get_license_key()


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
    assert "already exists" in capsys.readouterr().err
    assert weights_cli.import_main(["-i", str(archive), "--overwrite"]) == 0


def test_license_command(server: _Server, capsys: pytest.CaptureFixture) -> None:
    assert weights_cli.license_main(["-l", LICENSE_KEY, "--skip-validation"]) == 0
    assert weights.get_license_key() == LICENSE_KEY and server.requests == []
    server.serve_json("/is_valid_license_number", {"status": "invalid_license"}, 403)
    assert weights_cli.license_main(["-l", "aca_OTHER000000000"]) == 1
    assert capsys.readouterr().err.startswith("ERROR: The licence key aca_OTHER000000000 is not valid")
    assert weights.get_license_key() == LICENSE_KEY
