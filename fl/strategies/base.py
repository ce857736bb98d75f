"""The strategy protocol: what is trained, what travels, how it is aggregated.

A strategy knows nothing of collectives: the server moves `State` dicts with `fl.comm` and
hands the strategy sums to turn into the next global state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl import models
from fl.config import Config
from fl.data import TaskData
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

    # ---- server-side hooks (no-ops here; FedKDLoRA fills them) --------------------------------
    kd_on_clients: bool = False  # whether teacher logits travel to clients each round

    def public_rows(self, round_idx: int, public_size: int) -> list[int]:
        """Public rows distilled on this round, as indices into the public slice (none without KD)."""
        return []

    def setup_server(self, task: TaskData, public_size: int, tokenizer: Any, device: torch.device) -> None:
        """Rank 0, once before round 0: load server-side models and data."""

    def teacher_logits(self, rows: list[int]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} sends no teacher logits")

    def server_update(
        self, model: nn.Module, round_idx: int, rows: list[int], ensemble: torch.Tensor | None
    ) -> dict[str, float]:
        """Rank 0, after aggregation: server-side training on the new global model; returns metrics."""
        return {}

    def evaluate_extra(self) -> dict[str, float]:
        """Rank 0: metrics beyond the global model's (e.g. the teacher's), merged into the record."""
        return {}

    def save_extras(self, run_dir: Path, model: nn.Module, tokenizer: Any) -> None:
        """Rank 0, before the global model is exported: anything else worth keeping."""

    def server_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Rank 0: server-side state to checkpoint, as (tensors, JSON-able extras)."""
        return {}, {}

    def load_server_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Rank 0: restore what server_state returned (after setup_server)."""
