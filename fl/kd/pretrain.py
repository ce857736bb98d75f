"""`fl pretrain-teacher`: fine-tune the FedKDLoRA teacher on the server's public slice.

A one-process program with no process group. Launched under torchrun, rank 0 does the work and
the other ranks leave at once (nothing to wait for, so no collective timeout to run into).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from fl.client.train import LocalSchedule, train_local
from fl.config import Config
from fl.data.partition import public_split
from fl.errors import ConfigError
from fl.models import ModelSpec
from fl.output.report import Reporter, environment
from fl.output.rundir import check_output_dir, clear_run_outputs, save_pretrained_atomic
from fl.tasks import build_task


def teacher_run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / (cfg.run_name or f"teacher-{cfg.task_name}-seed{cfg.seed}")


def pretrain_teacher(cfg: Config) -> dict[str, Any] | None:
    """Fine-tune teacher_model on the public slice, evaluate after every epoch, save; rank 0 only."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    start = time.perf_counter()
    device = torch.device("cuda", 0) if cfg.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    threads = cfg.num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    task = build_task(cfg)
    public, _ = public_split(len(task.train), cfg.teacher_data_pct)
    if len(public) == 0:
        raise ConfigError("the public slice is empty; set teacher_data_pct > 0 (e.g. 20) to pre-train a teacher")
    teacher, tokenizer, path = task.build_model(ModelSpec(cfg.teacher_model, None, False, cfg.seed, None))
    teacher.to(device)
    run_dir = teacher_run_dir(cfg)
    check_output_dir(run_dir, overwrite=cfg.overwrite)
    if cfg.overwrite:
        clear_run_outputs(run_dir)
    reporter = Reporter(run_dir / "teacher_metrics.json", columns=task.columns)
    train_enc = task.encode(tokenizer, task.train.subset(public))
    test_enc = task.encode(tokenizer, task.test)
    reporter.begin(
        cfg.to_dict(),
        environment(None, 1, device, threads),
        {"teacher_model_path": path, "public_examples": len(public), "teacher_ckpt": str(run_dir / "teacher")},
    )
    reporter.log(
        f"pre-training teacher {path} on {len(public)} public examples for {cfg.teacher_pretrain_epochs} epochs"
    )

    def record(epoch: int, train_loss: float | None, t0: float) -> None:
        m = task.metrics(task.eval_sums(teacher, test_enc, cfg.eval_batch_size, device))
        rec = {"round": epoch, **{f"test_{k}": v for k, v in m.items()}, "train_loss": train_loss}
        reporter.record({**rec, "time_s": time.perf_counter() - t0})

    record(0, None, time.perf_counter())
    schedule = LocalSchedule(lr=cfg.teacher_lr, epochs=1, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay)
    for epoch in range(1, cfg.teacher_pretrain_epochs + 1):
        t0 = time.perf_counter()
        res = train_local(teacher, task, train_enc, schedule, seed=cfg.seed + epoch, device=device)
        record(epoch, res.loss_sum / max(res.examples_seen, 1), t0)
    saved = save_pretrained_atomic(teacher, tokenizer, run_dir / "teacher")
    reporter.log(f"teacher saved to {saved}; use teacher_ckpt={saved}")
    reporter.finish(time.perf_counter() - start)
    return reporter.doc
