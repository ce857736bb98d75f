"""The strategy protocol: what is trained, what travels, how it is aggregated.

A strategy knows nothing of collectives: the server moves `State` dicts with `fl.comm` and
hands the strategy sums to turn into the next global state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from fl import models
from fl.config import Config
from fl.strategies.aggregate import State, finalize


@dataclass
class Strategy:
    """Base: full-model training with example-weighted averaging (FedAvg)."""

    cfg: Config
    name: str = "base"
    lora: bool = False  # train LoRA adapters (+ head) instead of every weight

    def build_model(self, num_labels: int) -> tuple[nn.Module, Any, str]:
        """(model, tokenizer, resolved model path) with exactly the trainable tensors of the scheme."""
        return models.build_model(self.cfg, num_labels, lora=self.lora)

    def configure_round(self, round_idx: int) -> dict[str, Any]:
        """Per-round settings sent to clients (constant lr here; a schedule would live here)."""
        return {"round": round_idx, "lr": self.cfg.lr, "local_epochs": self.cfg.local_epochs}

    def aggregate(self, weighted_sum: State, total_examples: float, previous: State) -> State:
        """Next global state from sum_i n_i * theta_i and sum_i n_i (FedAvg's mean)."""
        return finalize(weighted_sum, total_examples)
