"""The program around the round loop: start the process group, set up every rank (one error line
for the whole job when set-up fails), run the federation, and leave a valid results.json however
the job ends (completed, interrupted by a signal or a dead peer, or failed). `fl.run` (the public
API) and `fl run` (the CLI) both come here.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fl import comm
from fl.client.memory import trim_heap
from fl.config import Config
from fl.config.components import instantiate
from fl.errors import ConfigError, RunStopped
from fl.output.callbacks import Callback, CallbackList
from fl.output.checkpoint import find_resume_point, restore
from fl.output.rundir import check_output_dir, clear_run_outputs
from fl.output.tracking import tracker
from fl.server import Federation
from fl.setup import Setup, prepare, setup_server_parts, share_server_model
from fl.strategies import Part
from fl.tasks import Task

__all__ = ["Result", "RunStopped", "run", "run_document"]


@dataclass
class Result:
    """What `fl.run` returns, on every rank (records, state and doc on rank 0 only; elsewhere empty / None:
    a 7B FedAvg state copied on every client rank would cost each its size in host memory)."""

    status: str  # completed (also after a clean early stop: see `stopped_early`)
    records: list[dict[str, Any]]  # the per-round records, as in results.json (round 0 first)
    state: dict[str, torch.Tensor]  # the final global trainable state, by name (CPU tensors; rank 0 only)
    run_dir: Path
    model_path: Path | None  # the exported adapter or model folder (None with save_model=false)
    stopped_early: str | None = None  # a part's or callback's reason to stop before `rounds`
    doc: dict[str, Any] | None = field(default=None, repr=False)  # results.json, whole


def run_document(cfg: Config) -> dict[str, Any] | None:
    """`run(cfg)`'s results.json document on rank 0 (None on the other ranks): for benchmarks and tests."""
    return run(cfg).doc


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise RunStopped(f"received {signal.Signals(signum).name}")


def run(
    cfg: Config, *, parts: Sequence[Part] = (), task: Task | None = None, callbacks: Sequence[Callback] = ()
) -> Result:
    """Run one experiment (see `fl.run`): the config's parts, task and callbacks, and these objects."""
    start = time.perf_counter()
    imports_s = process_age_s()  # the interpreter and every import before the run starts
    rt = comm.init(
        cfg.device,
        cfg.num_threads,
        cfg.collective_timeout_s,
        cfg.server_device,
        cfg.client_allreduce,
        cfg.ranks_per_client,
        cfg.bucket_mb,
    )
    previous = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    fed: Federation | None = None
    s, cbs = None, CallbackList([], cfg, cfg.run_dir)
    try:
        t0 = time.perf_counter()
        s, first_round, records, cbs = set_up(cfg, rt, parts, task, callbacks)
        trim_heap()  # what loading and tokenizing freed
        s.timings = {
            "imports_s": imports_s,
            "process_group_s": t0 - start,
            **s.timings,
            "setup_s": time.perf_counter() - t0,
        }
        fed = Federation(cfg, s, first_round, records, cbs)
        doc = fed.run()
        fed.reporter.finish(time.perf_counter() - start)
    except BaseException as err:
        # the job is stopping: a second signal (torchrun SIGTERMs every rank when one dies) must not
        # interrupt the stop itself, which records why in results.json
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        # a set-up error reaches every rank together (set_up agrees on it): leave together, so that
        # torchrun does not SIGTERM the others; otherwise peers may be gone: no barrier
        comm.shutdown(clean=isinstance(err, ConfigError) and s is None)
        if fed is not None and (isinstance(err, RunStopped | KeyboardInterrupt) or comm.is_comm_failure(err)):
            stop = stopped(cfg, fed, err, start)
            end_callbacks(cbs, fed.reporter.doc)
            raise stop from None
        if fed is not None:
            fed.reporter.finish(time.perf_counter() - start, status="failed", reason=first_line(err))
            end_callbacks(cbs, fed.reporter.doc)
        elif isinstance(err, RunStopped) and comm.launched_by_torchrun():  # e.g. a peer died while loading
            raise RunStopped(
                f"stopped during set-up ({first_line(err)}), before any round or file; when a rank fails torchrun "
                "stops the others: its summary names that rank, whose own error is printed above"
            ) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    comm.shutdown()
    end_callbacks(cbs, fed.reporter.doc)
    return result(cfg, fed, doc)


def end_callbacks(cbs: CallbackList, doc: dict[str, Any]) -> None:
    """Every callback's on_train_end; one that fails is reported in a line and changes nothing of the
    run (results.json and the model are written by then)."""
    try:
        cbs.end(doc)
    except Exception as err:  # a tracker that cannot close must not turn a finished run into a failed one
        print(f"warning: a callback's on_train_end failed: {first_line(err)}", file=sys.stderr)


def result(cfg: Config, fed: Federation, doc: dict[str, Any] | None) -> Result:
    saved = (doc or {}).get("model_saved")
    return Result(
        status=(doc or {}).get("status", "completed"),
        records=list((doc or {}).get("rounds", [])),
        state={k: v.detach().cpu() for k, v in fed.global_state.items()} if fed.rt.is_main else {},
        run_dir=cfg.run_dir,
        model_path=Path(saved) if saved else None,
        stopped_early=(doc or {}).get("stopped_early"),
        doc=doc,
    )


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc), 0 where that cannot be read."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def stopped(cfg: Config, fed: Federation, err: BaseException, start: float) -> RunStopped:
    """Mark results.json interrupted and say, in one line, what was kept and how to go on."""
    r = fed.progress["round"]
    cause = first_line(err) if not isinstance(err, KeyboardInterrupt) else "interrupted (Ctrl-C)"
    fed.reporter.finish(time.perf_counter() - start, status="interrupted", reason=cause)
    launcher = "the same torchrun command" if comm.launched_by_torchrun() else "the same command"
    hint = " (torchrun's summary names the rank that failed)" if comm.launched_by_torchrun() else ""
    return RunStopped(
        f"stopped during round {r} ({cause}); results.json holds rounds 0..{max(r - 1, 0)}, newest "
        f"checkpoint: {fed.progress['checkpoint'] or 'none'}; run {launcher} with resume=true to continue{hint}"
    )


def set_up(
    cfg: Config, rt: comm.Runtime, parts: Sequence[Part], task: Task | None, callbacks: Sequence[Callback]
) -> tuple[Setup, int, list[dict], CallbackList]:
    """Build every rank's part; rank 0 restores a checkpoint, builds its callbacks and checks the run
    folder. Every rank learns whether all succeeded: a set-up error stops the whole job with rank 0's
    one line. Returns (set-up, first round, records so far, callbacks)."""
    first_round, records = 1, []
    s, error, cbs = None, None, CallbackList([], cfg, cfg.run_dir)
    try:
        s = prepare(cfg, rt, parts, task)
    except ConfigError as err:
        error = err
    agree(rt, error)
    share_server_model(cfg, s)  # type: ignore[arg-type]  # a model-free rank 0 learns the model from rank 1
    try:
        if rt.is_main:  # every check that reads comes before the first write (the run folder)
            setup_server_parts(cfg, s)  # type: ignore[arg-type]
            path = find_resume_point(cfg)
            first_round, records = restore(cfg, path, s.model, s.strategy, rt.device)  # type: ignore[union-attr]
            s.resumed_from = str(path) if path is not None else None  # type: ignore[union-attr]
            cbs = CallbackList(build_callbacks(cfg, callbacks), cfg, cfg.run_dir)
            check_output_dir(cfg.run_dir, resume=cfg.resume != "false", overwrite=cfg.overwrite)
            if cfg.overwrite and s.resumed_from is None:  # type: ignore[union-attr]
                clear_run_outputs(cfg.run_dir)
    except ConfigError as err:
        error = err
    agree(rt, error)
    first_round = int(comm.broadcast_object(rt, first_round))  # type: ignore[arg-type]
    s.resumed_from = comm.broadcast_object(rt, s.resumed_from)  # type: ignore[union-attr]
    cbs.stops = bool(comm.broadcast_object(rt, bool(cbs)))  # rank 0's callbacks decide; every rank must know
    return s, first_round, records, cbs  # type: ignore[return-value]


def build_callbacks(cfg: Config, extra: Sequence[Callback]) -> list[Callback]:
    """Rank 0's callbacks: the tracker of log_to, the config's, then `extra` (from `fl.run`)."""
    out = [t] if (t := tracker(cfg.log_to)) is not None else []
    out += [instantiate(spec, f"callbacks[{i}]", Callback, config=cfg) for i, spec in enumerate(cfg.callbacks)]
    extra = [extra] if isinstance(extra, Callback) else list(extra)
    for i, cb in enumerate(extra):
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks[{i}] of fl.run is a {type(cb).__name__}, not an fl.Callback; subclass it")
    return out + list(extra)


def agree(rt: comm.Runtime, error: ConfigError | None) -> None:
    """Every rank stops together when any failed, none waits forever: one line for the job, printed by
    rank 0 (its own error, else the first failing rank's); the other ranks stop quietly."""
    if comm.all_ok(rt, error is None):
        return
    messages = comm.gather_object(rt, str(error) if error else None)
    if rt.is_main:
        raise error or ConfigError(next(m for m in messages if m))  # type: ignore[union-attr]
    raise ConfigError(str(error), quiet=True)
