"""FedKDLoRA's teacher runtime on rank 0: the pre-trained teacher, its optimizer, and its
tokenizations of the public slice and the test split, built once in `TeacherServer.load`.

- kd_placement=server (the original): after the clients' adapters are averaged, the teacher and
  the aggregated student distil into each other on the round's public rows; the student after
  that step is the next global model.
- kd_placement=clients: the teacher's targets on the round's public rows go to the clients; their
  student logits come back as an example-weighted mean, and the teacher learns from that ensemble.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl.config import Config
from fl.kd.steps import DistillSettings, learn_from_targets, mutual_distill
from fl.models import ModelSpec
from fl.output.checkpoint import load_optimizer, optimizer_tensors, split_prefix, with_prefix
from fl.output.rundir import save_pretrained_atomic


@dataclass
class TeacherServer:
    """Rank 0's teacher: everything is in place once `load` returns."""

    task: Any
    teacher: nn.Module
    tokenizer: Any
    path: str
    optimizer: torch.optim.Optimizer
    public_t: Any  # public slice, teacher tokenization
    public_s: Any  # public slice, student tokenization
    test_t: Any
    device: torch.device
    settings: DistillSettings
    on_clients: bool
    eval_batch_size: int
    seed: int

    @classmethod
    def load(
        cls, cfg: Config, task: Any, public_size: int, student_tokenizer: Any, device: torch.device
    ) -> TeacherServer:
        """Load the teacher from teacher_ckpt onto `device`, tokenize the public slice and the test split."""
        teacher, tokenizer, path = task.load_teacher(cfg.teacher_ckpt or "", cfg.seed, cfg.kd_attention_weight > 0)
        teacher.to(device)
        public = task.train.subset(range(public_size))
        return cls(
            task=task,
            teacher=teacher,
            tokenizer=tokenizer,
            path=path,
            optimizer=torch.optim.AdamW(teacher.parameters(), lr=cfg.distill_lr),
            public_t=task.encode(tokenizer, public),
            public_s=task.encode(student_tokenizer, public),
            test_t=task.encode(tokenizer, task.test),
            device=device,
            settings=DistillSettings.from_config(cfg),
            on_clients=cfg.kd_placement == "clients",
            eval_batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
        )

    def targets(self, rows: list[int]) -> dict[str, torch.Tensor]:
        """The teacher's targets on the public rows (sent to the clients), on the teacher's device."""
        return self.task.kd_targets(self.teacher, self.public_t.subset(rows), self.eval_batch_size, self.device)

    def after_aggregation(
        self, student: nn.Module, round_idx: int, rows: list[int], ensemble: dict[str, torch.Tensor] | None
    ) -> dict[str, float]:
        """Mutual distillation (server placement) or the teacher learning from the clients' ensemble."""
        seed = self.seed * 31 + round_idx
        if self.on_clients:
            assert ensemble is not None, "kd_placement=clients needs the clients' ensemble logits"
            loss = learn_from_targets(
                self.task,
                self.teacher,
                self.public_t.subset(rows),
                ensemble,
                self.settings,
                self.optimizer,
                seed,
                self.device,
            )
            return {"kd_teacher_loss": loss}
        return mutual_distill(
            self.task,
            self.teacher,
            student,
            self.public_t.subset(rows),
            self.public_s.subset(rows),
            self.settings,
            self.optimizer,
            seed,
            self.device,
        )

    def evaluate(self) -> dict[str, float]:
        sums = self.task.eval_sums(self.teacher, self.test_t, self.eval_batch_size, self.device)
        return {f"teacher_test_{k}": v for k, v in self.task.metrics(sums).items()}

    def save(self, run_dir: Path, student: nn.Module, student_tokenizer: Any, cut: ModelSpec | None) -> None:
        """teacher/ (save_pretrained) and, for a student cut from the teacher (`cut`), the student's
        base model folder (student_base/), which the exported adapter names as its base."""
        save_pretrained_atomic(self.teacher, self.tokenizer, run_dir / "teacher")
        if cut is not None:  # the frozen base, rebuilt as at start (same checkpoint, same cut)
            base, _, _ = self.task.build_model(cut)
            path = save_pretrained_atomic(base, student_tokenizer, run_dir / "student_base")
            for peft_cfg in student.peft_config.values():
                peft_cfg.base_model_name_or_path = str(path.resolve())

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The teacher's weights and its optimizer (it keeps learning across rounds)."""
        opt_tensors, opt_extra = optimizer_tensors(self.optimizer)
        tensors = {**with_prefix(self.teacher.state_dict(), "teacher"), **with_prefix(opt_tensors, "teacher_opt")}
        return tensors, {"teacher_opt": opt_extra}

    def load_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        """Restore `state()`; tensors land on the teacher's device."""
        weights = {k: v.to(self.device) for k, v in split_prefix(tensors, "teacher").items()}
        missing, unexpected = self.teacher.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if "position_ids" not in k]:
            raise ValueError(f"checkpoint teacher does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        # torch's load_state_dict moves the moments to each parameter's device (and keeps `step` as saved)
        load_optimizer(self.optimizer, split_prefix(tensors, "teacher_opt"), extra["teacher_opt"])
