"""The FedLoRA reference workload written for Flower (Message API, simulation engine on Ray): the peer
that `bench.peer` measures fl against. Only bench/ imports Flower; fl/ never does.

Written the way Flower recommends for speed: one CPU per client (Ray runs as many clients at once
as there are cores), the model loaded once per Ray actor and reused across rounds, only the LoRA
and head tensors in the messages, the global model scored on the server (`evaluate_fn`) with no
client-side evaluation round. Client training and scoring are `bench.plain`'s, the same arithmetic
as the plain-loop baseline.

Run by bench.peer in its own process, so that its time and memory are measured alone:
    python -c "from bench.flower_app import main; main()" SPEC.json RESULT.json
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from bench import plain

_ACTOR: dict[str, Any] = {}  # per Ray actor process: (model, tokenizer), loaded on first use


def _actor_model(spec: dict[str, Any]) -> tuple[Any, Any]:
    if "model" not in _ACTOR:
        torch.set_num_threads(1)  # one CPU per client
        _ACTOR["model"] = plain.load_model(spec["model_path"], lora=True, seed=spec["seed"])
    return _ACTOR["model"]


def client_app(spec: dict[str, Any]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cid = int(context.node_config["partition-id"])
        model, tok = _actor_model(spec)
        plain.set_state(model, msg.content["arrays"].to_torch_state_dict())
        shard = [tuple(row) for row in spec["shards"][cid]]
        seed = plain.order_seed(spec["seed"], int(msg.content["config"]["server-round"]), cid)
        loss = plain.train_client(model, tok, shard, lr=spec["lr"], seed=seed)
        content = RecordDict(
            {
                "arrays": ArrayRecord(plain.get_state(model)),
                "metrics": MetricRecord({"train_loss": loss, "num-examples": len(shard)}),
            }
        )
        return Message(content=content, reply_to=msg)

    return app


def server_app(spec: dict[str, Any], log: list[dict[str, float]]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        model, tok = plain.load_model(spec["model_path"], lora=True, seed=spec["seed"])
        test = [tuple(row) for row in spec["test"]]

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            # called before round 1 and after each round: the time between two calls is one round
            t0 = time.perf_counter()
            plain.set_state(model, arrays.to_torch_state_dict())
            m = plain.score(model, tok, test)
            done = time.perf_counter()
            log.append({"round": server_round, "end": done, "time_eval_s": done - t0, **m})
            return MetricRecord(m)

        n = len(spec["shards"])
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(plain.get_state(model)),
            num_rounds=spec["rounds"],
            evaluate_fn=evaluate_fn,
        )

    return app


def main(argv: list[str] | None = None) -> None:
    spec_path, out_path = argv or sys.argv[1:3]
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logging.getLogger("flwr").setLevel(logging.WARNING)
    log: list[dict[str, float]] = []
    t0 = time.perf_counter()
    run_simulation(
        server_app=server_app(spec, log),
        client_app=client_app(spec),
        num_supernodes=len(spec["shards"]),
        backend_config={
            "client_resources": {"num_cpus": spec["cpus_per_client"], "num_gpus": 0.0},
            "init_args": {"num_cpus": spec["cores"]},
        },
    )
    rounds = [
        {"round": rec["round"], "time_s": rec["end"] - prev["end"] if prev else 0.0, **rec}
        for prev, rec in zip([None, *log[:-1]], log, strict=True)
    ]
    if len(rounds) != spec["rounds"] + 1:
        raise SystemExit(f"Flower finished {len(rounds) - 1} of {spec['rounds']} rounds; see its log above")
    Path(out_path).write_text(json.dumps({"rounds": rounds, "inner_s": time.perf_counter() - t0}, indent=1))
