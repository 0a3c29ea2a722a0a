"""The glibc tuning around CPU forward passes: freed blocks are reused instead of faulted in again."""

from __future__ import annotations

import resource

import numpy as np
import pytest
from totalseg_engine.inference import allocator

needs_glibc = pytest.mark.skipif(allocator._glibc() is None, reason="needs glibc's mallopt")


def faults_of_second_allocation(mib: int = 64) -> int:
    """Minor page faults taken by writing a block allocated right after an equal one was freed."""
    first = np.ones(mib << 18, dtype=np.float32)
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = np.ones(mib << 18, dtype=np.float32)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    del second
    return faults


@needs_glibc
def test_freed_blocks_are_reused_inside_and_returned_after():
    fresh = (64 << 20) // (2 << 20)  # at least one fault per 2 MiB (NumPy asks for huge pages)
    assert faults_of_second_allocation() >= fresh  # glibc's default: a fresh mapping every time
    with allocator.reuse_freed_memory():
        faults_of_second_allocation()  # grows the heap once
        assert faults_of_second_allocation() <= 2
        with allocator.reuse_freed_memory():  # a nested use (a prediction inside a whole run)
            assert faults_of_second_allocation() <= 2
        assert faults_of_second_allocation() <= 2  # the outer one still holds
    assert faults_of_second_allocation() >= fresh  # the defaults are back


@needs_glibc
def test_blocks_over_the_limit_are_returned_when_freed_even_inside():
    """The largest blocks (a window's 118-class output) would leave holes in the heap that grow the peak."""
    mib = 118 * 128**3 * 4 >> 20  # the logits of one 128³ window of the 118-class CT network
    with allocator.reuse_freed_memory():
        assert faults_of_second_allocation(mib) >= (mib << 20) // (2 << 20)  # a fresh mapping each time
        faults_of_second_allocation()
        assert faults_of_second_allocation() <= 2  # smaller blocks are still reused


def test_without_glibc_the_context_does_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    with allocator.reuse_freed_memory():
        assert np.ones(1000).sum() == 1000
