"""FedAvg (McMahan et al. 2017): clients fine-tune every weight; the server averages them."""

from __future__ import annotations

from dataclasses import dataclass

from fl.strategies.base import Strategy


@dataclass
class FedAvg(Strategy):
    name: str = "fedavg"
    lora: bool = False
