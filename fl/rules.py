"""The rules of `fl.config.Config` that join several keys, as a mixin: each names the keys and the fix.

`Config.validate` checks every field by its own kind first (`fl.fields`), then calls these.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from fl.fields import ConfigError, parse_fault, parse_ranks, unknown_key_message


class CrossKeyRules:
    """Cross-key checks over the fields of `Config` (which inherits them)."""

    scheme: str
    task: str
    task_kind: str
    lora_aggregation: str
    lora_ranks: str | None
    lora_r: int
    num_clients: int
    server_optimizer: str
    server_lr: float
    server_betas: str
    aggregation: str
    scaffold: bool
    dp_clip: float | None
    kd_placement: str
    kd_attention_weight: float
    load_in_4bit: bool
    ranks_per_client: int
    batch_size: int
    parallel_clients: int
    precision: str
    parts: list
    callbacks: list

    teacher_ckpt: str | None
    teacher_data_pct: float
    train_file: str | None
    test_file: str | None
    dataset: str | None
    clients_per_round: int | None
    fault_inject: str | None
    run_name: str | None

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Config(lrr=1): a ConfigError that suggests the close keys, not the dataclass's TypeError
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            raise ConfigError(unknown_key_message(unknown[0], known))
        return super().__new__(cls)

    def check_single_keys(self) -> None:
        """The rules that a key's kind cannot say: syntax, a key another one requires, an empty name."""
        self.server_beta_pair()
        if self.fault_inject is not None:
            parse_fault(self.fault_inject)
        if self.scheme == "fedkdlora" and not self.teacher_ckpt:
            raise ConfigError(
                "scheme=fedkdlora needs teacher_ckpt=<folder>; make one with `fl pretrain-teacher <recipe>`"
            )
        if self.scheme == "fedkdlora" and self.teacher_data_pct <= 0:
            raise ConfigError("scheme=fedkdlora needs a public slice: set teacher_data_pct > 0 (e.g. 20)")
        if self.task == "csv" and not (self.train_file and self.test_file):
            raise ConfigError("task=csv needs train_file=<path> and test_file=<path>")
        if self.task == "hf" and not self.dataset:
            raise ConfigError("task=hf needs dataset=<hub name> (and text_column, label_column, test_split)")
        if self.clients_per_round is not None and self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients_per_round={self.clients_per_round} exceeds num_clients={self.num_clients}; "
                "sample at most every client"
            )
        for key in ("model", "teacher_model", "output_dir", "text_column", "label_column"):
            if not str(getattr(self, key)).strip():
                raise ConfigError(f"{key} is empty; give a value (see `fl run --help`)")
        if self.run_name is not None and (
            not re.fullmatch(r"[A-Za-z0-9._-]+", self.run_name) or self.run_name.startswith(".")
        ):
            raise ConfigError(
                f"run_name={self.run_name!r} may hold only letters, digits, '.', '_' and '-', and not start with '.'"
            )

    def check_components(self) -> None:
        """Each component named in the config imports and takes its arguments (it is built later, on
        every rank, in set-up): a bad path or argument stops the run here, naming the key."""
        from fl.components import validate

        for key, kind in (("parts", "fl.strategies.base:Part"), ("callbacks", "fl.callbacks:Callback")):
            for i, spec in enumerate(getattr(self, key)):
                validate(spec, f"{key}[{i}]", kind)
        if isinstance(self.task, dict):
            validate(self.task, "task")

    def check_lora_aggregation(self) -> None:
        mode = self.lora_aggregation
        if mode != "fedit" and self.scheme == "fedavg":
            raise ConfigError(f"lora_aggregation={mode} needs LoRA: use scheme=fedlora or fedkdlora")
        if self.lora_ranks is not None and mode != "flex":
            raise ConfigError("lora_ranks works with lora_aggregation=flex only; set lora_aggregation=flex")
        if mode in ("fedex", "flex"):
            plain = self.server_optimizer == "sgd" and self.server_lr == 1.0 and self.aggregation == "mean"
            if not plain:
                raise ConfigError(
                    f"lora_aggregation={mode} is the exact mean of the clients' updates: use aggregation=mean "
                    "and server_optimizer=sgd server_lr=1, or lora_aggregation=fedit|ffa"
                )
        if mode == "flex" and self.scaffold:
            raise ConfigError("scaffold=true does not combine with lora_aggregation=flex (clients of different ranks)")
        if self.lora_ranks is not None:
            try:
                parse_ranks(self.lora_ranks, self.num_clients, self.lora_r)
            except ValueError as err:
                raise ConfigError(str(err)) from None

    def check_ranks_per_client(self) -> None:
        k = self.ranks_per_client
        if k > 1 and self.batch_size % k:
            raise ConfigError(
                f"batch_size={self.batch_size} does not split over ranks_per_client={k}; each rank takes "
                f"batch_size / k rows: use a multiple of {k}"
            )

    def check_parallel_clients(self) -> None:
        if self.parallel_clients == 1:
            return
        if self.scheme == "fedavg":
            raise ConfigError(
                "parallel_clients>1 stacks the clients' LoRA adapters and heads over one frozen base; FedAvg trains "
                "every weight: use scheme=fedlora, or parallel_clients=1"
            )
        if self.precision == "fp16":
            raise ConfigError("parallel_clients>1 does not take precision=fp16 (its GradScaler); use bf16 or fp32")
        if self.ranks_per_client > 1:
            raise ConfigError("parallel_clients>1 with ranks_per_client>1 is not built; choose one of the two")

    def check_task_kind(self) -> None:
        if self.task_kind == "classify":
            if self.task == "shakespeare":
                raise ConfigError("task=shakespeare is text for a language model; set task_kind=causal_lm")
            if self.load_in_4bit:
                raise ConfigError("load_in_4bit=true is for causal LMs (QLoRA); set task_kind=causal_lm")
            return
        if self.task in ("sst2", "cola"):
            raise ConfigError(
                f"task={self.task} is a classification dataset; task_kind=causal_lm takes task=rotten_tomatoes "
                "(as sentiment instructions), shakespeare, csv or hf"
            )
        if self.load_in_4bit and self.scheme == "fedavg":
            raise ConfigError("load_in_4bit=true freezes the 4-bit base: use scheme=fedlora or fedkdlora (QLoRA)")
        if self.kd_attention_weight > 0:
            raise ConfigError("kd_attention_weight works with classifiers; set it to 0 for task_kind=causal_lm")

    @property
    def public_pct(self) -> float:
        """The share of train that is the server's public slice (the key is named for FedKDLoRA's
        teacher; the slice is kept out of every client whatever uses it)."""
        return self.teacher_data_pct

    @property
    def dp(self) -> bool:
        return self.dp_clip is not None

    def check_privacy(self) -> None:
        if not self.dp:
            for key in ("dp_target_epsilon", "dp_delta"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"{key} needs DP: set dp_clip=<L2 bound> (e.g. 1.0)")
            return
        if self.aggregation != "mean":
            raise ConfigError(
                f"dp_clip with aggregation={self.aggregation}: DP-FedAvg noises a sum; use aggregation=mean"
            )
        if self.scheme == "fedkdlora" and self.kd_placement == "clients":
            raise ConfigError(
                "dp_clip with kd_placement=clients: the clients' logits would leave them unclipped and un-noised; "
                "use kd_placement=server (the teacher then learns from the noised global model and public data)"
            )
        if self.scaffold:
            raise ConfigError("dp_clip with scaffold=true: the control variates would leave the clients un-noised")
        if self.lora_aggregation in ("fedex", "flex"):
            raise ConfigError(f"dp_clip with lora_aggregation={self.lora_aggregation}: its products travel un-noised")

    def server_beta_pair(self) -> tuple[float, float]:
        """server_betas as (beta1, beta2), each in [0, 1)."""
        try:
            b1, b2 = (float(x) for x in self.server_betas.split(","))
        except ValueError:
            raise ConfigError(f"server_betas={self.server_betas!r} must be two numbers, e.g. 0.9,0.99") from None
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ConfigError(f"server_betas={self.server_betas!r}: each beta must be in [0, 1)")
        return b1, b2
