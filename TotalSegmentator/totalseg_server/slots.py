"""Warm engine slots: one long-lived child process per GPU (or per share of the CPU), each keeping its models.

A slot is ``python -m totalseg_server.slot_process`` in a process group of its own, tied to the server with
:class:`totalseg_engine.Lifeline` (it dies with the server, SIGKILL included), pinned to its device: a GPU slot
sees only its GPU (``CUDA_VISIBLE_DEVICES``) and runs its jobs on it, a CPU slot sees none and gets its share of
the cores. It runs one job at a time and reports progress as JSON lines (:mod:`.slot_process`).

Cancelling a job kills the slot's whole process group, which ends every process the engine started, and a fresh
slot starts in its place (cold: its first job loads its models again). A slot that dies on its own (the kernel's
out-of-memory killer) fails its job with the reason and is replaced the same way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable, Optional

from totalseg_engine import Lifeline, engine_process_environment, kill_process_group, process_group_alive

SLOT_MODULE = "totalseg_server.slot_process"
START_TIMEOUT_S = 300.0
GONE_TIMEOUT_S = 10.0
TAIL_LINES = 40
READ_LIMIT = 1 << 20  # longest protocol line (an error message)


@dataclass(frozen=True)
class SlotSpec:
    """Where one slot runs: its public device name ("gpu:1", "cpu"), the GPU it may see, its CPU threads."""

    index: int
    device: str
    visible_gpu: str  # CUDA_VISIBLE_DEVICES ("" hides every GPU)
    threads: int

    @property
    def engine_device(self) -> str:
        """The device the slot's jobs ask the engine for: its only visible GPU, or the CPU."""
        return "gpu" if self.visible_gpu else "cpu"


def slot_specs(gpus: Optional[list[int]], cpu_slots: Optional[int], cores: Optional[int] = None) -> list[SlotSpec]:
    """One slot per listed GPU, or ``cpu_slots`` CPU slots; the cores are shared out evenly."""
    cores = cores or os.cpu_count() or 1
    if gpus:
        threads = max(1, cores // len(gpus))
        return [SlotSpec(i, f"gpu:{gpu}", str(gpu), threads) for i, gpu in enumerate(gpus)]
    count = cpu_slots or 1
    return [SlotSpec(i, "cpu", "", max(1, cores // count)) for i in range(count)]


def parse_gpus(text: str) -> list[int]:
    """``--gpus 0,1`` as GPU indices; ValueError naming what is wrong."""
    try:
        gpus = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--gpus takes GPU numbers separated by commas (such as 0,1), got '{text}'.") from None
    if not gpus or any(gpu < 0 for gpu in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus takes distinct GPU numbers separated by commas (such as 0,1), got '{text}'.")
    return gpus


class SlotLost(Exception):
    """The slot process ended while it ran a job (killed, out of memory, crashed)."""


Listener = Callable[[dict], None]


class Slot:
    """One slot process and the job it runs. ``run()`` sends a job and returns its last message."""

    def __init__(self, spec: SlotSpec, log: Callable[[str], None] = print) -> None:
        self.spec = spec
        self.log = log
        self.process: Optional[asyncio.subprocess.Process] = None
        self.lifeline: Optional[Lifeline] = None
        self.ready = asyncio.Event()
        self.busy = False
        self.starts = 0
        self.models_loaded = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._listener: Optional[Listener] = None
        self._outcome: Optional[asyncio.Future] = None
        self._readers: list[asyncio.Task] = []

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    @property
    def state(self) -> str:
        if not self.ready.is_set():
            return "starting"
        return "busy" if self.busy else "idle"

    def to_json(self) -> dict:
        return {"index": self.spec.index, "device": self.spec.device, "state": self.state,
                "warm": self.models_loaded > 0, "models_loaded": self.models_loaded}

    async def start(self) -> None:
        """Start the slot process (tied to this one, in its own process group); ``ready`` is set once it is."""
        env = {**os.environ, **engine_process_environment(self.spec.threads),
               "CUDA_VISIBLE_DEVICES": self.spec.visible_gpu, "TOTALSEG_SLOT_DEVICE": self.spec.device,
               "PYTHONUNBUFFERED": "1"}
        self.ready.clear()
        self.models_loaded = 0
        self.lifeline = Lifeline(group=True)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", SLOT_MODULE, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True, limit=READ_LIMIT,
            **self.lifeline.popen_options())
        self.lifeline.attach(self.process.pid)
        self.starts += 1
        self._readers = [asyncio.ensure_future(self._read_protocol(self.process)),
                         asyncio.ensure_future(self._read_log(self.process))]

    async def run(self, order: dict, listener: Listener) -> dict:
        """Send one job; ``listener`` gets its progress messages. Returns its ``done`` or ``failed`` message;
        raises :class:`SlotLost` when the slot ended first."""
        if self.process is None or self.process.returncode is not None:
            raise SlotLost(self._ended_message())
        self._listener = listener
        self._outcome = asyncio.get_running_loop().create_future()
        try:
            self.process.stdin.write((json.dumps(order) + "\n").encode())
            await self.process.stdin.drain()
        except (ConnectionError, RuntimeError) as err:
            raise SlotLost(self._ended_message()) from err
        try:
            return await self._outcome
        finally:
            self._listener = None
            self._outcome = None

    async def stop(self) -> None:
        """Kill the slot's whole process group and wait until none of it is left."""
        process = self.process
        if process is None:
            return
        kill_process_group(process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GONE_TIMEOUT_S
        while process_group_alive(process.pid) and loop.time() < deadline:
            kill_process_group(process.pid)
            await asyncio.sleep(0.05)
        for reader in self._readers:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(reader, 2)
        self.lifeline.release()
        self.ready.clear()

    # ------------------------------------------------------------------ reading

    async def _read_protocol(self, process: asyncio.subprocess.Process) -> None:
        while True:
            try:
                line = await process.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError):  # a line over READ_LIMIT: not ours
                continue
            if not line:
                break
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._handle(message)
        self.ready.clear()

    def fail_pending(self) -> None:
        """The slot's process and group are gone: the job it ran, if any, ends with the reason."""
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(SlotLost(self._ended_message()))

    def _handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "ready":
            self.ready.set()
        elif kind == "progress" and self._listener is not None:
            self._listener(message)
        elif kind in ("done", "failed") and self._outcome is not None and not self._outcome.done():
            self.models_loaded += int(message.get("loaded", 0))
            self._outcome.set_result(message)

    async def _read_log(self, process: asyncio.subprocess.Process) -> None:
        """The slot's stderr: into the server's log, and its last lines kept for a failure message."""
        while True:
            try:
                line = await process.stderr.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            if text:
                self.tail.append(text)
                self.log(f"[slot {self.spec.index}] {text}")

    def _ended_message(self) -> str:
        code = None if self.process is None else self.process.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (often: out of memory; try fast mode or a smaller region)" if name == "SIGKILL" else ""
            return f"The engine on the server was killed by {name}{hint}."
        errors = [line for line in self.tail if line.startswith(("ERROR", "Traceback"))]
        detail = f": {self.tail[-1]}" if self.tail and not errors else ""
        return f"The engine on the server stopped (exit status {code}){detail}."
