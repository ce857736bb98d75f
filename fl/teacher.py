"""The teacher's loops: pre-training on the public slice (`fl pretrain-teacher`), mutual
distillation with the aggregated student (kd_placement=server) and learning from the clients'
student ensemble (kd_placement=clients). Runs on rank 0; knows nothing of collectives.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl import comm, models
from fl.client import evaluate, train_local
from fl.config import Config, ConfigError
from fl.data import Encoded, collate, encode, load_task
from fl.kd import attention_loss, kd_loss
from fl.partition import public_split
from fl.report import Reporter, check_output_dir, environment, save_pretrained_atomic


def _batches(rows: list[int], batch_size: int, seed: int):
    """Seeded shuffle of positions 0..len(rows)-1, in batches."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def mutual_distill(
    teacher: nn.Module,
    student: nn.Module,
    data_t: Encoded,
    data_s: Encoded,
    cfg: Config,
    teacher_opt: torch.optim.Optimizer,
    seed: int,
    device: torch.device,
) -> dict[str, float]:
    """Teacher and student learn from each other on the same public rows (both tokenizations).

    student: kd_loss(s, t) (+ attention MSE to the mapped teacher layers); teacher: kd_loss(t, s).
    The student's optimizer is fresh each round, since its weights were just replaced by the average.
    """
    torch.manual_seed(seed)  # dropout masks
    student_opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr)
    attn = cfg.kd_attention_weight > 0
    teacher.train()
    student.train()
    sums, n = {"student": 0.0, "teacher": 0.0}, 0
    for epoch in range(cfg.kd_epochs):
        for pos in _batches(list(range(len(data_s))), cfg.batch_size, seed + epoch):
            bt, bs = _to(collate(data_t, pos), device), _to(collate(data_s, pos), device)
            labels = bs.pop("labels")
            bt.pop("labels")
            t_out = teacher(**bt, output_attentions=attn)
            s_out = student(**bs, output_attentions=attn)
            opts = dict(alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)
            loss_s = kd_loss(s_out.logits, t_out.logits.detach(), labels, **opts)
            if attn:
                t_maps = [a.detach() for a in t_out.attentions]
                loss_s = loss_s + cfg.kd_attention_weight * attention_loss(
                    s_out.attentions, t_maps, bs["attention_mask"]
                )
            loss_t = kd_loss(t_out.logits, s_out.logits.detach(), labels, **opts)
            student_opt.zero_grad(set_to_none=True)
            teacher_opt.zero_grad(set_to_none=True)
            (loss_s + loss_t).backward()  # the two graphs are disjoint (each sees the other detached)
            student_opt.step()
            teacher_opt.step()
            sums["student"] += float(loss_s.detach()) * labels.numel()
            sums["teacher"] += float(loss_t.detach()) * labels.numel()
            n += labels.numel()
    return {f"kd_{k}_loss": v / max(n, 1) for k, v in sums.items()}


def learn_from_targets(
    model: nn.Module,
    data: Encoded,
    targets: torch.Tensor,
    cfg: Config,
    opt: torch.optim.Optimizer,
    seed: int,
    device: torch.device,
) -> float:
    """The teacher learns from the clients' ensemble logits [P, K] on the public rows; mean loss."""
    torch.manual_seed(seed)  # dropout masks
    model.train()
    total, n = 0.0, 0
    for epoch in range(cfg.kd_epochs):
        for pos in _batches(list(range(len(data))), cfg.batch_size, seed + epoch):
            batch = _to(collate(data, pos), device)
            labels = batch.pop("labels")
            logits = model(**batch).logits
            loss = kd_loss(logits, targets[pos].to(device), labels, alpha=cfg.kd_alpha, temperature=cfg.kd_temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * labels.numel()
            n += labels.numel()
    return total / max(n, 1)


def teacher_run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / (cfg.run_name or f"teacher-{cfg.task}-seed{cfg.seed}")


def pretrain_teacher(cfg: Config) -> dict[str, Any] | None:
    """`fl pretrain-teacher`: fine-tune teacher_model on the public slice, evaluate, save.

    Under torchrun rank 0 does the work and the other ranks wait for it.
    """
    start = time.perf_counter()
    rt = comm.init(cfg.device, cfg.num_threads)
    try:
        doc = _pretrain(cfg, rt, start) if rt.is_main else None
    except BaseException:
        comm.shutdown(clean=False)
        raise
    comm.shutdown()
    return doc


def _pretrain(cfg: Config, rt: comm.Runtime, start: float) -> dict[str, Any]:
    task = load_task(cfg)
    public, _ = public_split(len(task.train), cfg.teacher_data_pct)
    if len(public) == 0:
        raise ConfigError("the public slice is empty; set teacher_data_pct > 0 (e.g. 20) to pre-train a teacher")
    models.quiet_transformers()
    path = models.resolve_model(cfg.teacher_model)
    tokenizer = models.load_tokenizer(path)
    teacher = models.load_classifier(path, task.num_labels, cfg.seed).to(rt.device)
    run_dir = teacher_run_dir(cfg)
    check_output_dir(run_dir)
    reporter = Reporter(run_dir / "teacher_metrics.json")
    train_enc = encode(tokenizer, task.train.subset(public), cfg.max_length)
    test_enc = encode(tokenizer, task.test, cfg.max_length)
    reporter.begin(
        cfg.to_dict(),
        environment(rt.backend, rt.world_size, rt.device, rt.num_threads),
        {"teacher_model_path": path, "public_examples": len(public), "teacher_ckpt": str(run_dir / "teacher")},
    )
    reporter.log(
        f"pre-training teacher {path} on {len(public)} public examples for {cfg.teacher_pretrain_epochs} epochs"
    )

    def record(epoch: int, train_loss: float | None, t0: float) -> None:
        m = evaluate(teacher, test_enc, cfg.eval_batch_size, rt.device, task.num_labels)
        rec = {"round": epoch, **{f"test_{k}": v for k, v in m.items()}, "train_loss": train_loss}
        reporter.record({**rec, "time_s": time.perf_counter() - t0})

    record(0, None, time.perf_counter())
    for epoch in range(1, cfg.teacher_pretrain_epochs + 1):
        t0 = time.perf_counter()
        res = train_local(
            teacher,
            train_enc,
            lr=cfg.teacher_lr,
            epochs=1,
            batch_size=cfg.batch_size,
            seed=cfg.seed + epoch,
            device=rt.device,
            weight_decay=cfg.weight_decay,
        )
        record(epoch, res.loss_sum / max(res.examples_seen, 1), t0)
    saved = save_pretrained_atomic(teacher, tokenizer, run_dir / "teacher")
    reporter.log(f"teacher saved to {saved}; use teacher_ckpt={saved}")
    reporter.finish(time.perf_counter() - start)
    return reporter.doc
