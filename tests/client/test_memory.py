"""fl.client.memory: freed heap pages go back to the system; peak memory is reported."""

from __future__ import annotations

import ctypes
import sys

import pytest
import torch

from fl.client.memory import _libc, peak_memory, trim_heap


def anon_mib() -> float:
    """This process's private anonymous memory (Linux: smaps_rollup)."""
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Pss_Anon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Pss_Anon line")


@pytest.mark.skipif(not sys.platform.startswith("linux") or _libc() is None, reason="glibc only")
def test_trim_heap_returns_freed_pages_below_the_top_of_the_heap():
    libc = _libc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(100_000) for _ in range(400)]  # 40 MB of heap blocks (below the mmap threshold)
    for b in blocks:
        ctypes.memset(b, 1, 100_000)  # touched: resident
    for b in blocks[:-1]:  # the last block pins the top, so free() alone cannot shrink the heap
        libc.free(b)
    before = anon_mib()
    assert trim_heap() is True
    after = anon_mib()
    libc.free(blocks[-1])
    assert before - after > 25, (before, after)


def test_peak_memory_names_rss_and_gpu_only_on_cuda():
    got = peak_memory(torch.device("cpu"))
    assert set(got) == {"peak_rss_mib"} and got["peak_rss_mib"] > 10


def test_trim_after_step_only_every_n_steps_and_only_on_the_cpu(monkeypatch):
    import fl.client.memory

    calls: list[int] = []
    monkeypatch.setattr(fl.client.memory, "trim_heap", lambda: calls.append(1) or True)
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a device object only: nothing runs on it
    assert [fl.client.memory.trim_after_step(s, cpu, 3) for s in range(1, 7)] == [False, False, True] * 2
    assert fl.client.memory.trim_after_step(3, gpu, 3) is False
    assert not any(fl.client.memory.trim_after_step(s, cpu, 0) for s in range(1, 7))  # 0: never inside training
    assert len(calls) == 2


def test_heap_trims_default_on_only_where_processes_share_the_machine():
    from fl.client.memory import TRIM_EVERY_STEPS
    from fl.client.train import LocalSchedule
    from fl.config import Config

    assert LocalSchedule.from_config(Config(), processes=1).heap_trim_steps == 0
    assert LocalSchedule.from_config(Config(), processes=3).heap_trim_steps == TRIM_EVERY_STEPS
    assert LocalSchedule.from_config(Config(heap_trim_steps=2), processes=1).heap_trim_steps == 2
    assert LocalSchedule.from_config(Config(heap_trim_steps=0), processes=3).heap_trim_steps == 0
