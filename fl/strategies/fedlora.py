"""FedLoRA: clients train LoRA adapters and the classifier head; only those tensors travel.

The base model stays frozen and identical everywhere, so averaging A and B matrices (and the
head) by example count is the whole aggregation, as in the original work.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.strategies.base import Strategy


@dataclass
class FedLoRA(Strategy):
    name: str = "fedlora"
    lora: bool = True
