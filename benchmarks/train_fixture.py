"""A trained fixture: nnU-Net's default CT network for the 3 mm ``total`` model, trained on the shared CTs.

Random weights put many voxels of 118 near-equal logits at a tie, which no trained network does, so a runtime
whose logits differ by 1e-3 looks worse on them than it would on released weights. This script trains the
network the ``--fast`` model uses (6 stages, 32->320 features, 118 outputs, plans for a 128^3 patch) with plain
torch on the real CTs in ``../shared/data`` against the official model's outputs on them, until its logits are
as decisive as a trained network's. The network is fully convolutional, so it trains on smaller patches.

The result is a weights folder in the release layout (old-format plans, a checkpoint with everything nnU-Net's
trainer saves) for the ``total`` task's fast mode, cached outside the repository; the other models the
benchmarks need keep random weights. It is built in a temporary folder and renamed into place, so an
interrupted run leaves nothing half-written. At the end it prints the gap between the two largest logits
(percentiles over the body) for the random and the trained network, and the trained network's Dice against
the official output it learned from.

    python benchmarks/train_fixture.py                     # ~40 min on 2 cores
    python benchmarks/train_fixture.py --minutes 5 --home /tmp/quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import nibabel as nib
import numpy as np
from official import DATA, build_weights

DEFAULT_HOME = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "totalseg-benchmarks" / "trained"
FAST_DATASET = "Dataset297_TotalSegmentator_total_3mm_1559subj"
GAP_PERCENTILES = (0.1, 1, 5, 25, 50)
SMALL_GAPS = (3e-3, 1e-2, 0.1)


@dataclass
class Case:
    """One training image in the network's frame: normalised (z, y, x) intensities and official labels."""

    name: str
    image: np.ndarray
    labels: np.ndarray


# ------------------------------------------------------------------ data


def _official_pairs() -> list[tuple[str, object, str]]:
    """(name, image source, official --fast label map) for every shared CT with an official 3 mm output."""
    return [("example_ct", DATA / "example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
            ("example_ct_dicom", DATA / "example_ct_dicom", "example_seg_dicom.nii.gz")]


def network_frame(image: nib.Nifti1Image, seg: nib.Nifti1Image, plans) -> tuple[np.ndarray, np.ndarray]:
    """The image as the pipeline hands it to the network (RAS, 3 mm, nnU-Net's axes, normalised) and its labels.

    The image takes the pipeline's own resampling; the official labels are resampled (nearest) onto that grid.
    """
    import nibabel.processing
    from totalseg_engine import geometry
    from totalseg_engine.inference import sliding_window

    canonical = nib.as_closest_canonical(image)
    resampled = geometry.resample_image(canonical, plans.spacing[::-1])
    labels = nibabel.processing.resample_from_to(seg, resampled, order=0)
    prepared = sliding_window.preprocess(geometry.to_nnunet([np.asarray(resampled.dataobj)], plans.spacing[::-1]).data,
                                         plans.spacing, plans)
    crop = tuple(slice(lo, hi) for lo, hi in prepared.bbox)
    zyx_labels = np.asarray(labels.dataobj).astype(np.int64).transpose(2, 1, 0)[crop]
    return prepared.data[0], zyx_labels


def load_cases(plans) -> list[Case]:
    from totalseg_engine import imageio

    cases = []
    for name, source, seg_name in _official_pairs():
        image, labels = network_frame(imageio.load_image(source), nib.load(DATA / seg_name), plans)
        cases.append(Case(name, image, labels))
    return cases


def random_centre(labels: np.ndarray, class_share: float, rng: np.random.Generator) -> np.ndarray:
    """A voxel of a random class with probability ``class_share`` (small organs get seen too), else any voxel."""
    present = np.unique(labels)
    if rng.random() < class_share and present.size > 1:
        voxels = np.argwhere(labels == rng.choice(present[present > 0]))
        return voxels[rng.integers(len(voxels))]
    return np.array([rng.integers(s) for s in labels.shape])


def sample_patch(case: Case, patch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random patch, centred half of the time on a voxel of a random class, padded to the patch size."""
    shape = np.array(case.image.shape)
    start = np.clip(random_centre(case.labels, 0.5, rng) - patch // 2, 0, np.maximum(shape - patch, 0))
    region = tuple(slice(s, s + patch) for s in start)
    image, labels = case.image[region], case.labels[region]
    pad = [(0, patch - s) for s in image.shape]
    return np.pad(image, pad, constant_values=float(case.image.min())), np.pad(labels, pad)


# ------------------------------------------------------------------ training


def trainable_network(model_dir: Path):
    """The fold's network with the checkpoint's (random) weights, with deep supervision, as nnU-Net trains it."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from totalseg_engine.inference import runtimes
    from totalseg_engine.inference.nnunet_plans import read_model_plans

    plans = read_model_plans(model_dir)
    network = get_network_from_plans(runtimes.network_class_path(plans.network_class_name), plans.network_kwargs,
                                     plans.network_kwargs_to_import, plans.num_input_channels, plans.num_classes,
                                     allow_init=True, deep_supervision=True)
    checkpoint = torch.load(model_dir / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    network.load_state_dict(checkpoint["network_weights"])
    return network.train(), plans


def dice_ce_loss():
    """nnU-Net's default loss: soft Dice (batch Dice, no background) plus cross-entropy."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def deep_supervision_loss(stages: int):
    """The loss on every decoder output but the lowest, weighted 1, 1/2, 1/4, ... as nnU-Net trains."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    weights = np.array([1 / (2**i) for i in range(stages - 1)])
    weights[-1] = 0
    return DeepSupervisionWrapper(dice_ce_loss(), weights / weights.sum())


def timed_training(parameters: list, step, seconds: float, lr: float, seed: int, clip: Optional[float] = None,
                   name: str = "step", every: int = 20) -> list[float]:
    """AdamW on ``step(rng)``'s loss for ``seconds``, with a cosine learning rate over that time.

    glibc keeps freed activations in the heap meanwhile (``allocator``): a quarter less time per step here.
    """
    import torch
    from totalseg_engine.inference.allocator import reuse_freed_memory

    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=3e-5)
    losses: list[float] = []
    start = time.perf_counter()
    with reuse_freed_memory():
        while (elapsed := time.perf_counter() - start) < seconds:
            for group in optimiser.param_groups:
                group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * min(1.0, elapsed / seconds)))
            loss = step(rng)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(parameters, clip)
            optimiser.step()
            losses.append(loss.item())
            if len(losses) % every == 0:
                print(f"  {name} {len(losses):5d}  {elapsed / 60:5.1f} min  loss {np.mean(losses[-every:]):.3f}",
                      flush=True)
    return losses


def train(network, cases: list[Case], seconds: float, patch: int, batch: int, lr: float, seed: int) -> list[float]:
    """The whole network on random patches, with the deep-supervision loss."""
    import torch

    loss_fn = deep_supervision_loss(len(network.decoder.stages) + 1)

    def step(rng: np.random.Generator):
        pairs = [sample_patch(cases[int(rng.integers(len(cases)))], patch, rng) for _ in range(batch)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None])
        outputs = network(x)
        targets = [y[(..., *[slice(None, None, 2**i)] * 3)] for i in range(len(outputs))]  # nearest, as nnU-Net
        return loss_fn(outputs, targets)

    losses = timed_training(list(network.parameters()), step, seconds, lr, seed, clip=12)
    network.decoder.deep_supervision = False
    return losses


# ------------------------------------------------------------------ the last stage, on the inference windows


@dataclass
class Window:
    """One sliding-window tile as inference sees it: the last decoder stage's inputs, computed once, and labels."""

    low: object  # torch tensor (1, C, z/2, y/2, x/2): the output of the decoder's second-to-last stage
    skip: object  # torch tensor (1, C, z, y, x): the first encoder stage's output
    labels: np.ndarray


def inference_windows(case: Case, patch: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The (image, labels, inside the image) tiles of a case, padded and placed as the sliding window does."""
    from totalseg_engine.inference import sliding_window

    image, unpad = sliding_window.pad_to_patch(case.image[None], patch)
    labels = np.zeros(image.shape[1:], np.int64)
    labels[unpad] = case.labels
    inside = np.zeros(image.shape[1:], bool)
    inside[unpad] = True
    starts = sliding_window.tile_starts(image.shape[1:], patch, 0.5)
    windows = []
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                windows.append((image[(0, *region)], labels[region], inside[region]))
    return windows


def last_stage_inputs(network, image: np.ndarray):
    """Run everything before the last decoder stage once (the part that stays fixed while the head trains)."""
    import torch

    decoder = network.decoder
    with torch.inference_mode():
        skips = network.encoder(torch.from_numpy(image[None, None].astype(np.float32)))
        low = skips[-1]
        for s in range(len(decoder.stages) - 1):
            low = decoder.stages[s](torch.cat((decoder.transpconvs[s](low), skips[-(s + 2)]), 1))
    return low.clone(), skips[0].clone()


def head_forward(network, low, skip):
    """The last decoder stage and its segmentation layer, as the network's own forward runs them."""
    import torch

    decoder = network.decoder
    return decoder.seg_layers[-1](decoder.stages[-1](torch.cat((decoder.transpconvs[-1](low), skip), 1)))


def train_head(network, cases: list[Case], plans, seconds: float, crop: int, lr: float, seed: int) -> list[float]:
    """Train the last decoder stage and segmentation layer on crops of fixed inference-window features.

    The layers before it run once per window instead of on every step, so a step costs a tenth of a step of
    the whole network: on 2 cores that is the difference between hundreds and thousands of steps an hour.
    """
    import torch

    network.eval()
    windows = [Window(*last_stage_inputs(network, image), labels)
               for case in cases for image, labels, _ in inference_windows(case, plans.patch_size)]
    # windows by how much anatomy they hold: the thin DICOM series' windows are mostly padding
    foreground = np.array([float((w.labels > 0).sum()) for w in windows])
    odds = foreground / foreground.sum()
    decoder = network.decoder
    trainable = [*decoder.transpconvs[-1].parameters(), *decoder.stages[-1].parameters(),
                 *decoder.seg_layers[-1].parameters()]
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    for parameter in trainable:
        parameter.requires_grad_(True)
    loss_fn = dice_ce_loss()

    def step(rng: np.random.Generator):
        window = windows[int(rng.choice(len(windows), p=odds))]
        corner = _crop_corner(window.labels, crop, rng)
        full = tuple(slice(c, c + crop) for c in corner)
        half = tuple(slice(c // 2, (c + crop) // 2) for c in corner)
        logits = head_forward(network, window.low[(..., *half)], window.skip[(..., *full)])
        return loss_fn(logits, torch.from_numpy(window.labels[full][None, None]))

    losses = timed_training(trainable, step, seconds, lr, seed, name="head step", every=50)
    for parameter in network.parameters():
        parameter.requires_grad_(True)
    return losses


def _crop_corner(labels: np.ndarray, crop: int, rng: np.random.Generator) -> list[int]:
    """An even corner (the half-resolution input must line up), mostly centred on a random class."""
    corner = np.clip(random_centre(labels, 0.7, rng) - crop // 2, 0, np.array(labels.shape) - crop)
    return [int(c) // 2 * 2 for c in corner]


# ------------------------------------------------------------------ how trained is it


def window_outputs(network, case: Case, plans) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gap between the two largest logits, the argmax and the official label at every image voxel of every
    inference window of a case (eval mode, as the pipeline runs the network)."""
    import torch

    gaps, predicted, official = [], [], []
    network.eval()
    for image, labels, inside in inference_windows(case, plans.patch_size):
        with torch.inference_mode():
            logits = network(torch.from_numpy(image[None, None].astype(np.float32)))[0]
        top = torch.topk(logits, 2, dim=0)
        gaps.append((top.values[0] - top.values[1]).numpy()[inside])
        predicted.append(top.indices[0].numpy()[inside])
        official.append(labels[inside])
    return np.concatenate(gaps), np.concatenate(predicted), np.concatenate(official)


def describe_gaps(name: str, gaps: np.ndarray) -> str:
    percentiles = " ".join(f"p{p:g} {v:8.4f}" for p, v in zip(GAP_PERCENTILES, np.percentile(gaps, GAP_PERCENTILES)))
    small = " ".join(f"<{t:g}: {100 * float((gaps < t).mean()):.4f}%" for t in SMALL_GAPS)
    return f"{name:32} {percentiles}   {small}"


def dice_against_official(predicted: np.ndarray, official: np.ndarray) -> tuple[float, float, int]:
    """Mean Dice over the official's classes, the lowest of a class over 1 cm3 (27 mm3 voxels), how many classes."""
    scores, large = [], []
    for label in np.unique(official[official > 0]):
        a, b = official == label, predicted == label
        dice = 2 * float((a & b).sum()) / float(a.sum() + b.sum())
        scores.append(dice)
        if a.sum() * 27 / 1000 > 1.0:
            large.append(dice)
    return float(np.mean(scores)), float(min(large)), len(scores)


# ------------------------------------------------------------------ main


def fast_model_dir(home: Path) -> Path:
    return next((home / "nnunet" / "results" / FAST_DATASET).glob("*__3d_fullres"))


def start_folder(home: Path, resume: bool) -> tuple[Path, dict]:
    """A folder to train in beside ``home``: random weights, or a copy of ``home`` to train further."""
    building = home.with_name(home.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    if resume:
        shutil.copytree(home, building)
        return building, json.loads((home / "trained_fixture.json").read_text(encoding="utf-8"))
    if home.exists():
        raise SystemExit(f"{home} exists; remove it to train again, or add --resume to train it further.")
    build_weights(building, "old")  # random weights for every model, in the release layout
    return building, {"steps": 0, "minutes": 0.0, "cases": {}}


def save_network(model_dir: Path, network) -> None:
    """The trained weights into the fold's checkpoint, with everything else nnU-Net's trainer saved there."""
    import torch
    from model_factory import write_checkpoint

    path = model_dir / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    write_checkpoint(path, network.eval(), checkpoint["trainer_name"], checkpoint["init_args"]["plans"],
                     checkpoint["init_args"]["configuration"], 0, checkpoint["init_args"]["dataset_json"])


def report_fixture(network, cases: list[Case], plans, report: dict, random_gaps: dict) -> None:
    """Print and record the logit gaps (random against trained) and the Dice against the official output."""
    print(f"\n{report['steps']} steps of the whole network in {report['minutes']:g} min, "
          f"{report.get('head_steps', 0)} of its last stage in {report.get('head_minutes', 0):g} min, "
          f"final loss {report['final_loss']:.3f}")
    print("gap between the two largest logits over body voxels:")
    for case in cases:
        after, predicted, official = window_outputs(network, case, plans)
        mean, worst, classes = dice_against_official(predicted, official)
        before = random_gaps.get(case.name)
        if before is not None:
            print(describe_gaps(f"{case.name} random", before))
        print(describe_gaps(f"{case.name} trained", after))
        print(f"{'':32} Dice against the official --fast output: mean {mean:.3f} over {classes} classes, "
              f"lowest class > 1 cm3 {worst:.3f}")
        entry = report["cases"].setdefault(case.name, {"gap_percentiles": {}})
        if before is not None:
            entry["gap_percentiles"]["random"] = np.percentile(before, GAP_PERCENTILES).tolist()
        entry["gap_percentiles"]["trained"] = np.percentile(after, GAP_PERCENTILES).tolist()
        entry.update(dice_mean=mean, dice_lowest_large=worst, classes=classes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help="weights home to write (outside the repo)")
    parser.add_argument("--minutes", type=float, default=40.0, help="training time")
    parser.add_argument("--resume", action="store_true", help="train the fixture in --home further")
    parser.add_argument("--head-minutes", type=float, default=20.0,
                        help="then train the last decoder stage alone on the inference windows")
    parser.add_argument("--head-crop", type=int, default=64, help="crop edge for the last stage's training")
    parser.add_argument("--head-lr", type=float, default=2e-3)
    parser.add_argument("--patch", type=int, default=64, help="training patch edge (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    building, report = start_folder(args.home, args.resume)
    model_dir = fast_model_dir(building)
    network, plans = trainable_network(model_dir)
    cases = load_cases(plans)
    network.decoder.deep_supervision = False
    random_gaps = {} if args.resume else {case.name: window_outputs(network, case, plans)[0] for case in cases}
    network.decoder.deep_supervision = True
    print(f"training {plans.network_class_name} {plans.network_kwargs['features_per_stage']} on "
          f"{', '.join(f'{c.name} {c.image.shape}' for c in cases)}; patch {args.patch}^3, batch {args.batch}, "
          f"{args.threads} threads, {args.minutes:g} min", flush=True)
    losses = train(network, cases, args.minutes * 60, args.patch, args.batch, args.lr, args.seed)
    head = train_head(network, cases, plans, args.head_minutes * 60, args.head_crop, args.head_lr, args.seed)
    save_network(model_dir, network)
    report.update(steps=report["steps"] + len(losses), minutes=report["minutes"] + args.minutes,
                  head_steps=report.get("head_steps", 0) + len(head),
                  head_minutes=report.get("head_minutes", 0.0) + args.head_minutes,
                  final_loss=float(np.mean((head or losses)[-20:])), patch=args.patch, batch=args.batch)
    report_fixture(network, cases, plans, report, random_gaps)
    (building / "trained_fixture.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    if args.resume:
        shutil.rmtree(args.home)
    building.rename(args.home)
    print(f"weights home: {args.home}")


if __name__ == "__main__":
    main()
