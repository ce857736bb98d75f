"""The `runtime` section of the config. Where and how a run computes: devices, backends, threads,
buckets, timeouts, the heap; none of it changes what a run computes beyond float rounding, so a
resume may change it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.config.fields import BIG, parse_fault
from fl.config.fields import config_field as _f

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RuntimeSection:
    """Where and how a run computes: devices, backends, threads, buckets, timeouts, the heap; none of
    it changes what a run computes beyond float rounding, so a resume may change it.
    """

    SECTION = "runtime"

    device: str = _f(
        "auto", "auto: CUDA when available, else CPU (the layout is printed at start)", DEVICES, effect="runtime"
    )
    server_device: str = _f(
        "auto", "auto: rank 0 computes on a GPU when there is one; cpu: on the CPU", ("auto", "cpu"), effect="runtime"
    )
    client_allreduce: str = _f(
        "auto",
        "auto: client ranks that own GPUs sum over NCCL among themselves and rank 1 relays to rank 0; "
        "true: that relay on any backend; false: never",
        ("auto", "true", "false"),
        effect="runtime",
    )
    num_threads: int | None = _f(
        None,
        "torch CPU threads per process; unset: cores / busy ranks",
        lo=1,
        hi=1024,
        effect="runtime",
        compared=False,
    )
    eval_batch_size: int = _f(128, "evaluation batch size", lo=1, hi=1_000_000, effect="runtime")
    heap_trim_steps: int | None = _f(
        None,
        "CPU: malloc_trim every N local steps (0: between clients only); "
        "unset: 3 under torchrun, 0 in one process (fl.client.memory)",
        lo=0,
        hi=BIG,
        effect="runtime",
    )
    bucket_mb: float = _f(
        25.0,
        "collectives move messages in buckets of at most this many MB (extra memory: one bucket); 0: whole",
        lo=0,
        hi=1e6,
        effect="runtime",
    )
    collective_timeout_s: float = _f(
        1800.0,
        "seconds a collective may wait for a silent rank before failing",
        lo=1,
        hi=30 * 86400,
        effect="runtime",
        compared=False,
    )
    fault_inject: str | None = _f(
        None,
        "TEST ONLY: 'nan:client=C:round=R' sends NaN from client C; 'exit:rank=K:round=R' kills rank K "
        "(R may be '*' for every round)",
        effect="runtime",
        compared=False,
    )

    def check(self) -> None:
        """The rules of this section that one key's kind cannot say."""
        if self.fault_inject is not None:
            parse_fault(self.fault_inject)
