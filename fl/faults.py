"""Fault injection, for tests only (`fault_inject`): a client that sends NaN, a rank that dies.

    fault_inject=nan:client=C:round=R     client C's update is NaN in round R (R may be '*': every round)
    fault_inject=exit:rank=K:round=R      rank K exits (code 17) at the start of round R (0: in set-up)

Set-up calls `in_setup`, the round `at_round_start`; the client runner asks `poisons`. Nothing else
knows of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fl.config.fields import parse_fault


@dataclass(frozen=True)
class Faults:
    kind: str | None = None  # nan | exit
    target: str | None = None  # client | rank
    index: int = -1
    when: int | None = None  # a round, or None for every round

    @classmethod
    def parse(cls, spec: str | None) -> Faults:
        if not spec:
            return cls()
        kind, target, index, when = parse_fault(spec)
        return cls(kind, target, index, when)

    def hits(self, target: str, who: int, round_idx: int) -> bool:
        return self.target == target and self.index == who and self.when in (None, round_idx)

    def at_round_start(self, rank: int, round_idx: int) -> None:
        """This process dies mid-run, as a crashed rank would."""
        if self.hits("rank", rank, round_idx):
            os._exit(17)

    def in_setup(self, rank: int) -> None:
        """This process dies while building its part (round=0 only, not '*'), as a rank that fails to load would."""
        if self.target == "rank" and self.index == rank and self.when == 0:
            os._exit(17)

    def poisons(self, client: int, round_idx: int) -> bool:
        """Whether this client sends garbage (NaN) this round."""
        return self.hits("client", client, round_idx)
