"""The `local` section of the config. Local training on a client: epochs and steps, batches, AdamW and
its schedule, precision, and how a rank trains its clients (K at once, or one client over k ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.config.fields import BIG
from fl.config.fields import config_field as _f
from fl.errors import ConfigError

SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass
class LocalSection:
    """Local training on a client: epochs and steps, batches, AdamW and its schedule, precision, and
    how a rank trains its clients (K at once, or one client over k ranks).
    """

    SECTION = "local"

    local_epochs: int = _f(1, "epochs each client trains per round", lo=1, hi=10_000)
    max_local_steps: int | None = _f(
        None,
        "at most this many optimizer steps per client and round (unset: local_epochs over the shard)",
        lo=1,
        hi=BIG,
    )
    batch_size: int = _f(16, "training batch size", lo=1, hi=1_000_000)
    group_by_length: bool = _f(
        False,
        "training batches of rows of similar length (shuffled, sorted within windows "
        "of 50 batches, batches shuffled): less padding; false: a plain shuffle",
    )
    lr: float = _f(2e-3, "AdamW learning rate on the clients", lo=0, hi=10, open_lo=True)
    head_lr: float | None = _f(None, "learning rate of the classification head; unset: lr", lo=0, hi=10, open_lo=True)
    weight_decay: float = _f(0.0, "AdamW weight decay", lo=0, hi=10)
    lr_scheduler: str = _f("constant", "schedule over a client's local steps (transformers' get_scheduler)", SCHEDULERS)
    warmup_ratio: float = _f(0.0, "share of a client's local steps spent warming up", lo=0, hi=1)
    warmup_steps: int = _f(0, "warm-up steps per client and round (overrides warmup_ratio when > 0)", lo=0, hi=BIG)
    round_lr_decay: float = _f(
        1.0, "the client learning rate of round r is lr * round_lr_decay^(r-1)", lo=0, hi=1, open_lo=True
    )
    precision: str = _f(
        "fp32",
        "local training: fp32, or autocast to bf16 / fp16 (fp16 with a GradScaler); auto: bf16 where the device "
        "computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32",
        PRECISIONS,
    )
    parallel_clients: int = _f(
        1,
        "train up to K of a rank's clients of a round in one forward pass (LoRA: their adapters and heads "
        "stacked, the frozen base shared); 1: one after another",
        lo=1,
        hi=4096,
    )
    ranks_per_client: int = _f(
        1,
        "ranks that train each client together (DistributedDataParallel inside the client; torchrun with "
        "1 + N*k processes); each takes batch_size / k rows of every batch",
        lo=1,
        hi=4096,
    )

    def check(self) -> None:
        """The rules of this section that one key's kind cannot say."""
        k = self.ranks_per_client
        if k > 1 and self.batch_size % k:
            raise ConfigError(
                f"batch_size={self.batch_size} does not split over ranks_per_client={k}; each rank takes "
                f"batch_size / k rows: use a multiple of {k}"
            )
        if self.parallel_clients == 1:
            return
        if self.scheme == "fedavg":
            raise ConfigError(
                "parallel_clients>1 stacks the clients' LoRA adapters and heads over one frozen base; FedAvg trains "
                "every weight: use scheme=fedlora, or parallel_clients=1"
            )
        if self.precision == "fp16":
            raise ConfigError("parallel_clients>1 does not take precision=fp16 (its GradScaler); use bf16 or fp32")
        if k > 1:
            raise ConfigError("parallel_clients>1 with ranks_per_client>1 is not built; choose one of the two")
