"""The program around the round loop: start the process group, set up every rank (one error line
for the whole job when set-up fails), run the federation, and leave a valid results.json however
the job ends (completed, interrupted by a signal or a dead peer, or failed).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from fl import comm
from fl.checkpoint import find_resume_point
from fl.config import Config, ConfigError
from fl.memory import trim_heap
from fl.rundir import check_output_dir, clear_run_outputs
from fl.server import Federation
from fl.setup import Setup, prepare, restore, share_server_model
from fl.tracking import check_available


class RunStopped(RuntimeError):
    """The job stopped part-way (a rank died, a signal, a collective timed out); finished rounds are kept."""


def _stop_on_signal(signum: int, frame: Any) -> None:
    raise RunStopped(f"received {signal.Signals(signum).name}")


def run(cfg: Config) -> dict[str, Any] | None:
    """Run one experiment; returns the results document on rank 0 (None on other ranks)."""
    start = time.perf_counter()
    imports_s = process_age_s()  # the interpreter and every import before the run starts
    rt = comm.init(cfg.device, cfg.num_threads, cfg.collective_timeout_s, cfg.server_device, cfg.client_allreduce,
                   cfg.ranks_per_client, cfg.bucket_mb)  # fmt: skip
    previous = {s: signal.signal(s, _stop_on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    fed: Federation | None = None
    s = None
    try:
        t0 = time.perf_counter()
        s, first_round, records = set_up(cfg, rt)
        trim_heap()  # what loading and tokenizing freed
        s.timings = {"imports_s": imports_s, "process_group_s": t0 - start, **s.timings,
                     "setup_s": time.perf_counter() - t0}  # fmt: skip
        fed = Federation(cfg, s, first_round, records)
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
            raise stopped(cfg, fed, err, start) from None
        if fed is not None:
            fed.reporter.finish(time.perf_counter() - start, status="failed", reason=first_line(err))
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
    return doc


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


def set_up(cfg: Config, rt: comm.Runtime) -> tuple[Setup, int, list[dict]]:
    """Build every rank's part; rank 0 restores a checkpoint and checks the run folder. Every rank
    learns whether all succeeded: a set-up error stops the whole job with rank 0's one line."""
    first_round, records = 1, []
    s, error = None, None
    try:
        s = prepare(cfg, rt)
    except ConfigError as err:
        error = err
    agree(rt, error)
    share_server_model(cfg, s)  # type: ignore[arg-type]  # a model-free rank 0 learns the model from rank 1
    try:
        if rt.is_main:  # every check that reads comes before the first write (the run folder)
            first_round, records = restore(cfg, s, find_resume_point(cfg))  # type: ignore[arg-type]
            check_available(cfg.log_to)
            check_output_dir(cfg.run_dir, resume=cfg.resume != "false", overwrite=cfg.overwrite)
            if cfg.overwrite and s.resumed_from is None:  # type: ignore[union-attr]
                clear_run_outputs(cfg.run_dir)
    except ConfigError as err:
        error = err
    agree(rt, error)
    first_round = int(comm.broadcast_object(rt, first_round))  # type: ignore[arg-type]
    s.resumed_from = comm.broadcast_object(rt, s.resumed_from)  # type: ignore[union-attr]
    return s, first_round, records  # type: ignore[return-value]


def agree(rt: comm.Runtime, error: ConfigError | None) -> None:
    """Every rank stops together when any failed, none waits forever: one line for the job, printed by
    rank 0 (its own error, else the first failing rank's); the other ranks stop quietly."""
    if comm.all_ok(rt, error is None):
        return
    messages = comm.gather_object(rt, str(error) if error else None)
    if rt.is_main:
        raise error or ConfigError(next(m for m in messages if m))  # type: ignore[union-attr]
    raise ConfigError(str(error), quiet=True)
