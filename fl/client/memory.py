"""A process's memory: its peak, and handing freed heap back to the system between phases.

Why trimming: glibc's malloc raises its mmap threshold each time a large block is freed, so after
the first few batches every activation (1-6 MB for MiniLM at batch 16) lives on the brk heap. Freed
there, the pages stay mapped: the client ranks of `bench.peer`'s workload held ~640 MB of heap each
by round 2, most of it free. `malloc_trim(0)` returns every free page (not only the top of the heap)
in a few milliseconds; the next phase faults them back in as it needs them. Forcing a fixed small
threshold instead (MALLOC_MMAP_THRESHOLD_=131072) cut memory as far but made each round 1.5x slower
(every activation a fresh mmap, zeroed). Measurements: bench/reports/startup.md.

Why during training too (`heap_trim_steps`): a training step's activations vary in size with the
batch's width, so the freed blocks of one step fit the next step's only in part and the heap's
resident pages grow over a client's steps (the client ranks of `bench.peer` went from ~540 to ~840
MiB within a round). Trimming every few optimizer steps bounds that (bench.peer's fl tree peak: every
4 steps 2,011 MiB, every 3 1,943, every 2 1,893, with a rank 0 that holds neither model nor data). It is not free:
the next step faults its working set back in (2-3 us a page on the 2-core VM; one client's 500 rows:
0.1 M page faults untrimmed, 0.6 M every 4 steps, 1.0 M every 2, so about +1.3 s and +2.4 s on ~12 s
of training). So it is the default only where several processes share the machine (torchrun on a CPU),
where a rank's retained free pages are memory the others lack (one process reuses them in its next
step), and every 3 steps there: the middle of what bench.peer's memory and round-time targets allow
(bench/reports/startup.md, section 8). On a GPU the activations are not on the CPU heap: nothing is
trimmed there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource

import torch


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, where this process runs on it (None elsewhere: musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name or "libc.so.6")
        return lib if hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc); False where there is no malloc_trim."""
    lib = _libc()
    if lib is None:
        return False
    lib.malloc_trim(0)
    return True


TRIM_EVERY_STEPS = 3  # heap_trim_steps' default where several processes share the machine


def trim_after_step(step: int, device: torch.device, every: int) -> bool:
    """Trim the heap after every `every`-th training step (1-based) on the CPU (0: never); True if it did."""
    if device.type != "cpu" or every <= 0 or step % every:
        return False
    return trim_heap()


def peak_memory(device: torch.device) -> dict[str, float]:
    """This process's peak resident memory (and peak GPU allocation on CUDA), in MiB."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if device.type == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
