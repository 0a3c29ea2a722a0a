"""Which models a run chains together, and what each of them is handed.

Stand-in runners record the dataset id, input shape, spacing and tile step of every call and
answer with label maps the test controls (a box of a class, a class everywhere). Images are
RAS-aligned at the spacing of the first model that sees them, so crop boxes can be read off
directly; where a model resamples, the expected shapes follow from the crop box.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from stand_ins import intensity_factory, label_by_intensity
from totalseg_engine import geometry
from totalseg_engine.core import pipeline
from totalseg_engine.errors import CancelledError, InvalidOptionError
from totalseg_engine.request import SegmentationRequest
from totalseg_engine.tasks import get_task

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
Answer = Callable[[np.ndarray], np.ndarray]

TOTAL = get_task("total")


# ---------------------------------------------------------------- stand-ins


@dataclass(frozen=True)
class Call:
    dataset_id: int
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    step: float


class StandIns:
    """A runner factory whose runners record every call and answer per dataset id (zeros by default)."""

    def __init__(self, answers: Optional[dict[int, Answer]] = None, tiles: int = 2) -> None:
        self.answers = answers or {}
        self.tiles = tiles
        self.calls: list[Call] = []
        self.loaded: list[int] = []

    def __call__(self, spec, step):
        self.loaded.append(spec.dataset_id)
        return _Runner(self, spec.dataset_id, step)

    @property
    def ids(self) -> list[int]:
        return [call.dataset_id for call in self.calls]

    def call_of(self, dataset_id: int) -> Call:
        (call,) = [c for c in self.calls if c.dataset_id == dataset_id]
        return call


class _Runner:
    def __init__(self, owner: StandIns, dataset_id: int, step: float) -> None:
        self.owner, self.dataset_id, self.step = owner, dataset_id, step

    def predict(self, channels: Sequence[np.ndarray], spacing_xyz: Sequence[float],
                on_tile: Optional[Callable[[int, int], None]] = None) -> np.ndarray:
        data = np.asarray(channels[0])
        self.owner.calls.append(Call(self.dataset_id, data.shape, tuple(float(s) for s in spacing_xyz), self.step))
        for tile in range(1, self.owner.tiles + 1):
            if on_tile is not None:
                on_tile(tile, self.owner.tiles)
        answer = self.owner.answers.get(self.dataset_id)
        if answer is None:
            return np.zeros(data.shape, dtype=np.uint8)
        out = np.asarray(answer(data), dtype=np.uint8)
        assert out.shape == data.shape
        return out


def everywhere(label: int) -> Answer:
    return lambda data: np.full(data.shape, label, dtype=np.uint8)


def in_boxes(*boxes: tuple[int, Box]) -> Answer:
    """``label`` inside each box of the model's own input grid (later boxes win)."""
    def answer(data: np.ndarray) -> np.ndarray:
        out = np.zeros(data.shape, dtype=np.uint8)
        for label, box in boxes:
            out[slices(box)] = label
        return out
    return answer


def slices(box: Box) -> tuple[slice, ...]:
    return tuple(slice(lo, hi) for lo, hi in box)


def cube(lo: int, hi: int) -> Box:
    return ((lo, hi),) * 3  # type: ignore[return-value]


def filled(shape, box: Box, label: int = 1) -> np.ndarray:
    out = np.zeros(shape, dtype=np.uint8)
    out[slices(box)] = label
    return out


def part_label(task_name: str, dataset_id: int, class_name: str) -> int:
    """A part model's own label id of a class (what the real part model would output)."""
    (spec,) = [m for m in get_task(task_name).modes["normal"].models if m.dataset_id == dataset_id]
    return next(label for label, name in spec.classes.items() if name == class_name)


def image(shape, spacing) -> nib.Nifti1Image:
    """RAS-aligned image with a non-constant ramp (intensities never matter to box stand-ins)."""
    data = (np.indices(shape).sum(axis=0) * 10).astype(np.int16)
    return nib.Nifti1Image(data, np.diag([*spacing, 1.0]))


def segment(img, models, progress=None, should_cancel=None, **options) -> pipeline.Result:
    kwargs = {}
    if progress is not None:
        kwargs["progress"] = progress
    if should_cancel is not None:
        kwargs["should_cancel"] = should_cancel
    return pipeline.segment(img, SegmentationRequest(device="cpu", **options), runner_factory=models, **kwargs)


# ---------------------------------------------------------------- (a) roi_subset


@pytest.mark.parametrize(("speed", "main_id", "main_spacing"), [("normal", 291, 1.5), ("fast", 297, 3.0)])
def test_roi_subset_crops_with_6mm_model_and_20mm_margin(speed, main_id, main_spacing):
    liver = TOTAL.label_of("liver")
    main_label = part_label("total", 291, "liver") if main_id == 291 else liver
    models = StandIns({298: in_boxes((liver, cube(5, 7))), main_id: everywhere(main_label)})
    result = segment(image((12, 12, 12), (6, 6, 6)), models, task="total", speed=speed, roi_subset=["liver"])
    assert models.ids == [298, main_id]  # with a ROI only the organ part of the 5 runs
    rough = models.call_of(298)
    assert rough.shape == (12, 12, 12) and rough.spacing == (6.0, 6.0, 6.0) and rough.step == 0.8
    box = cube(2, 10)  # liver box 5..7 grown by int(20 / 6) = 3 voxels
    main = models.call_of(main_id)
    assert main.shape == (int(8 * 6 / main_spacing),) * 3  # only the crop, at the model's spacing
    assert main.spacing == (main_spacing,) * 3
    np.testing.assert_array_equal(result.data, filled((12, 12, 12), box, liver))
    assert result.label_map == {liver: "liver"}


def test_roi_subset_keeps_only_requested_classes():
    liver, spleen = TOTAL.label_of("liver"), TOTAL.label_of("spleen")

    def organs(data):  # spleen everywhere, liver in the low-x half of the 1.5 mm crop
        out = np.full(data.shape, part_label("total", 291, "spleen"), dtype=np.uint8)
        out[: data.shape[0] // 2] = part_label("total", 291, "liver")
        return out

    models = StandIns({298: in_boxes((spleen, cube(2, 10)), (liver, cube(5, 7))), 291: organs})
    result = segment(image((12, 12, 12), (6, 6, 6)), models, task="total", roi_subset=["liver"])
    assert models.call_of(291).shape == (32, 32, 32)  # the crop follows the ROI classes (liver), not spleen
    assert set(np.unique(result.data)) == {0, liver}
    assert result.data[2:6, 2:10, 2:10].all() and not result.data[6:].any()


def test_robust_crop_uses_3mm_model_and_truncates_the_margin():
    liver = TOTAL.label_of("liver")
    models = StandIns({297: in_boxes((liver, cube(8, 11))), 291: everywhere(part_label("total", 291, "liver"))})
    result = segment(image((20, 20, 20), (3, 3, 3)), models, task="total", roi_subset=["liver"], robust_crop=True)
    assert models.ids == [297, 291]
    assert models.call_of(297).spacing == (3.0, 3.0, 3.0)
    box = cube(2, 17)  # 8..11 grown by int(20 / 3) = 6 voxels (rounding would give 7)
    assert models.call_of(291).shape == (30, 30, 30)  # 15 voxels at 3 mm -> 1.5 mm
    np.testing.assert_array_equal(result.data, filled((20, 20, 20), box, liver))


@pytest.mark.parametrize("robust_crop", [False, True])
def test_roi_subset_on_total_mr_always_crops_with_852(robust_crop):
    mr = get_task("total_mr")
    liver = mr.label_of("liver")
    models = StandIns({852: in_boxes((liver, cube(8, 11))), 850: everywhere(part_label("total_mr", 850, "liver"))})
    result = segment(image((20, 20, 20), (3, 3, 3)), models, task="total_mr", roi_subset=["liver"],
                     robust_crop=robust_crop)
    assert models.ids == [852, 850]  # 3 mm crop model, then only the organ part
    assert models.call_of(852).spacing == (3.0, 3.0, 3.0)
    assert models.call_of(850).shape == (30, 30, 30)
    np.testing.assert_array_equal(result.data, filled((20, 20, 20), cube(2, 17), liver))


def test_empty_crop_gives_all_zero_output_without_running_main_models():
    models = StandIns({})  # the rough model finds nothing
    img = image((12, 12, 12), (6, 6, 6))
    result = segment(img, models, task="total", roi_subset=["liver", "spleen"])
    assert models.loaded == [298]
    assert result.image.shape == img.shape and not result.data.any()
    assert set(result.label_map.values()) == {"liver", "spleen"}


# ---------------------------------------------------------------- (b) crop and crop_model chains


def test_crop_task_uses_total_fastest_with_20mm_margin():
    task = get_task("liver_segments")
    assert task.crop == ("liver",) and task.crop_margin_mm == (10.0, 10.0, 10.0)  # ignored without crop_model
    spacing = task.modes["normal"].spacing
    models = StandIns({298: in_boxes((TOTAL.label_of("liver"), cube(5, 7))), 570: everywhere(1)})
    result = segment(image((12, 12, 12), (6, 6, 6)), models, task="liver_segments")
    assert models.ids == [298, 570]
    main = models.call_of(570)
    assert main.shape == tuple(int(round(8 * 6.0 / s)) for s in spacing)  # box 2..10: 20 mm, not 10 mm
    assert main.spacing == pytest.approx(spacing) and main.step == 0.5
    np.testing.assert_array_equal(result.data, filled((12, 12, 12), cube(2, 10), 1))


def test_crop_model_chain_runs_total_then_craniofacial_then_teeth():
    cranio = get_task("craniofacial_structures")
    models = StandIns({
        298: in_boxes((TOTAL.label_of("skull"), cube(5, 7))),
        115: everywhere(cranio.label_of("teeth_upper")),
        113: everywhere(1),
    })
    result = segment(image((12, 12, 12), (6, 6, 6)), models, task="teeth")
    assert models.ids == [298, 115, 113]
    assert [c.step for c in models.calls] == [0.8, 0.5, 0.5]
    # craniofacial crops the skull box 5..7 with the 20 mm roi margin (3 voxels): 2..10, 8 voxels at 0.5 mm
    assert models.call_of(115).shape == (96, 96, 96)
    # teeth crops craniofacial's teeth (its whole crop, 2..10) with its own 10 mm margin: int(10 / 6) = 1
    assert models.call_of(113).shape == (120, 120, 120)
    assert models.call_of(113).spacing == (0.5, 0.5, 0.5)
    np.testing.assert_array_equal(result.data, filled((12, 12, 12), cube(1, 11), 1))


def test_robust_crop_is_not_passed_down_the_crop_model_chain():
    models = StandIns({
        297: in_boxes((TOTAL.label_of("skull"), cube(5, 7))),
        298: in_boxes((TOTAL.label_of("skull"), cube(5, 7))),
    })
    segment(image((12, 12, 12), (6, 6, 6)), models, task="teeth", robust_crop=True)
    assert models.ids[0] == 298


def test_crop_model_finding_nothing_skips_the_task_model():
    models = StandIns({298: in_boxes((TOTAL.label_of("skull"), cube(5, 7)))})  # craniofacial: no teeth
    result = segment(image((12, 12, 12), (6, 6, 6)), models, task="teeth")
    assert models.loaded == [298, 115]
    assert not result.data.any()


# ---------------------------------------------------------------- (c) body_seg


def test_body_seg_runs_body_fast_first_and_crops_with_the_task_margin():
    body_answer = in_boxes((1, cube(3, 7)))  # body_trunc, on the body model's 6 mm grid
    models = StandIns({300: body_answer, 297: everywhere(1)})
    img = image((20, 20, 20), (3, 3, 3))
    result = segment(img, models, task="total", speed="fast", body_seg=True)
    assert models.ids == [300, 297]
    assert models.call_of(300).shape == (10, 10, 10) and models.call_of(300).spacing == (6.0, 6.0, 6.0)
    assert models.call_of(300).step == 0.5
    body = geometry.resample_labels_to_shape(body_answer(np.zeros((10, 10, 10))), img.shape) > 0
    lo = np.argwhere(body).min(axis=0) - 1  # task margin 3 mm = 1 voxel at 3 mm
    hi = np.argwhere(body).max(axis=0) + 2
    box = tuple(zip(lo.tolist(), hi.tolist()))
    assert models.call_of(297).shape == tuple(hi - lo)
    np.testing.assert_array_equal(result.data, filled(img.shape, box, 1))


def test_body_seg_is_ignored_with_a_warning_for_mr_tasks():
    models = StandIns({852: everywhere(1)})
    with pytest.warns(UserWarning, match="body_seg"):
        result = segment(image((10, 10, 10), (3, 3, 3)), models, task="total_mr", speed="fast", body_seg=True)
    assert models.ids == [852]
    assert any("body_seg" in note for note in result.warnings)
    assert result.data.all()


def test_body_seg_is_not_used_when_the_task_crops():
    models = StandIns({298: in_boxes((TOTAL.label_of("liver"), cube(5, 7))), 570: everywhere(1)})
    segment(image((12, 12, 12), (6, 6, 6)), models, task="liver_segments", body_seg=True)
    assert models.ids == [298, 570]


# ---------------------------------------------------------------- (d) splitting


def z_ramp_image(shape=(8, 8, 90)) -> nib.Nifti1Image:
    """Intensity grows with z across all stand-in bins, so a misplaced slab changes the labels."""
    z = np.arange(shape[2]) * 10.0
    return nib.Nifti1Image(np.broadcast_to(z, shape).astype(np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))


def test_force_split_gives_the_same_labels_in_three_slabs():
    img = z_ramp_image()
    whole: dict = {}
    split: dict = {}
    plain = pipeline.segment(img, SegmentationRequest(task="total", speed="fast", device="cpu"),
                             runner_factory=intensity_factory(whole))
    forced = pipeline.segment(img, SegmentationRequest(task="total", speed="fast", device="cpu", force_split=True),
                              runner_factory=intensity_factory(split))
    expected = label_by_intensity(img.get_fdata())
    assert len(np.unique(expected)) == 4
    np.testing.assert_array_equal(plain.data, expected)
    np.testing.assert_array_equal(forced.data, expected)
    assert [c["shape"] for c in whole[297].calls] == [(8, 8, 90)]
    # third = 30, margin 20: slabs [0, 50), [11, 80), [41, 90)
    assert [c["shape"] for c in split[297].calls] == [(8, 8, 50), (8, 8, 69), (8, 8, 49)]


@pytest.mark.parametrize("depth", [60, 90, 301, 1000])
def test_split_slabs_put_every_slice_back_exactly_once(depth):
    plan = geometry.split_plan((4, 4, depth), force=True, allowed=False)
    assert plan.third == depth // 3
    index = np.arange(depth)
    rebuilt = np.full(depth, -1)
    for slab, (keep, dest) in zip(plan.slabs(depth), plan.keep()):
        assert (rebuilt[dest] == -1).all()
        rebuilt[dest] = index[slab][keep]
    np.testing.assert_array_equal(rebuilt, index)


def test_automatic_split_only_for_large_multi_model_volumes():
    big = (512, 512, 901)
    assert geometry.split_plan(big, force=False, allowed=True) == geometry.SplitPlan(third=300)
    assert geometry.split_plan(big, force=False, allowed=False) is None  # single model
    assert geometry.split_plan((512, 512, 900), force=False, allowed=True) is None  # not more than 512*512*900
    assert geometry.split_plan((1400, 1400, 200), force=False, allowed=True) is None  # z not above 200
    assert geometry.split_plan((1400, 1400, 201), force=False, allowed=True) is not None
    assert geometry.split_plan((10, 10, 90), force=True, allowed=False) == geometry.SplitPlan(third=30)


@pytest.mark.parametrize(("speed", "allowed"), [("normal", True), ("fast", False)])
def test_pipeline_allows_automatic_split_only_for_multi_model_modes(monkeypatch, speed, allowed):
    seen = []
    original = geometry.split_plan

    def spy(shape, force, allowed):
        seen.append((tuple(shape), force, allowed))
        return original(shape, force, allowed)

    monkeypatch.setattr(geometry, "split_plan", spy)
    segment(image((8, 8, 8), (6, 6, 6)), StandIns(), task="total", speed=speed)
    assert seen and all(entry[1:] == (False, allowed) for entry in seen)


# ---------------------------------------------------------------- (e) higher-order resampling


def test_higher_order_resampling_hands_the_runner_the_image_at_its_own_spacing():
    img = nib.Nifti1Image((np.indices((30, 30, 12)).sum(axis=0) * 15).astype(np.int16),
                          np.diag([0.8, 0.8, 2.5, 1.0]))
    runners: dict = {}
    result = pipeline.segment(img, SegmentationRequest(task="total", speed="fast", device="cpu",
                                                    higher_order_resampling=True),
                              runner_factory=intensity_factory(runners))
    (call,) = runners[297].calls
    assert call["shape"] == (30, 30, 12)
    assert call["spacing"] == pytest.approx((0.8, 0.8, 2.5))
    np.testing.assert_array_equal(result.data, label_by_intensity(img.get_fdata()))


def test_higher_order_resampling_still_resamples_the_crop_model():
    models = StandIns({298: in_boxes((TOTAL.label_of("liver"), cube(2, 4)))})
    segment(image((12, 12, 12), (3, 3, 3)), models, task="total", speed="fast", roi_subset=["liver"],
            higher_order_resampling=True)
    assert models.call_of(298).spacing == (6.0, 6.0, 6.0)


def test_force_split_with_roi_subset_does_not_split_the_crop_model():
    models = StandIns({298: in_boxes((TOTAL.label_of("liver"), ((0, 2), (0, 2), (10, 40))))})
    img = image((8, 8, 200), (1.5, 1.5, 1.5))  # the liver crop gives 73 slices at 3 mm: the task model splits fine
    segment(img, models, task="total", speed="fast", roi_subset=["liver"], force_split=True)
    assert models.ids.count(298) == 1


# ---------------------------------------------------------------- (f) remove_outside


def test_remove_outside_zeroes_voxels_beyond_the_dilation():
    task = get_task("heartchambers_highres")
    heart, aorta = TOTAL.label_of("heart"), TOTAL.label_of("aorta")
    aorta_box: Box = ((16, 19), (12, 14), (0, 30))  # a tube along z touching the heart
    models = StandIns({297: in_boxes((aorta, aorta_box), (heart, cube(12, 16))), 301: everywhere(1)})
    result = segment(image((30, 30, 30), (3, 3, 3)), models, task="heartchambers_highres")
    assert models.ids == [297, 301]  # robust crop: the 3 mm model
    assert models.call_of(301).shape == (16, 16, 16)  # heart 12..16 + int(20 / 3) = 6 voxels: 6..22
    assert models.call_of(301).spacing == (3.0, 3.0, 3.0)  # the task has no resampling
    outside = filled((30, 30, 30), cube(12, 16)) | filled((30, 30, 30), aorta_box)
    keep = ndimage.binary_dilation(outside, iterations=int(task.remove_outside_dilation_mm / 3))
    expected = filled((30, 30, 30), cube(6, 22)) * keep
    np.testing.assert_array_equal(result.data, expected)
    assert result.data[9, 13, 13] == 1 and result.data[8, 13, 13] == 0  # 3 voxels kept, the 4th removed
    assert result.data[17, 13, 21] == 1  # near the aorta only: far from the heart, still kept


# ---------------------------------------------------------------- (g) vertebrae_pp_refined


def test_vertebrae_pp_refined_trims_the_prediction_with_the_vertebral_body_mask():
    refined = get_task("vertebrae_pp_refined")
    l1 = refined.label_of("vertebrae_L1")
    body_box: Box = ((5, 15), (5, 15), (2, 9))
    disc_box: Box = ((5, 15), (5, 15), (9, 11))
    l1_box: Box = ((6, 14), (6, 14), (3, 10))
    models = StandIns({305: in_boxes((1, body_box), (2, disc_box)), 803: in_boxes((l1, l1_box))})
    result = segment(image((20, 20, 20), (1.5, 1.5, 1.5)), models, task="vertebrae_pp_refined")
    assert models.ids == [305, 803]
    assert models.call_of(305).shape == (20, 20, 20) and models.call_of(305).spacing == (1.5, 1.5, 1.5)
    labels = result.data
    assert set(np.unique(labels)) == {0, l1}
    body = filled(labels.shape, body_box).astype(bool)
    assert not labels[~body].any()  # nothing outside the vertebral body (discs included)
    assert labels[10, 10, 9] == 0  # predicted L1, but a disc voxel
    assert (labels[slices(l1_box)][body[slices(l1_box)]] == l1).all()
    assert labels[5, 10, 5] == l1  # the dilation grew L1 inside the body


# ---------------------------------------------------------------- (h) progress and cancel


def stages(events) -> list[str]:
    collapsed: list[str] = []
    for event in events:
        if not collapsed or collapsed[-1] != event.stage:
            collapsed.append(event.stage)
    return collapsed


def test_progress_stages_come_in_order_with_model_counts_and_fractions():
    events: list = []
    models = StandIns(tiles=2)
    segment(image((8, 8, 8), (6, 6, 6)), models, progress=events.append, task="total")
    assert stages(events) == ["read", "resample", "predict", "postprocess", "done"]
    predict = [e for e in events if e.stage == "predict"]
    assert {e.of for e in predict} == {5}
    assert [e.model for e in predict if e.fraction is None] == [1, 2, 3, 4, 5]  # one "loading" event each
    for index in range(1, 6):
        assert [e.fraction for e in predict if e.model == index and e.fraction is not None] == [0.5, 1.0]
    assert events[-1].stage == "done" and events[-1].fraction == 1.0


def test_progress_of_a_cropped_run_reports_the_crop_first():
    events: list = []
    models = StandIns({298: in_boxes((TOTAL.label_of("liver"), cube(5, 7)))})
    segment(image((12, 12, 12), (6, 6, 6)), models, progress=events.append, task="total", roi_subset=["liver"])
    assert stages(events) == ["read", "crop", "resample", "predict", "postprocess", "resample", "predict",
                              "postprocess", "done"]


def test_cancel_between_models_stops_before_the_next_model():
    events: list = []
    models = StandIns(tiles=0)  # no tile callbacks: the check before each model must catch it
    with pytest.raises(CancelledError):
        segment(image((8, 8, 8), (6, 6, 6)), models, progress=events.append,
                should_cancel=lambda: len(models.calls) >= 1, task="total")
    assert models.loaded == [291]
    assert "done" not in stages(events)


def test_cancel_during_tiles_raises_from_the_running_model():
    models = StandIns(tiles=3)
    with pytest.raises(CancelledError):
        segment(image((8, 8, 8), (6, 6, 6)), models, should_cancel=lambda: len(models.calls) >= 1,
                task="total", speed="fast")
    assert models.loaded == [297]


def test_force_split_of_a_thin_image_says_why():
    with pytest.raises(InvalidOptionError, match="--force_split needs at least 57 slices"):
        segment(image((8, 8, 40), (3.0, 3.0, 3.0)), StandIns({}), task="total", speed="fast", force_split=True)
