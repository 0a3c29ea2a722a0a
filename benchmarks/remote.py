"""Remote against local on one machine over loopback: ``TotalSegmentator --fast --ml`` run here, and the same
command with ``--server`` against a ``totalseg_server`` started for it, measured in the same run.

For each image (example_ct, and a 512×512×≥140 CT: ``--large``, or one made by resampling example_ct onto that
grid; same body, so the network sees the same 3 mm grid and the difference is reading, resampling and sending):

- local: the command as a whole process (start, imports, model load, prediction, writing);
- remote cold: the same command with ``--server``, the server's slot started but its model not yet loaded;
- remote warm: again, on the slot that now holds the model (local and remote runs take turns, so that a machine
  busy with other work slows both alike; medians);
- bytes each way, counted by a TCP relay between client and server (HTTP included; the client gzips what it
  sends unless the file is compressed already);
- a warm job through the client library alone (upload, segment, download: no client process);
- the local set-up (Python's start, imports, model load, the first call's warm-up: a process that segments the
  image twice keeping its models, the first run less the second), against what a warm job saves over a local run
  and over the cold slot.

Weights: the model factory's untrained ``total --fast`` (``--size default``: nnU-Net's default CT network, the
official model's shape and cost; ``test``: the tests' small one). Not a test: it prints a table.

    python benchmarks/remote.py [--size default] [--large ct_512x512x140.nii.gz]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))
from model_factory import NNUNET_DEFAULT_CT, SMALL_3MM, write_task_models  # noqa: E402
from server_support import start_server, stop_server  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "totalsegmentator-tests"
SIZES = {"default": NNUNET_DEFAULT_CT, "test": SMALL_3MM}
LARGE_SHAPE = (512, 512, 140)


class Relay:
    """A TCP relay on 127.0.0.1 to ``port`` that counts the bytes each way."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.up = self.down = 0
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> tuple[int, int]:
        with self._lock:
            counts, self.up, self.down = (self.up, self.down), 0, 0
        return counts

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, direction: str) -> None:
        try:
            while data := source.recv(1 << 16):
                target.sendall(data)
                with self._lock:
                    setattr(self, direction, getattr(self, direction) + len(data))
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def large_ct(folder: Path) -> Path:
    """example_ct resampled (linear) onto a 512×512×140 grid over the same extent: a CT of the size the issue
    names, with the same anatomy."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    image = nib.load(DATA / "example_ct.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)
    factors = [new / old for new, old in zip(LARGE_SHAPE, data.shape)]
    resampled = ndimage.zoom(data, factors, order=1).astype(np.int16)
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] / np.array(factors)
    path = folder / "ct_512x512x140.nii.gz"
    nib.save(nib.Nifti1Image(resampled, affine), path)
    return path


def run(image: Path, out: Path, env: dict, *extra: str) -> float:
    """The command as a whole process: its seconds."""
    command = [sys.executable, "-m", "totalseg_engine", "-i", str(image), "-o", str(out), "--ml", "--fast",
               "-d", "cpu", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return time.perf_counter() - started


SETUP_SCRIPT = """
import json, sys, time
started = float(sys.argv[1])
import torch
from totalseg_batch.warm import WarmModels
from totalseg_engine import SegmentationRequest, segment_to_files
imported = time.time()
request = SegmentationRequest.from_json({"task": "total", "speed": "fast", "multilabel": True, "device": "cpu"})
factory = WarmModels().factory("cpu", "torch", False)
seconds = []
for _ in range(2):
    began = time.time()
    segment_to_files(sys.argv[2], sys.argv[3], request, runner_factory=factory)
    seconds.append(time.time() - began)
print(json.dumps({"start_import": imported - started, "first": seconds[0], "second": seconds[1]}))
"""


def local_setup(image: Path, out: Path, env: dict) -> float:
    """What a local run pays before its work proper: Python's start and the imports, the model load and the first
    call's warm-up: a process segments the image twice with the models kept, the second time without them."""
    done = subprocess.run([sys.executable, "-c", SETUP_SCRIPT, repr(time.time()), str(image), str(out)], env=env,
                          capture_output=True, text=True, check=True)
    times = json.loads(done.stdout.strip().splitlines()[-1])
    return times["start_import"] + times["first"] - times["second"]


def same_labels(a: Path, b: Path) -> bool:
    import nibabel as nib
    import numpy as np

    return bool(np.array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj)))


def library_job(image: Path, url: str, target: Path) -> float:
    """A warm job through the client library alone (no client process to start): upload, segment, download."""
    from totalseg_remote import RemoteServer

    started = time.perf_counter()
    job = RemoteServer(url).submit(image, {"task": "total", "speed": "fast"})
    job.wait(poll_s=0.1)
    job.download("nifti", target)
    return time.perf_counter() - started


def measure(image: Path, home: Path, folder: Path, repeats: int) -> dict:
    """Local and remote runs taking turns (so that a busy machine slows both alike): the first remote job is the
    cold one, the later ones warm."""
    env = {**os.environ, "TOTALSEG_HOME_DIR": str(home)}
    client_env = {**os.environ, "TOTALSEG_HOME_DIR": str(folder / "client-home")}  # no weights on the client
    server = start_server(home, folder / "work")
    relay = Relay(int(server.url.rsplit(":", 1)[1].strip("/")))
    local, remote, traffic, equal = [], [], [], True
    try:
        server.slots()  # started and ready, its model not loaded yet
        url = f"http://127.0.0.1:{relay.port}/"
        for _ in range(repeats):
            seconds = run(image, folder / "local.nii.gz", env)
            local.append(seconds)
            relay.reset()
            seconds = run(image, folder / "remote.nii.gz", client_env, "--server", url)
            remote.append(seconds)
            traffic.append(relay.reset())
            equal = equal and same_labels(folder / "local.nii.gz", folder / "remote.nii.gz")
        library = library_job(image, url, folder / "library.nii.gz")
        setup = local_setup(image, folder / "setup.nii.gz", env)
    finally:
        relay.close()
        stop_server(server)
    return {"local": statistics.median(local), "setup": setup, "cold": remote[0],
            "warm": statistics.median(remote[1:]), "library": library, "up": traffic[0][0],
            "down": traffic[0][1], "equal": equal}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="the network of the weights")
    parser.add_argument("--repeats", type=int, default=3, help="local and remote runs, taking turns (default 3)")
    parser.add_argument("--large", type=Path, help="a 512×512×≥140 CT (default: example_ct resampled to one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="remote-bench-") as tmp:
        folder = Path(tmp)
        home = folder / "home"
        write_task_models(home / "nnunet" / "results", "total", "fast", SIZES[args.size], seed=5)
        images = [DATA / "example_ct.nii.gz", args.large or large_ct(folder)]
        print(f"total --fast --ml, CPU ({os.cpu_count()} cores), {args.size} network, loopback; seconds (local and "
              f"warm: median of {args.repeats}), MB")
        print("| image | MB | local | remote cold | ratio | remote warm | ratio | warm job, library | sent | "
              "received | local set-up | warm saves vs local | vs cold slot | same labels |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for image in images:
            work = folder / image.name.split(".")[0]
            work.mkdir()
            r = measure(image, home, work, args.repeats)
            print(f"| {image.name} | {image.stat().st_size / 1e6:.1f} | {r['local']:.1f} | {r['cold']:.1f} | "
                  f"{r['cold'] / r['local']:.2f} | {r['warm']:.1f} | {r['warm'] / r['local']:.2f} | "
                  f"{r['library']:.1f} | {r['up'] / 1e6:.2f} | {r['down'] / 1e6:.2f} | {r['setup']:.1f} | "
                  f"{r['local'] - r['warm']:.1f} | {r['cold'] - r['warm']:.1f} | {r['equal']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
