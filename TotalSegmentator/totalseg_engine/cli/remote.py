"""``TotalSegmentator -i ct.nii.gz -o out --server URL``: the segmentation from a remote server, every output
written here by this engine's own writers.

The server segments (its warm slot on its GPU) and sends back the multilabel NIfTI with its label table, and the
statistics when asked; :func:`..case.segment_to_files` then writes exactly what a local run writes (class files,
``--ml``, ``-ot seg_nrrd``, surfaces, DICOM outputs referencing the local DICOM input, ``statistics.json``, the
preview) from that result. The labels are put on the local input's own header (read here while the server
works), so the files are those of a local run, voxel for voxel and header for header. Options that need the
network's output on this machine are refused, as is a licence key (licences are the server's).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import nibabel as nib
import numpy as np

from ..core import pipeline
from ..errors import CancelledError, InvalidOptionError, TotalSegmentatorError
from ..imageio import read_label_map
from ..progress import ProgressCallback, ProgressEvent
from ..request import SegmentationRequest
from .options import TOKEN_VARIABLE

TOKEN_HINT = f"{TOKEN_VARIABLE} (or --token)"
POLL_S = 0.2  # a status costs the server next to nothing; the end of a job is seen 0.1 s after it on average
LOCAL_ONLY = (("save_probabilities", "-sp/--save_probabilities", "the probabilities stay on the server's GPU"),
              ("report", "-rp/--report", "a run report describes this machine's run"))


def check_remote_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace,
                           request: SegmentationRequest) -> None:
    """Refuse what only a local run can do (exit status 2, naming the option)."""
    if args.token and not args.server:
        parser.error("--token is the token of a --server; give --server URL too.")
    if not args.server:
        return
    for name, flag, reason in LOCAL_ONLY:
        if getattr(args, name, None):
            parser.error(f"{flag} cannot be used with --server: {reason}.")
    if request.license_number:
        parser.error("-l/--license_number cannot be used with --server: the server uses its own licence keys "
                     "(its administrator sets them with totalseg_set_license).")
    if args.token:
        print(f"WARNING: --token is visible to every user of this machine (ps). Set {TOKEN_VARIABLE} instead.",
              file=sys.stderr)


def remote_segmenter(url: str, token: Optional[str]) -> Callable:
    """A :data:`..case.Segmenter` that runs the request on the server at ``url``."""
    from totalseg_remote import RemoteError, RemoteServer

    server = RemoteServer(url, token or os.environ.get(TOKEN_VARIABLE) or None, token_hint=TOKEN_HINT)

    def segment(source, request: SegmentationRequest, progress: ProgressCallback,
                should_cancel: Callable[[], bool]) -> pipeline.Result:
        if isinstance(source, nib.Nifti1Image):
            raise InvalidOptionError("A remote server segments a file: give the image as a path.")
        try:
            return _segment_remotely(server, Path(source), request, progress, should_cancel)
        except RemoteError as err:
            raise TotalSegmentatorError(err.message) from err

    return segment


def _segment_remotely(server, source: Path, request: SegmentationRequest, progress: ProgressCallback,
                      should_cancel: Callable[[], bool]) -> pipeline.Result:
    from totalseg_remote import CancelledError as RemoteCancelled

    # Everything about the outputs is decided here; the labels come back in the task's own order.
    sent = replace(request, v1_order=False, license_number=None)
    formats = ("nifti", "statistics") if request.statistics else ("nifti",)
    progress(ProgressEvent(stage="upload", message=f"Sending the image to {server.url}"))
    with ThreadPoolExecutor(1) as pool, tempfile.TemporaryDirectory(prefix="totalseg-remote-") as folder:
        local = pool.submit(pipeline.load_input, source)  # read here while the server segments
        job = None
        try:
            job = server.submit(source, sent.to_json(), formats, should_cancel=should_cancel)
            job.wait(on_progress=lambda status: progress(_event(status)), should_cancel=should_cancel, poll_s=POLL_S)
            labels = nib.load(job.download("nifti", Path(folder) / "segmentation.nii.gz"))
            statistics = job.statistics() if request.statistics else None
        except RemoteCancelled as err:
            raise CancelledError(err.message) from err
        except KeyboardInterrupt:  # Ctrl+C or SIGTERM: the job on the server is cancelled too
            if job is not None and not (job.last_status and job.last_status.finished):
                _cancel_quietly(job)
            raise
        data = np.asarray(labels.dataobj, dtype=np.uint8)
        label_map = read_label_map(labels)
        original = local.result()
    reference = original if data.shape == original.shape[:3] else labels  # save_lowres: the model's grid
    return pipeline.Result(pipeline.labels_image(data, reference), label_map, statistics)


def _event(status) -> ProgressEvent:
    """A server status as the command line's progress: the queue while waiting, else the server's stage."""
    if status.state == "queued":
        return ProgressEvent(stage="queue", message=status.describe())
    return ProgressEvent(stage=status.stage or status.state, message=status.message or status.describe(),
                         fraction=status.fraction if isinstance(status.fraction, (int, float)) else None,
                         model=status.raw.get("progress", {}).get("model"), of=status.raw.get("progress", {}).get("of"))


def _cancel_quietly(job) -> None:
    from totalseg_remote import RemoteError

    with contextlib.suppress(RemoteError):
        job.cancel()
