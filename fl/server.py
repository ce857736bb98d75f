"""One federated experiment as a recipe that reads top to bottom.

    set up -> start (send the global state down, score round 0)
    for each round: plan -> train the sampled clients -> collect their updates on rank 0
                    -> aggregate -> send the new global state down -> evaluate -> checkpoint
    -> finish (export, results)

Under torchrun rank 0 aggregates and ranks 1..N train; without a launcher (world size 1) the one
process plays every part: the simulation path, with the same seeds and the same arithmetic.
Every collective is a call into `fl.comm`, which delivers on this rank's device and says how many
bytes it moved. Before each collective that follows work on the client ranks, rank 0 waits in a
barrier, so the record tells waiting (training, scoring) from communication.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch

from fl import comm, models, privacy
from fl.checkpoint import save_checkpoint
from fl.client import KDTargets, LocalSchedule, client_seed, metrics_from_logits, predict, train_local
from fl.config import Config, parse_fault
from fl.data import encode
from fl.message import Message
from fl.report import (
    Reporter,
    environment,
    peak_memory,
    save_pretrained_atomic,
)
from fl.setup import Setup, eval_rows, owners, snapshot
from fl.strategies import ClientUpdate, RoundPlan, round_stats, update_problem
from fl.tracking import open_tracker


def fault_hits(spec: str | None, kind: str, who: int, round_idx: int) -> bool:
    """Test-only fault switch (`fault_inject`): does it fire for this client/rank and round?"""
    if not spec:
        return False
    _, target, index, when = parse_fault(spec)
    return target == kind and index == who and when in (None, round_idx)


class Federation:
    """The round loop of one run; every rank builds one, rank 0 records."""

    def __init__(self, cfg: Config, s: Setup, first_round: int, records: list[dict]):
        self.cfg, self.s, self.rt, self.strategy = cfg, s, s.rt, s.strategy
        self.first_round = first_round
        self.reporter = Reporter(cfg.run_dir / "results.json", enabled=s.rt.is_main)
        # tokenized once per split (Dataset.map caches it across runs), then selected by row
        needs_train = bool(s.my_clients)
        train = encode(s.tokenizer, s.task.train, cfg.max_length) if needs_train else None
        self.encoded = {c: train.subset(s.shards[c]) for c in s.my_clients} if train else {}
        self.my_test_rows = eval_rows(s.rt.rank, s.rt.world_size, len(s.task.test))
        test = encode(s.tokenizer, s.task.test, cfg.max_length) if self.my_test_rows else None
        self.my_test = test.subset(self.my_test_rows) if test else None
        kd_public = s.strategy.kd_on_clients and train is not None  # public data: client ranks tokenize it
        self.public = train.subset(range(s.public_size)) if kd_public else None
        self.global_state = snapshot(models.get_trainable_state(s.model))
        self.teacher_logits: torch.Tensor | None = None
        self.owners = owners(cfg.num_clients, s.rt.world_size)
        self.progress: dict[str, Any] = {"round": first_round, "checkpoint": s.resumed_from}
        # the checkpoints this run may prune: those it writes, and the one it resumed from in this run folder
        resumed = Path(s.resumed_from) if s.resumed_from else None
        self.written = [resumed] if resumed and resumed.parent == cfg.run_dir / "checkpoints" else []
        self.records = records
        self.local_schedule = LocalSchedule(
            cfg.lr, cfg.local_epochs, cfg.batch_size, cfg.weight_decay, cfg.lr_scheduler,
            cfg.warmup_steps, cfg.warmup_ratio, cfg.head_lr, cfg.precision,
        )  # fmt: skip

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        self.begin_report()
        self.start()
        for r in range(self.first_round, self.cfg.rounds + 1):
            self.progress["round"] = r
            if self.over_budget(r):
                break
            self.play_round(r)
        return self.finish()

    def over_budget(self, r: int) -> bool:
        """DP: would round r spend more than dp_target_epsilon? Then stop here, cleanly: the last
        finished round is checkpointed and the model exported. Every rank decides alike."""
        dp = self.strategy.dp
        if dp is None or dp.target_epsilon is None:
            return False
        eps = privacy.Accountant(dp.noise_multiplier, dp.rate).epsilon(dp.delta, r)
        if eps <= dp.target_epsilon:
            return False
        reason = f"round {r} would spend epsilon {eps:.3f} > dp_target_epsilon={dp.target_epsilon}"
        self.reporter.log(f"stopping before round {r}: {reason}")
        self.reporter.doc["stopped_early"] = reason
        if r > 1:
            self.checkpoint(r - 1, force=True)
        return True

    def play_round(self, r: int) -> None:
        """One round, as the module docstring draws it."""
        if fault_hits(self.cfg.fault_inject, "rank", self.rt.rank, r):  # test-only: this process dies mid-run
            os._exit(17)
        t0 = time.perf_counter()
        plan = self.strategy.plan_round(r, self.s.public_size)
        template = self.strategy.upload_template(self.global_state, plan, self.s.task.num_labels)
        upload, train_s = self.train_clients(plan, template)
        wait_s = self.wait_for_clients()
        sums, individual, up = self.collect(plan, template, upload)
        timing = self.aggregate(plan, sums, individual)
        down = self.send_down(r + 1)
        record = {
            "round": r,
            **round_stats(sums, plan, private=self.strategy.dp is not None),
            **self.byte_counts(plan, up["bytes"], down["bytes"]),
            **timing,
            "time_comm_s": up["s"] + down["s"],
            "lr": plan.lr,
        }
        record["time_server_kd_s"] = record.get("time_server_kd_s", 0.0) + down["teacher_s"]
        self.evaluate(record, train_s, wait_s, t0)
        self.checkpoint(r)

    # ---- steps ------------------------------------------------------------------------------
    def start(self) -> None:
        """Send the global state (and SCAFFOLD's client controls on resume) down; score round 0."""
        down = self.send_down(self.first_round)
        if self.strategy.scaffold and self.s.resumed_from:
            self.scatter_client_controls()
        if self.first_round == 1:
            initial = {"round": 0, "train_loss": None, "bytes_up": 0, "bytes_down": 0, "wire_bytes_up": 0}
            self.evaluate({**initial, "wire_bytes_down": down["bytes"], "time_comm_s": down["s"]}, 0.0, 0.0, None)
        self.reporter.start(self.cfg.rounds - self.first_round + 1)

    def train_clients(self, plan: RoundPlan, template: Message) -> tuple[Message | dict[int, Message], float]:
        """Train this rank's sampled clients; their messages summed (or kept apart when rank 0 gathers).
        `template`: zeros with every name the round's upload carries."""
        t0 = time.perf_counter()
        mine = [c for c in plan.clients if c in self.encoded]
        self.reporter.round_started(plan.round, sum(len(self.encoded[c]) for c in mine) * self.cfg.local_epochs)
        total: Message | dict[int, Message] = {} if self.strategy.gathers else template.zeros()
        for c in mine:
            msg = self.strategy.client_message(template, self.train_one(c, plan), plan)
            if isinstance(total, dict):
                total[c] = msg
            else:
                total.add_(msg)
        return total, time.perf_counter() - t0

    def train_one(self, c: int, plan: RoundPlan) -> ClientUpdate:
        """Client c's local training from the global state; its update and what goes with it."""
        model, cfg = self.s.model, self.cfg
        start = self.strategy.client_start(c, self.global_state)
        models.set_trainable_state(model, start)
        kd = None
        if self.teacher_logits is not None and self.public is not None:
            kd = KDTargets(self.public.subset(plan.public_rows), self.teacher_logits, cfg.kd_alpha, cfg.kd_temperature)
        res = train_local(
            model,
            self.encoded[c],
            self.schedule(plan.lr),
            seed=client_seed(cfg.seed, plan.round, c),
            device=self.rt.device,
            kd=kd,
            terms=self.strategy.local_terms(c, start),
            params=models.trainable_parameters(model),
            on_step=self.reporter.step,
        )
        end = snapshot(models.get_trainable_state(model))
        delta = {k: end[k].float() - start[k].float() for k in end}
        if fault_hits(cfg.fault_inject, "client", c, plan.round):  # test-only: this client sends garbage
            delta = {k: torch.full_like(v, float("nan")) for k, v in delta.items()}
        reject, norm = update_problem(delta, cfg.max_update_norm)
        u = ClientUpdate(c, res.num_examples, delta, res.loss_sum, res.examples_seen, reject, norm)
        if not reject:
            if kd is not None:
                u.logits = predict(model, kd.data, cfg.eval_batch_size, self.rt.device)
            u.control_change = self.strategy.finish_client(c, start, end, res.lr_sum)
            if self.strategy.lora is not None and self.strategy.lora.sends_products:
                u.products = self.strategy.lora.client_products(end)
        return u

    def schedule(self, lr: float) -> LocalSchedule:
        """The round's local schedule: the run's, at the round's learning rate."""
        return dataclasses.replace(self.local_schedule, lr=lr)

    def wait_for_clients(self) -> float:
        """Rank 0 waits here while the client ranks train (0 in simulation)."""
        t0 = time.perf_counter()
        comm.barrier(self.rt)
        return time.perf_counter() - t0 if self.rt.distributed else 0.0

    def collect(
        self, plan: RoundPlan, template: Message, upload: Message | dict[int, Message]
    ) -> tuple[Message, dict[int, Message] | None, dict[str, float]]:
        """The clients' updates on rank 0: summed by one reduce, or gathered one by one (median,
        trimmed mean), in which case rank 0 forms the same sums itself."""
        t0 = time.perf_counter()
        if isinstance(upload, Message):
            sums, moved = comm.reduce_sum(self.rt, upload)
            individual = None
        else:
            sampled = {c: self.owners[c] for c in plan.clients}
            individual, moved = comm.gather_messages(self.rt, upload, template, sampled)
            sums = template.zeros()
            for msg in individual.values():
                sums.add_(msg)
        return sums, individual, {"bytes": moved, "s": time.perf_counter() - t0}

    def aggregate(self, plan: RoundPlan, sums: Message, individual: dict[int, Message] | None) -> dict[str, Any]:
        """Rank 0: the strategy's server part, then the teacher's (FedKDLoRA)."""
        if not self.rt.is_main:
            return {}
        t0 = time.perf_counter()
        lora = self.strategy.lora
        extra: dict[str, Any] = {}
        if sums.scalars["accepted"] > 0 or self.strategy.dp is not None:  # DP: every round is noised
            self.global_state = self.strategy.next_global(self.global_state, sums, individual, plan)
            if lora is not None and lora.last_error is not None:
                extra["aggregation_error"] = lora.last_error
        else:
            self.reporter.log(f"round {plan.round}: every client update was rejected; the global model stays as it was")
        if self.strategy.dp is not None:
            dp = self.strategy.dp
            extra["dp_epsilon"] = privacy.Accountant(dp.noise_multiplier, dp.rate).epsilon(dp.delta, plan.round)
            extra["dp_delta"] = dp.delta
        self.load_global()
        t1 = time.perf_counter()
        kd: dict[str, float] = {}
        if self.s.teacher is not None and sums.scalars["accepted"] > 0:
            ensemble = None
            if "logits" in sums.parts:
                ensemble = sums.parts["logits"]["student"] / sums.scalars["weight"]
            kd = self.s.teacher.after_aggregation(self.s.model, plan.round, list(plan.public_rows), ensemble)
            student = snapshot(models.get_trainable_state(self.s.model))  # the student after KD
            self.global_state = lora.canonical(student) if lora is not None else student
            self.load_global()
        return {**extra, **kd, "time_aggregate_s": t1 - t0, "time_server_kd_s": time.perf_counter() - t1}

    def load_global(self) -> None:
        """The global state into this rank's model (FedEx-LoRA: the base weights of the adapted modules too)."""
        models.set_trainable_state(self.s.model, self.global_state)
        if self.strategy.lora is not None and self.strategy.lora.base:
            models.set_base_weights(self.s.model, self.strategy.lora.base)

    def send_down(self, next_round: int) -> dict[str, float]:
        """Rank 0 sends the global state (+ SCAFFOLD's c, + the teacher's logits for the next
        round's public rows); every rank loads it, to score now and to train from next."""
        t_kd = 0.0
        logits = None
        if self.strategy.kd_on_clients and next_round <= self.cfg.rounds:
            rows = list(self.strategy.plan_round(next_round, self.s.public_size).public_rows)
            t0 = time.perf_counter()
            num_labels = self.s.task.num_labels
            logits = self.s.teacher.logits(rows) if self.s.teacher else torch.zeros(len(rows), num_labels)
            t_kd = time.perf_counter() - t0
        t0 = time.perf_counter()
        msg, moved = comm.broadcast(self.rt, self.strategy.downlink(self.global_state, logits))
        self.global_state, self.teacher_logits = self.strategy.read_downlink(msg)
        self.load_global()
        return {"bytes": moved, "s": time.perf_counter() - t0, "teacher_s": t_kd}

    def evaluate(self, record: dict[str, Any], train_s: float, wait_s: float, t0: float | None) -> None:
        """Every rank scores its test rows; one reduce brings the logits [T, K] and each client
        rank's timings to rank 0, which computes the metrics and writes the round's record."""
        t_eval = time.perf_counter()
        num_labels = self.s.task.num_labels
        logits = torch.zeros(len(self.s.task.test), num_labels, device=self.rt.device)
        if self.my_test_rows:
            logits[self.my_test_rows] = predict(self.s.model, self.my_test, self.cfg.eval_batch_size, self.rt.device)
        score_s = time.perf_counter() - t_eval
        teacher = self.s.teacher.evaluate() if self.s.teacher is not None else {}
        timings = {f"rank{k}.{n}": 0.0 for k in range(self.rt.world_size) for n in ("train_s", "score_s")}
        timings[f"rank{self.rt.rank}.train_s"], timings[f"rank{self.rt.rank}.score_s"] = train_s, score_s
        comm.barrier(self.rt)
        t_reduce = time.perf_counter()
        got, moved = comm.reduce_sum(self.rt, Message({"logits": {"test": logits}}, timings))
        if not self.rt.is_main:
            return
        metrics = metrics_from_logits(got.parts["logits"]["test"], self.s.task.test.labels, num_labels)
        ranks = range(1, self.rt.world_size) if self.rt.distributed else range(1)
        busy = [got.scalars[f"rank{k}.train_s"] for k in ranks]
        record.update({f"test_{k}": v for k, v in metrics.items()})
        record.update(teacher)
        record.update(
            time_train_s=max(busy) if t0 is not None else 0.0,
            time_idle_s=max(busy) - sum(busy) / len(busy) if t0 is not None else 0.0,
            time_eval_s=t_reduce - t_eval,
            time_comm_s=record.get("time_comm_s", 0.0) + time.perf_counter() - t_reduce,
            time_wait_s=wait_s,
            bytes_eval=moved,
        )
        record["time_s"] = time.perf_counter() - t0 if t0 is not None else 0.0
        self.reporter.record(record)

    def checkpoint(self, r: int, force: bool = False) -> None:
        """Every piece of state that the next round needs, when one is due (rank 0 writes)."""
        cfg = self.cfg
        due = cfg.checkpoint_every and (r % cfg.checkpoint_every == 0 or r == cfg.rounds)
        if not (due or force) or (force and self.progress.get("checkpointed") == r):
            return
        self.progress["checkpointed"] = r
        controls = self.gather_client_controls() if self.strategy.scaffold else {}
        if not self.rt.is_main:
            return
        tensors = {f"global.{k}": v for k, v in self.global_state.items()}
        server, server_extra = self.strategy.state()
        tensors.update({f"server.{k}": v for k, v in server.items()})
        for c, state in controls.items():
            tensors.update({f"client.{c}.{k}": v for k, v in state.items()})
        extra: dict[str, Any] = {"strategy": server_extra}
        if self.s.teacher is not None:
            teacher, extra["teacher"] = self.s.teacher.state()
            tensors.update({f"kd.{k}": v for k, v in teacher.items()})
        meta = {"config": cfg.to_dict(), "records": self.reporter.doc["rounds"], "server": extra}
        path = save_checkpoint(cfg.run_dir, r, tensors, meta, cfg.keep_checkpoints, self.written)
        self.progress["checkpoint"] = str(path)

    def gather_client_controls(self) -> dict[int, dict[str, torch.Tensor]]:
        """SCAFFOLD: every client's control variate, from its rank to rank 0 (for the checkpoint)."""
        like = Message({"control": {k: torch.zeros_like(v) for k, v in self.global_state.items()}})
        mine = {c: Message({"control": self.strategy.client_controls.get(c) or like.zeros().parts["control"]})
                for c in self.encoded}  # fmt: skip
        got, _ = comm.gather_messages(self.rt, mine, like, self.owners)
        return {c: m.parts["control"] for c, m in got.items()}

    def scatter_client_controls(self) -> None:
        """SCAFFOLD on resume: rank 0 sends every client's restored control; each rank keeps its own."""
        zeros = {k: torch.zeros_like(v) for k, v in self.global_state.items()}
        parts = {f"client{c}": self.strategy.client_controls.get(c, zeros) for c in range(self.cfg.num_clients)}
        msg, _ = comm.broadcast(self.rt, Message(parts))
        self.strategy.client_controls = {c: msg.parts[f"client{c}"] for c in self.encoded}

    def finish(self) -> dict[str, Any] | None:
        """Per-rank memory, the final model (rank 0), the completed results document."""
        self.reporter.stop()
        memory = comm.gather_object(self.rt, peak_memory(self.rt.device))
        if not self.rt.is_main:
            return None
        self.reporter.doc["peak_memory_per_rank"] = memory
        if self.cfg.save_model:
            if self.s.teacher is not None:
                cut = models.ModelSpec.from_config(self.cfg, lora=False) if self.cfg.student_layers else None
                self.s.teacher.save(self.cfg.run_dir, self.s.model, self.s.tokenizer, cut)
            model, name = self.s.model, "adapter" if models.is_peft(self.s.model) else "model"
            if self.strategy.lora is not None and self.strategy.lora.mode == "fedex":
                # the base weights changed: the adapter alone would not reproduce the run; export the merged model
                model, name = self.s.model.merge_and_unload(), "model"
            path = save_pretrained_atomic(model, self.s.tokenizer, self.cfg.run_dir / name)
            self.reporter.log(f"final global model saved to {path}")
        return self.reporter.doc

    # ---- bookkeeping ------------------------------------------------------------------------
    def byte_counts(self, plan: RoundPlan, wire_up: int, wire_down: int) -> dict[str, int]:
        """What the collectives moved, and what a deployment would move: one message per sampled
        client each way (its update up; the global state, SCAFFOLD's c, the teacher's logits, FedEx's
        base weights down). FlexLoRA clients move their own rank's A and B."""
        lora, g = self.strategy.lora, self.global_state
        logits = len(plan.public_rows) * self.s.task.num_labels * 4 if self.strategy.kd_on_clients else 0
        per_state = {
            c: lora.client_bytes(g, c) if lora else sum(v.numel() for v in g.values()) * 4 for c in plan.clients
        }
        control = 2 if self.strategy.scaffold else 1
        base = sum(v.numel() for v in lora.base.values()) * 4 if lora is not None and lora.base else 0
        products = 0
        if lora is not None and lora.sends_products:
            products = lora.product_numel(g) * 4 * self.rt.client_ranks
        return {
            "bytes_up": sum(per_state[c] * control + logits for c in plan.clients),
            "bytes_down": sum(per_state[c] * control + logits + base for c in plan.clients),
            "bytes_logits": 2 * logits * len(plan.clients),
            "wire_bytes_up": wire_up,
            "wire_bytes_down": wire_down,
            "bytes_products": products,
        }

    def begin_report(self) -> None:
        s, cfg, rt = self.s, self.cfg, self.rt
        trainable, total = models.count_parameters(s.model)
        payload = Message({"global": self.global_state}).nbytes
        self.reporter.partition_table(s.shards, s.task.train.labels, s.public_size)
        for line in rt.layout_lines if rt.is_main else []:
            self.reporter.log(f"layout: {line}")
        self.reporter.log(
            f"{cfg.scheme} on {cfg.task}: {len(s.task.train)} train ({s.public_size} public), {len(s.task.test)} test; "
            f"model {s.model_path} ({trainable:,} of {total:,} parameters train, {payload:,} bytes travel); "
            f"{rt.world_size} process(es), device {rt.device}"
        )
        if s.resumed_from:
            self.reporter.log(f"resuming at round {self.first_round} from {s.resumed_from}")
        self.reporter.begin(
            cfg.to_dict(),
            environment(rt.backend, rt.world_size, rt.device, rt.num_threads, rt.layout),
            {
                "model_path": s.model_path,
                "trainable_parameters": trainable,
                "total_parameters": total,
                "payload_bytes": payload,
                "public_examples": s.public_size,
                "client_examples": [len(x) for x in s.shards],
                "test_examples": len(s.task.test),
                "resumed_from": s.resumed_from,
            },
        )
        self.reporter.doc["rounds"] = self.records
        if rt.is_main:
            self.reporter.tracker = open_tracker(cfg.log_to, cfg.run_dir, cfg.to_dict())
