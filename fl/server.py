"""One federated experiment as a recipe that reads top to bottom.

    set up -> start (send the global state down, score round 0)
    for each round: plan -> the runner trains the sampled clients -> collect their updates on rank 0
                    -> the strategy's server step -> send the new global state down -> evaluate
                    -> checkpoint
    -> finish (the final model, results)

Under torchrun rank 0 aggregates and ranks 1..N train; without a launcher (world size 1) the one
process plays every part: the simulation, with the same seeds and arithmetic. Training is the
runner's (`fl.client.runners`), algorithms the strategy's parts' (`fl.strategies`), rows and metrics the
task's (`fl.tasks`), collectives `fl.comm`'s. Rank 0 waits in a barrier before each collective that
follows client work, so the record tells waiting (training, scoring) from communication.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fl import comm, models
from fl.client.memory import peak_memory, trim_heap
from fl.comm.message import Message
from fl.comm.transport import Uplink, send_down
from fl.config import Config
from fl.output.callbacks import CallbackList
from fl.output.checkpoint import pack_state, save_checkpoint
from fl.output.report import Reporter, begin_run, rank_timings
from fl.output.rundir import save_pretrained_atomic
from fl.setup import Setup
from fl.strategies import RoundPlan, round_stats


class Federation:
    """The round loop of one run; every rank builds one, rank 0 records."""

    def __init__(self, cfg: Config, s: Setup, first_round: int, records: list[dict], callbacks: CallbackList):
        """`callbacks`: rank 0's (empty elsewhere; `callbacks.stops` is the same on every rank)."""
        self.cfg, self.s, self.rt, self.strategy, self.task = cfg, s, s.rt, s.strategy, s.task
        self.first_round, self.records, self.callbacks = first_round, records, callbacks
        self.reporter = Reporter(cfg.run_dir / "results.json", enabled=s.rt.is_main, columns=s.task.columns)
        self.global_state = models.snapshot(models.get_trainable_state(s.model))
        self.progress: dict[str, Any] = {"round": first_round, "checkpoint": s.resumed_from}
        # the checkpoints this run may prune: those it writes, and the one it resumed from in this run folder
        resumed = Path(s.resumed_from) if s.resumed_from else None
        self.written = [resumed] if resumed and resumed.parent == cfg.run_dir / "checkpoints" else []

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        begin_run(self.reporter, self.cfg, self.s, Message({"global": self.global_state}).nbytes, self.first_round)
        self.reporter.doc["rounds"] = self.records
        self.start()
        for r in range(self.first_round, self.cfg.rounds + 1):
            plan = self.strategy.plan_round(r)
            if plan.stop is not None:  # a part's reason (DP's budget): stop before the round
                self.stop_early(r - 1, plan.stop, f"stopping before round {r}")
                break
            record = self.play_round(plan)
            if self.callback_stop(record):
                break
        return self.finish()

    def play_round(self, plan: RoundPlan) -> dict[str, Any]:
        """One round, as the module docstring draws it; returns its record (rank 0's)."""
        r = self.progress["round"] = plan.round
        self.s.faults.at_round_start(self.rt.rank, r)  # test-only: this process may die here
        t0 = time.perf_counter()
        self.callbacks.round_begin(r)
        template = self.strategy.upload_template(self.global_state, plan)
        upload, train_s = self.train_clients(plan, template)
        wait_s = comm.barrier(self.rt)  # rank 0 waits here while the client ranks train
        sums, individual, up = self.collect(upload)
        record: dict[str, Any] = {"round": r}
        aggregate_s = self.server_step(plan, sums, individual, record)
        down = self.send_down(r + 1, record)
        record.update(
            round_stats(sums, plan, private=self.strategy.aggregator.private),
            **self.strategy.byte_counts(plan, self.global_state, self.rt.client_ranks),
            wire_bytes_up=up["bytes"],
            wire_bytes_down=down["bytes"],
            time_aggregate_s=aggregate_s,
            time_comm_s=up["s"] + down["s"],
            lr=plan.lr,
        )
        self.evaluate(record, train_s, wait_s, t0)
        self.checkpoint(r)
        return record

    def callback_stop(self, record: dict[str, Any]) -> bool:
        """Rank 0's callbacks end the round; a stop they ask for reaches every rank (one broadcast, made
        only when the run has callbacks) and ends the run cleanly after this round."""
        reason = self.callbacks.round_end(record) if self.rt.is_main else None
        reason = comm.broadcast_object(self.rt, reason) if self.callbacks.stops else None  # type: ignore[assignment]
        if reason is not None and record["round"] < self.cfg.rounds:  # after the last round it changes nothing
            self.stop_early(record["round"], str(reason), "stopping")
        return reason is not None

    def stop_early(self, last: int, reason: str, what: str) -> None:
        """Stop cleanly: the last finished round checkpointed, the model exported. Every rank alike."""
        self.reporter.log(f"{what}: {reason}")
        self.reporter.doc["stopped_early"] = reason
        if last >= 1:
            self.checkpoint(last, force=True)

    # ---- steps ------------------------------------------------------------------------------
    def start(self) -> None:
        """Send the global state down (and, on resume, every client's own state); score round 0."""
        t0 = time.perf_counter()
        self.callbacks.begin(self.reporter.doc["rounds"], self.first_round)
        down = self.send_down(self.first_round, {})
        if self.s.resumed_from:
            self.scatter_client_state()
        if self.first_round == 1:
            initial = {"round": 0, "train_loss": None, "bytes_up": 0, "bytes_down": 0, "wire_bytes_up": 0}
            self.evaluate({**initial, "wire_bytes_down": down["bytes"], "time_comm_s": down["s"]}, 0.0, 0.0, None)
        self.s.timings["start_s"] = time.perf_counter() - t0
        self.reporter.start(self.cfg.rounds - self.first_round + 1)

    def train_clients(self, plan: RoundPlan, template: Message) -> tuple[Uplink, float]:
        """This rank's sampled clients, trained by the runner; their messages into this rank's upload.
        `template`: zeros with every name the round's upload carries."""
        t0 = time.perf_counter()
        self.reporter.round_started(plan.round, self.s.runner.examples(plan))
        upload = Uplink(self.strategy, template, plan)
        for u in self.s.runner.train(plan, self.global_state, self.reporter.step):
            upload.add(u.client, self.strategy.client_message(template, u, plan))
            trim_heap()  # the client's activations are freed: their pages go back before the next one
        return upload, time.perf_counter() - t0

    def collect(self, upload: Uplink) -> tuple[Message, dict[int, Message] | None, dict[str, float]]:
        """The clients' updates on rank 0 (summed, gathered or decoded, as `fl.comm.transport` moves them)."""
        t0 = time.perf_counter()
        sums, individual, moved = upload.collect(self.rt, self.s.placement.owners())
        return sums, individual, {"bytes": moved, "s": time.perf_counter() - t0}

    def server_step(
        self, plan: RoundPlan, sums: Message, individual: dict[int, Message] | None, record: dict[str, Any]
    ) -> float:
        """Rank 0: the strategy's server step into the next global state; returns the aggregation's
        time (the parts that train on the server, e.g. KD, report their own time keys)."""
        if not self.rt.is_main:
            return 0.0
        t0 = time.perf_counter()
        if self.strategy.has_update(sums):
            self.global_state, extra = self.strategy.server_step(self.global_state, sums, individual, plan, self.load)
            record.update(extra)
        else:
            self.reporter.log(f"round {plan.round}: every client update was rejected; the global model stays as it was")
        self.load(self.global_state)
        parts_s = sum(v for k, v in record.items() if k.startswith("time_"))
        return time.perf_counter() - t0 - parts_s

    def load(self, state: dict) -> None:
        """A global state into this rank's model, with what the parts keep of it (FedEx's base weights)."""
        models.set_trainable_state(self.s.model, state)
        self.strategy.load_into(self.s.model)

    def send_down(self, next_round: int, record: dict[str, Any]) -> dict[str, float]:
        """Rank 0 sends the global state and what the parts send with it; every rank loads it, to score
        now and to train from next."""
        self.global_state, moved, seconds = send_down(self.rt, self.strategy, self.global_state, next_round, record)
        self.load(self.global_state)
        return {"bytes": moved, "s": seconds}

    def evaluate(self, record: dict[str, Any], train_s: float, wait_s: float, t0: float | None) -> None:
        """Every rank scores its test rows into the task's metric sums; one reduce brings them and each
        client rank's timings to rank 0, which computes the metrics and writes the round's record."""
        t_eval, s = time.perf_counter(), self.s
        if s.test is not None:
            sums = self.task.eval_sums(s.model, s.test, self.cfg.eval_batch_size, self.rt.device)
        else:
            sums = self.task.eval_template(self.rt.device)
        sums = s.benchmarks.add_sums(sums, s.model, s.tokenizer, self.rt.device)  # eval_benchmarks: counts join
        trim_heap()
        score_s = time.perf_counter() - t_eval
        extra = self.strategy.evaluate()  # e.g. the KD teacher's metrics, on rank 0
        mine = {"train_s": train_s, "score_s": score_s, "examples": float(self.s.runner.trained)}
        timings = {f"rank{k}.{n}": 0.0 for k in range(self.rt.world_size) for n in mine}
        timings.update({f"rank{self.rt.rank}.{n}": v for n, v in mine.items()})
        comm.barrier(self.rt)
        t_reduce = time.perf_counter()
        got, moved = comm.reduce_sum(self.rt, Message(sums.parts, {**sums.scalars, **timings}), everyone=True)
        if not self.rt.is_main:
            return
        metrics = {**self.task.metrics(got), **s.benchmarks.metrics(got.scalars)}
        record.update({f"test_{k}": v for k, v in metrics.items()}, **extra)
        ranks = range(1, self.rt.world_size) if self.rt.distributed else range(1)
        record.update(rank_timings(got.scalars, ranks, t0 is not None, wait_s), bytes_eval=moved)
        record.update(
            time_eval_s=t_reduce - t_eval, time_comm_s=record.get("time_comm_s", 0.0) + time.perf_counter() - t_reduce
        )
        record["time_s"] = time.perf_counter() - t0 if t0 is not None else 0.0
        record.update(self.callbacks.evaluate(record))
        self.reporter.record(record)
        self.callbacks.log(record)

    def checkpoint(self, r: int, force: bool = False) -> None:
        """Every piece of state that the next round needs, when one is due (rank 0 writes)."""
        cfg = self.cfg
        due = cfg.checkpoint_every and (r % cfg.checkpoint_every == 0 or r == cfg.rounds)
        if not (due or force) or (force and self.progress.get("checkpointed") == r):
            return
        self.progress["checkpointed"] = r
        clients = self.gather_client_state()
        if not self.rt.is_main:
            return
        server, extra = self.strategy.state()
        tensors = pack_state(self.global_state, server, {c: msg.parts for c, msg in clients.items()})
        names = [p.name for p in self.strategy.parts]
        meta = {"config": cfg.to_dict(), "records": self.reporter.doc["rounds"], "parts": extra, "part_names": names}
        path = save_checkpoint(cfg.run_dir, r, tensors, meta, cfg.keep_checkpoints, self.written)
        self.progress["checkpoint"] = str(path)

    def gather_client_state(self) -> dict[int, Message]:
        """Every client's own state (SCAFFOLD's c_i, ...), from its rank to rank 0; {} when no part keeps one."""
        like = self.strategy.client_state_like(self.global_state)
        if like is None:
            return {}
        mine = {c: self.strategy.client_state(c, like) for c in self.s.runner.clients}
        got, _ = comm.gather_messages(self.rt, mine, like, self.s.placement.owners())
        return got

    def scatter_client_state(self) -> None:
        """On resume: rank 0 sends every client's restored state; each rank keeps its own clients'."""
        like = self.strategy.client_state_like(self.global_state)
        if like is None:
            return
        states = {c: self.strategy.client_state(c, like) for c in range(self.cfg.num_clients)}
        parts = {f"client{c}.{p}": t for c, m in states.items() for p, t in m.parts.items()}
        msg, _ = comm.broadcast(self.rt, Message(parts))
        for c in self.s.runner.clients:
            self.strategy.load_client_state(c, Message({p: msg.parts[f"client{c}.{p}"] for p in like.parts}))

    def finish(self) -> dict[str, Any] | None:
        """Per-rank memory, the final model (rank 0), the completed results document."""
        self.reporter.stop()
        got = comm.gather_object(self.rt, (peak_memory(self.rt.device), self.s.timings))
        if not self.rt.is_main:
            return None
        self.reporter.doc["peak_memory_per_rank"] = [m for m, _ in got]  # type: ignore[union-attr]
        self.reporter.doc["startup_per_rank"] = [t for _, t in got]  # type: ignore[union-attr]
        if self.cfg.save_model:
            model, tokenizer = self.s.final_model(self.global_state)
            model, name = self.strategy.export(self.cfg.run_dir, model, tokenizer, models.default_export_name(model))
            path = save_pretrained_atomic(model, tokenizer, self.cfg.run_dir / name)
            self.reporter.doc["model_saved"] = str(path)
            self.reporter.log(f"final global model saved to {path}")
        return self.reporter.doc
