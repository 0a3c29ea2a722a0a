"""The official command lines of ``totalseg_download_weights -t`` and ``totalseg_combine_masks -ml/-t``.

Downloads run against the HTTP server on 127.0.0.1 of ``test_weights``, with dummy release zips of every
dataset; each official download name must install at least the dataset folders the official 2.18 command
installs (written out below), the ``*_fast`` names exactly those.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_weights import _route, release_zip
from test_weights import home as home  # noqa: F401  (autouse: a private TotalSegmentator home)
from test_weights import server as server  # noqa: F401
from totalseg_engine import imageio, tasks
from totalseg_engine.cli import masks as combine_masks_cli
from totalseg_engine.cli import weights as weights_cli
from totalseg_engine.weights import archive as weights_archive
from totalseg_engine.weights import licensing, paths
from weights_server import Server

OFFICIAL_DOWNLOADS: dict[str, tuple[int, ...]] = {
    "total": (291, 292, 293, 294, 295, 298), "total_fast": (297, 298),
    "total_v3": (831, 832, 833, 834, 835, 837), "total_v3_fast": (836, 837),
    "total_mr": (850, 851), "total_fast_mr": (852, 853), "lung_vessels": (117,), "lung_vessels_LEGACY": (258,),
    "cerebral_bleed": (150,), "hip_implant": (260,), "pleural_pericard_effusion": (315,), "body": (299,),
    "body_fast": (300,), "body_mr": (597,), "body_mr_fast": (598,), "vertebrae_mr": (756,),
    "head_glands_cavities": (775,), "headneck_bones_vessels": (776,), "head_muscles": (777,),
    "headneck_muscles": (778, 779), "liver_vessels": (8,), "lung_nodules": (913,), "kidney_cysts": (789,),
    "oculomotor_muscles": (351,), "breasts": (527,), "ventricle_parts": (552,), "liver_segments": (570,),
    "liver_segments_mr": (576,), "liver_lesions": (591,), "liver_lesions_mr": (589,),
    "craniofacial_structures": (115,), "abdominal_muscles": (952,), "teeth": (113,), "trunk_cavities": (343,),
    "brain_aneurysm": (615,), "heartchambers_highres": (301,), "appendicular_bones": (304,),
    "appendicular_bones_mr": (855,), "tissue_types": (481,), "tissue_types_mr": (925,), "tissue_4_types": (485,),
    "vertebrae_body": (305,), "vertebrae_pp": (803,), "vertebrae_pp_refined": (803, 305), "face": (303,),
    "face_mr": (856,), "brain_structures": (409,), "thigh_shoulder_muscles": (857,),
    "thigh_shoulder_muscles_mr": (857,), "coronary_arteries": (509,), "coronary_arteries_LEGACY": (507,),
    "aortic_sinuses": (920,), "renal_arteries": (710,), "aorta_annulus": (713,), "aortic_dissection": (716,),
    "pulmonary_artery_landmarks": (514,),
}
"""Official 2.18 ``totalseg_download_weights -t NAME`` -> the nnU-Net datasets it downloads (its
body_stats_* names, xgboost models of totalseg_get_body_stats, are left out: this tool has no such command)."""

FAST_NAMES = ("total_fast", "total_v3_fast", "total_fast_mr", "body_fast", "body_mr_fast")


def installed_ids() -> set[int]:
    root = paths.weights_dir()
    return {int(p.name[7:10]) for p in root.glob("Dataset*")} if root.exists() else set()


def is_licensed(dataset_id: int) -> bool:
    return bool(tasks.dataset_spec(dataset_id)["licensed"])


@pytest.fixture
def releases(tmp_path: Path, server: Server) -> Server:  # noqa: F811
    """The server with a dummy release zip of every dataset an official download name needs."""
    for dataset_id in {i for ids in OFFICIAL_DOWNLOADS.values() for i in ids} | {297, 852, 853, 300, 598, 836}:
        spec = weights_archive.known_spec(dataset_id)
        if spec is not None and spec.release:
            server.serve(_route(spec), release_zip(tmp_path, spec))
    return server


@pytest.mark.parametrize("name", [n for n in OFFICIAL_DOWNLOADS if not any(map(is_licensed, OFFICIAL_DOWNLOADS[n]))])
def test_official_name_downloads_what_the_official_does(releases: Server, name: str) -> None:
    assert weights_cli.download_main(["-t", name]) == 0
    if name in FAST_NAMES:
        assert installed_ids() == set(OFFICIAL_DOWNLOADS[name])
    else:  # a task name: every speed mode of the task as well
        assert installed_ids() >= set(OFFICIAL_DOWNLOADS[name])


def test_all_downloads_every_open_dataset_of_the_official(releases: Server, capsys: pytest.CaptureFixture) -> None:
    assert weights_cli.download_main(["-t", "all"]) == 0
    official = {i for ids in OFFICIAL_DOWNLOADS.values() for i in ids}
    assert installed_ids() == {i for i in official if not is_licensed(i)}
    assert "licensed models" in capsys.readouterr().err


def test_all_with_a_licence_key_includes_the_licensed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(licensing, "get_license_key", lambda: "aca_ABCDEFGHIJKLMN")
    ids = {spec.dataset_id for spec in weights_cli.download_specs("all")}
    assert ids == {i for ids in OFFICIAL_DOWNLOADS.values() for i in ids}


def test_names_are_checked_before_downloading(releases: Server, capsys: pytest.CaptureFixture) -> None:
    assert weights_cli.download_main(["-t", "total_fast", "-t", "body_stats_ct"]) == 1
    assert "totalseg_get_body_stats" in capsys.readouterr().err and installed_ids() == set()
    assert weights_cli.download_main(["-t", "total_fastt"]) == 1
    assert "Did you mean: total_fast" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# totalseg_combine_masks -ml / -t


def test_combine_masks_multilabel_and_nora_tag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[1:3, 1:3, 1:3], labels[3:5, 3:5, 3:5] = 10, 11  # lung_upper_lobe_left, lung_lower_lobe_left
    seg = tmp_path / "seg.nii.gz"
    imageio.write_multilabel_nifti(labels, nib.Nifti1Image(labels, np.eye(4)), tasks.get_task("total").classes, seg)
    out = tmp_path / "lung_left.nii.gz"
    assert combine_masks_cli.combine_main(["-i", str(seg), "-o", str(out), "-m", "lung_left", "-ml", "-t", "42"]) == 0
    combined = nib.load(out)
    assert imageio.read_label_map(combined) == {1: "lung_left"}
    assert int(np.asanyarray(combined.dataobj).sum()) == 16
    assert "nora" in capsys.readouterr().err
    assert combine_masks_cli.combine_main(["-i", str(seg), "-o", str(out), "--masks", "lung_left", "--multilabel"]) == 0
    assert combine_masks_cli.combine_main(["-i", str(seg), "-o", str(out), "-m", "lung_left"]) == 0
    assert imageio.read_label_map(nib.load(out)) == {}  # without -ml: a plain binary mask, as the official
    assert capsys.readouterr().err == ""
