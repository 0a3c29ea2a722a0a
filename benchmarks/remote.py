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
- the local run's time before its first predicted patch (start, import, read, resample, model load: read from its
  ``--progress-json`` events, less one patch), against what the warm slot saves over the cold one.

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


def run(image: Path, out: Path, env: dict, *extra: str) -> tuple[float, list[tuple[float, dict]]]:
    """The command as a whole process: its seconds and its progress events with their times."""
    command = [sys.executable, "-m", "totalseg_engine", "-i", str(image), "-o", str(out), "--ml", "--fast",
               "-d", "cpu", "--progress-json", *extra]
    started = time.perf_counter()
    events = []
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            if line.startswith("{"):
                events.append((time.perf_counter() - started, json.loads(line)))
        error = process.stderr.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{error}")
    return time.perf_counter() - started, events


def before_prediction(events: list[tuple[float, dict]]) -> float:
    """Seconds until the first predicted patch, less one patch: start, import, read, resample, model load."""
    patches = [t for t, event in events if event.get("stage") == "predict" and event.get("fraction") is not None]
    if not patches:
        return float("nan")
    one_patch = statistics.median(b - a for a, b in zip(patches, patches[1:])) if len(patches) > 1 else 0.0
    return patches[0] - one_patch


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
    local, before, remote, traffic, equal = [], [], [], [], True
    try:
        server.slots()  # started and ready, its model not loaded yet
        url = f"http://127.0.0.1:{relay.port}/"
        for _ in range(repeats):
            seconds, events = run(image, folder / "local.nii.gz", env)
            local.append(seconds)
            before.append(before_prediction(events))
            relay.reset()
            seconds, _ = run(image, folder / "remote.nii.gz", client_env, "--server", url)
            remote.append(seconds)
            traffic.append(relay.reset())
            equal = equal and same_labels(folder / "local.nii.gz", folder / "remote.nii.gz")
        library = library_job(image, url, folder / "library.nii.gz")
    finally:
        relay.close()
        stop_server(server)
    return {"local": statistics.median(local), "before": statistics.median(before), "cold": remote[0],
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
              "received | local start+import+load | warm saves | same labels |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for image in images:
            work = folder / image.name.split(".")[0]
            work.mkdir()
            r = measure(image, home, work, args.repeats)
            print(f"| {image.name} | {image.stat().st_size / 1e6:.1f} | {r['local']:.1f} | {r['cold']:.1f} | "
                  f"{r['cold'] / r['local']:.2f} | {r['warm']:.1f} | {r['warm'] / r['local']:.2f} | "
                  f"{r['library']:.1f} | {r['up'] / 1e6:.2f} | {r['down'] / 1e6:.2f} | {r['before']:.1f} | "
                  f"{r['cold'] - r['warm']:.1f} | {r['equal']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
