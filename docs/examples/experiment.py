"""The three worked examples in one Python script: Krum, FedProx as a loss term, a callback that
stops at a target. The same script runs alone (one process) and under torchrun (every rank runs
it; rank 0 aggregates and prints).

    python docs/examples/experiment.py [key=value ...]
    torchrun --nproc_per_node=3 docs/examples/experiment.py [key=value ...]
"""

from __future__ import annotations

import json
import os
import sys

from fedprox import FedProx  # this script's folder is on sys.path when Python runs it
from krum import Krum
from target import StopAtTarget

import fl


def main(argv: list[str]) -> None:
    overrides = dict(arg.split("=", 1) for arg in argv)
    cfg = fl.load_config("recipes/fedlora.yaml", **{"num_clients": 5, "rounds": 3, **overrides})
    result = fl.run(cfg, parts=[Krum(f=1), FedProx(mu=0.01)], callbacks=[StopAtTarget("test_accuracy", 0.99)])
    if os.environ.get("RANK", "0") == "0":
        last = result.records[-1]
        print(json.dumps({"round": last["round"], "test_accuracy": last["test_accuracy"], "status": result.status}))


if __name__ == "__main__":
    main(sys.argv[1:])
