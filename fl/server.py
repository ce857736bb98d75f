"""One federated experiment, written out: set-up, the round loop on rank 0, the client loop on
ranks 1..N, and the final export. Without torchrun (world size 1) rank 0 trains every client
itself, one after another: the simulation path, with the same seeds and the same arithmetic.

Round r, as data flows (ranks 1..N already hold the global state of round r-1):
  [KD on clients] rank 0 --broadcast(teacher logits on the round's public rows)--> ranks 1..N
  each client rank: for each of its clients: load global, train locally, acc += n_i * theta_i
  ranks 1..N --reduce(sum n_i*theta_i, sum n_i, sum loss)--> rank 0: aggregate [, server KD]
  rank 0 --broadcast(new global state)--> ranks 1..N
  every client rank scores its share of the test rows; --reduce(logits)--> rank 0: metrics, record
The evaluation is split over the client ranks so that no rank waits while one scores the test set.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fl import comm, models
from fl.checkpoint import find_resume_point, load_checkpoint, save_checkpoint, split_prefix, with_prefix
from fl.client import KDTargets, client_seed, metrics_from_logits, predict, train_local, train_steps
from fl.config import Config, ConfigError, parse_fault
from fl.data import Encoded, TaskData, encode, load_task
from fl.partition import partition, public_split
from fl.report import Reporter, check_output_dir, environment, peak_memory, save_pretrained_atomic
from fl.strategies import Strategy, accumulate, get_strategy
from fl.strategies.aggregate import State

KD_TARGETS = "__kd_teacher_logits__"  # travels down with the global state: [P, K]
KD_LOGITS = "__kd_student_logits__"  # travels up with the adapter sum: sum_i n_i * logits_i, [P, K]


@dataclass
class Setup:
    """Everything a rank needs before round 1; built identically (same seeds) on every rank."""

    cfg: Config
    rt: comm.Runtime
    strategy: Strategy
    task: TaskData
    shards: list[list[int]]  # client id -> indices into task.train
    public_size: int
    model: torch.nn.Module
    tokenizer: Any
    model_path: str
    my_clients: list[int]  # clients this rank trains


def clients_of_rank(rank: int, world_size: int, num_clients: int) -> list[int]:
    """Round-robin: client c lives on client rank 1 + c % (world - 1); rank 0 in simulation."""
    if world_size == 1:
        return list(range(num_clients))
    if rank == 0:
        return []
    return [c for c in range(num_clients) if 1 + c % (world_size - 1) == rank]


def eval_rows(rank: int, world_size: int, num_rows: int) -> list[int]:
    """Test rows this rank scores: every (world-1)-th row from rank-1 on client ranks, all in simulation."""
    if world_size == 1:
        return list(range(num_rows))
    if rank == 0:
        return []
    return list(range(rank - 1, num_rows, world_size - 1))


def prepare(cfg: Config, rt: comm.Runtime) -> Setup:
    """Load data, split it, build the model. Raises ConfigError before anything is written."""
    if rt.world_size - 1 > cfg.num_clients:
        raise ConfigError(
            f"torchrun started {rt.world_size - 1} client ranks for num_clients={cfg.num_clients}; "
            f"launch with --nproc_per_node={cfg.num_clients + 1} or fewer, or raise num_clients"
        )
    strategy = get_strategy(cfg)
    task = load_task(cfg)
    public, private = public_split(len(task.train), cfg.teacher_data_pct)
    private_labels = [task.train.labels[i] for i in private]
    try:
        local = partition(private_labels, cfg.num_clients, cfg.partition, cfg.seed, cfg.dirichlet_alpha)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    shards = [[private.start + i for i in shard] for shard in local]
    model, tokenizer, path = strategy.build_model(task.num_labels)
    model.to(rt.device)
    mine = clients_of_rank(rt.rank, rt.world_size, cfg.num_clients)
    return Setup(cfg, rt, strategy, task, shards, len(public), model, tokenizer, path, mine)


def snapshot(state: State) -> State:
    """A detached copy (trainable-state dicts hold views of live parameters)."""
    return {k: v.detach().clone() for k, v in state.items()}


def train_my_clients(
    s: Setup,
    round_idx: int,
    global_state: State,
    encoded: dict[int, Encoded],
    reporter: Reporter,
    kd: KDTargets | None = None,
) -> tuple[State, list[float]]:
    """Train this rank's clients from the global state.

    Returns (sum_i n_i * theta_i, [sum n_i, sum loss, sum examples seen, rejected_0..rejected_{C-1}]);
    with `kd`, the state also holds KD_LOGITS: sum_i n_i * (client i's logits on the public rows).
    An update with NaN/Inf or too far from the global state is left out and flagged as rejected.
    """
    cfg, plan = s.cfg, s.strategy.configure_round(round_idx)
    acc: State | None = None
    totals = [0.0, 0.0, 0.0] + [0.0] * cfg.num_clients
    for c in s.my_clients:
        models.set_trainable_state(s.model, global_state)
        res = train_local(
            s.model,
            encoded[c],
            lr=plan["lr"],
            epochs=plan["local_epochs"],
            batch_size=cfg.batch_size,
            seed=client_seed(cfg.seed, round_idx, c),
            device=s.rt.device,
            weight_decay=cfg.weight_decay,
            kd=kd,
            on_step=reporter.step,
        )
        sent = dict(models.get_trainable_state(s.model))
        if fault_hits(cfg, "client", c, round_idx):  # test-only: this client sends garbage
            sent = {k: torch.full_like(v, float("nan")) for k, v in sent.items()}
        if update_problem(sent, global_state, cfg.max_update_norm) is not None:
            totals[3 + c] = 1.0
            continue
        if kd is not None:
            sent[KD_LOGITS] = predict(s.model, kd.data, cfg.eval_batch_size, s.rt.device)
        acc = accumulate(acc, sent, float(res.num_examples))
        totals[:3] = [totals[0] + res.num_examples, totals[1] + res.loss_sum, totals[2] + res.examples_seen]
    if acc is None:  # rank 0 under torchrun holds no client: contribute zeros to the sum
        acc = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}
        if kd is not None:
            acc[KD_LOGITS] = torch.zeros_like(kd.logits, dtype=torch.float32)
    return acc, totals


def update_problem(update: State, global_state: State, max_norm: float | None) -> str | None:
    """Why an update must be left out (non-finite, or farther than max_norm from the global), or None."""
    sq = 0.0
    for k, v in update.items():
        if not torch.isfinite(v).all():
            return f"non-finite values in {k}"
        sq += float(((v.detach().float() - global_state[k].float()) ** 2).sum())
    if max_norm is not None and sq**0.5 > max_norm:
        return f"update norm {sq**0.5:.3g} > max_update_norm={max_norm}"
    return None


def fault_hits(cfg: Config, kind: str, who: int, round_idx: int) -> bool:
    """Test-only fault switch (`fault_inject`): does it fire for this client/rank and round?"""
    if not cfg.fault_inject:
        return False
    _, target, index, when = parse_fault(cfg.fault_inject)
    return target == kind and index == who and when in (None, round_idx)


def save_final_model(s: Setup, run_dir: Path) -> Path:
    """adapter/ (peft, loads with PeftModel.from_pretrained) or model/ (save_pretrained), tokenizer included."""
    name = "adapter" if models.is_peft(s.model) else "model"
    return save_pretrained_atomic(s.model, s.tokenizer, run_dir / name)


class RunStopped(RuntimeError):
    """The job stopped part-way (a rank died, a signal, a collective timed out); finished rounds are kept."""


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise RunStopped(f"received {signal.Signals(signum).name}")


def run(cfg: Config) -> dict[str, Any] | None:
    """Run one experiment; returns the results document on rank 0 (None on other ranks)."""
    start = time.perf_counter()
    rt = comm.init(cfg.device, cfg.num_threads, cfg.collective_timeout_s)
    progress = {"round": 0, "checkpoint": None}
    previous = signal.signal(signal.SIGTERM, _stop_on_signal)  # torchrun ends a failed job with SIGTERM
    try:
        doc = _run(cfg, rt, start, progress)
    except BaseException as err:
        comm.shutdown(clean=False)  # peers may be gone: no barrier
        if isinstance(err, RunStopped) or comm.is_comm_failure(err):
            r = progress["round"]
            cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunStopped(
                f"stopped during round {r} ({cause}); results.json holds rounds 0..{max(r - 1, 0)}, newest "
                f"checkpoint: {progress['checkpoint'] or 'none'}; run the same command with resume=true to continue "
                "(torchrun's summary names the rank that failed; --max-restarts=N with resume=true resumes by itself)"
            ) from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    comm.shutdown()
    return doc


def resume_state(cfg: Config, s: Setup, path: Path | None) -> tuple[int, list[dict[str, Any]], str | None]:
    """Rank 0: restore checkpoint `path` into the model and strategy.

    Returns (first round to run, records so far, checkpoint path); (1, [], None) for a fresh start.
    """
    if path is None:
        return 1, [], None
    tensors, meta = load_checkpoint(path, cfg)
    try:
        models.set_trainable_state(s.model, split_prefix(tensors, "global"))
        s.strategy.load_server_state(split_prefix(tensors, "server"), meta.get("server", {}))
    except ValueError as err:
        raise ConfigError(f"checkpoint {str(path)!r} does not fit this model ({err}); resume with its model") from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return int(meta["round"]) + 1, list(meta["records"]), str(path)


def _run(cfg: Config, rt: comm.Runtime, start: float, progress: dict[str, Any]) -> dict[str, Any] | None:
    error: ConfigError | None = None
    first_round, records, resumed_from = 1, [], None
    try:
        s = prepare(cfg, rt)
        if rt.is_main:  # every check that reads comes before the first write (the run folder)
            s.strategy.setup_server(s.task, s.public_size, s.tokenizer, rt.device)
            first_round, records, resumed_from = resume_state(cfg, s, find_resume_point(cfg))
            check_output_dir(cfg.run_dir)
    except ConfigError as err:
        error = err
    if not comm.all_ok(rt, error is None):  # every rank stops together, none waits forever
        # one message for the job: rank 0's when it has one, else each failing rank's own
        main_error = comm.broadcast_object(rt, str(error) if rt.is_main and error else None)
        if rt.is_main or main_error is None:
            raise error or ConfigError("another rank failed during set-up; see its message")
        raise ConfigError(main_error, quiet=True)
    first_round = comm.broadcast_object(rt, first_round)

    reporter = Reporter(cfg.run_dir / "results.json", enabled=rt.is_main)
    strategy, train, num_labels = s.strategy, s.task.train, s.task.num_labels
    encoded = {c: encode(s.tokenizer, train.subset(s.shards[c]), cfg.max_length) for c in s.my_clients}
    my_test_rows = eval_rows(rt.rank, rt.world_size, len(s.task.test))
    my_test = encode(s.tokenizer, s.task.test.subset(my_test_rows), cfg.max_length)
    # KD on clients: every rank tokenizes the public slice for the student (it is public data)
    public = encode(s.tokenizer, train.subset(range(s.public_size)), cfg.max_length) if strategy.kd_on_clients else None
    trainable, total = models.count_parameters(s.model)
    global_state = snapshot(models.get_trainable_state(s.model))
    payload = comm.packed_nbytes(global_state)
    reporter.partition_table(s.shards, train.labels, s.public_size)
    reporter.log(
        f"{cfg.scheme} on {cfg.task}: {len(train)} train ({s.public_size} public), {len(s.task.test)} test; "
        f"model {s.model_path} ({trainable:,} of {total:,} parameters train, {payload:,} bytes travel); "
        f"{rt.world_size} process(es), backend {rt.backend or 'none (simulation)'}, device {rt.device}"
    )
    if resumed_from:
        reporter.log(f"resuming at round {first_round} from {resumed_from}")
    reporter.begin(
        cfg.to_dict(),
        environment(rt.backend, rt.world_size, rt.device, rt.num_threads),
        {
            "model_path": s.model_path,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "payload_bytes": payload,
            "public_examples": s.public_size,
            "client_examples": [len(x) for x in s.shards],
            "test_examples": len(s.task.test),
            "resumed_from": resumed_from,
        },
    )
    reporter.doc["rounds"] = records

    def evaluate_global(round_idx: int, extra: dict[str, Any]) -> None:
        """Every rank scores its test rows with the global model; rank 0 sums the logits [T, K] and records."""
        t0 = time.perf_counter()
        logits = torch.zeros(len(s.task.test), num_labels)
        if my_test_rows:
            logits[my_test_rows] = predict(s.model, my_test, cfg.eval_batch_size, rt.device)
        teacher = strategy.evaluate_extra() if rt.is_main else {}  # the teacher lives on rank 0
        comm.bytes_moved.take()
        logits = comm.reduce_sum(rt, {"logits": logits})[0]["logits"]
        if not rt.is_main:
            return
        m = metrics_from_logits(logits, s.task.test.labels, num_labels)
        rec = {"round": round_idx, **{f"test_{k}": v for k, v in m.items()}, **extra, **teacher}
        rec["bytes_eval"] = comm.bytes_moved.take()[0]
        rec["time_eval_s"] = time.perf_counter() - t0
        if "time_s" in rec:
            rec["time_s"] += rec["time_eval_s"]
        reporter.record(rec)

    def checkpoint(round_idx: int) -> None:
        due = cfg.checkpoint_every and (round_idx % cfg.checkpoint_every == 0 or round_idx == cfg.rounds)
        if not due:
            return
        server_tensors, server_extra = strategy.server_state()
        tensors = {**with_prefix(global_state, "global"), **with_prefix(server_tensors, "server")}
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"config": cfg.to_dict(), "records": reporter.doc["rounds"], "server": server_extra}
        progress["checkpoint"] = str(save_checkpoint(cfg.run_dir, round_idx, tensors, meta, cfg.keep_checkpoints))

    comm.bytes_moved.take()
    global_state, _ = comm.broadcast_state(rt, global_state)  # every rank starts from rank 0's model
    models.set_trainable_state(s.model, global_state)
    if first_round == 1:
        initial = {"train_loss": None, "time_s": 0.0, "bytes_up": 0, "bytes_logits": 0}
        evaluate_global(0, {**initial, "bytes_down": comm.bytes_moved.down})
    reporter.start(cfg.rounds - first_round + 1)
    for r in range(first_round, cfg.rounds + 1):
        progress["round"] = r
        if fault_hits(cfg, "rank", rt.rank, r):  # test-only: this process dies mid-run
            os._exit(17)
        t0 = time.perf_counter()
        comm.bytes_moved.take()
        steps = sum(train_steps(len(encoded[c]), cfg.batch_size, cfg.local_epochs) for c in s.my_clients)
        reporter.round_started(r, steps)
        # rank 0 -> clients: teacher logits on the round's public rows (KD on clients only); the other
        # ranks pass a same-shaped tensor to receive into
        rows = strategy.public_rows(r, s.public_size)  # [] for schemes without distillation
        kd_down = bool(rows) and strategy.kd_on_clients
        kd = None
        if kd_down:
            down = {KD_TARGETS: strategy.teacher_logits(rows) if rt.is_main else torch.zeros(len(rows), num_labels)}
            targets = comm.broadcast_state(rt, down)[0][KD_TARGETS]
            kd = KDTargets(public.subset(rows), targets, cfg.kd_alpha, cfg.kd_temperature)
        t_train = time.perf_counter()
        acc, totals = train_my_clients(s, r, global_state, encoded, reporter, kd)
        t_reduce = time.perf_counter()
        # clients -> rank 0: sum n_i * theta_i [+ sum n_i * logits_i], sum n_i, losses, rejections, and
        # each rank's training seconds in its own slot
        slots = [0.0] * rt.world_size
        slots[rt.rank] = t_reduce - t_train
        weighted_sum, sums = comm.reduce_sum(rt, acc, [*totals, *slots])
        t_agg = time.perf_counter()
        n, loss_sum, seen = sums[:3]
        rejected = [c for c, flag in enumerate(sums[3 : len(totals)]) if flag > 0.5]
        busy = sums[len(totals) :][1:] if rt.distributed else slots  # client ranks' training seconds
        server_metrics: dict[str, float] = {}
        t_server = t_agg
        if rt.is_main and n > 0:
            ensemble = weighted_sum.pop(KD_LOGITS) / n if kd_down else None
            global_state = strategy.aggregate(weighted_sum, n, global_state)
            models.set_trainable_state(s.model, global_state)
            t_server = time.perf_counter()
            server_metrics = strategy.server_update(s.model, r, rows, ensemble)
        elif rt.is_main:  # every update was rejected: keep the previous global model
            reporter.log(f"round {r}: every client update was rejected; the global model stays as it was")
            models.set_trainable_state(s.model, global_state)
        t_done = time.perf_counter()
        # rank 0 -> clients: the new global state, to score now and to train from next round
        global_state, _ = comm.broadcast_state(rt, snapshot(models.get_trainable_state(s.model)))
        models.set_trainable_state(s.model, global_state)
        t_sent = time.perf_counter()
        logits_bytes = len(rows) * num_labels * 4 if kd_down else 0
        up, down_bytes = comm.bytes_moved.take()
        senders = rt.client_ranks if rt.distributed else cfg.num_clients
        if not rt.distributed:  # simulation: count what one client per rank would move
            up = down_bytes = (payload + logits_bytes) * senders
        evaluate_global(
            r,
            {
                "train_loss": loss_sum / seen if seen else None,
                "time_s": time.perf_counter() - t0,
                # the slowest client rank's training (the round's critical path); the others idle meanwhile
                "time_train_s": max(busy),
                "time_idle_s": max(busy) - sum(busy) / len(busy),
                "time_comm_s": (t_train - t0) + (t_agg - t_train - max(busy)) + (t_sent - t_done),
                "time_aggregate_s": t_server - t_agg,
                "time_server_kd_s": t_done - t_server,
                "bytes_up": up,
                "bytes_down": down_bytes,
                "bytes_logits": 2 * logits_bytes * senders,
                "num_examples": int(n),
                "rejected_clients": rejected,
                **server_metrics,
            },
        )
        if rt.is_main:
            checkpoint(r)
    reporter.stop()
    memory = comm.gather_object(rt, peak_memory(rt.device))  # per rank: what each process needed
    if rt.is_main:
        reporter.doc["peak_memory_per_rank"] = memory
    if rt.is_main and cfg.save_model:
        strategy.save_extras(cfg.run_dir, s.model, s.tokenizer)
        path = save_final_model(s, cfg.run_dir)
        reporter.log(f"final global model saved to {path}")
    if rt.is_main:
        reporter.finish(time.perf_counter() - start)
        return reporter.doc
    return None
