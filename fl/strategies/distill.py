"""FedKDLoRA's server side: a pre-trained teacher on rank 0 and distillation both ways on the
server's public slice.

- kd_placement=server (the original): after the clients' adapters are averaged, the teacher and
  the aggregated student distil into each other on the round's public rows; the student after
  that step is the next global model.
- kd_placement=clients: the server sends the teacher's logits on the round's public rows; clients
  add a KL term on them to their cross-entropy; their student logits on the same rows come back
  as an example-weighted mean, and the teacher learns from that ensemble. No private data and no
  single client's model leaves a client beyond the averaged adapters.

The teacher, its optimizer and its tokenizations of the public slice and the test split are
built once, in `TeacherServer.load`; the round loop moves the logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl import models
from fl.checkpoint import load_optimizer, optimizer_tensors, split_prefix, with_prefix
from fl.client import evaluate, predict
from fl.data import Encoded, TaskData, encode
from fl.report import save_pretrained_atomic
from fl.teacher import DistillSettings, learn_from_targets, mutual_distill


@dataclass
class TeacherServer:
    """Rank 0's teacher: everything is in place once `load` returns."""

    teacher: nn.Module
    tokenizer: Any
    path: str
    optimizer: torch.optim.Optimizer
    public_t: Encoded  # public slice, teacher tokenization
    public_s: Encoded  # public slice, student tokenization
    test_t: Encoded
    num_labels: int
    device: torch.device
    settings: DistillSettings
    on_clients: bool
    eval_batch_size: int
    seed: int

    @classmethod
    def load(
        cls, cfg: Any, task: TaskData, public_size: int, student_tokenizer: Any, device: torch.device
    ) -> TeacherServer:
        """Load the teacher from teacher_ckpt onto `device`, tokenize the public slice and the test split."""
        teacher, tokenizer, path = models.load_teacher(cfg, task.num_labels)
        teacher.to(device)
        public = task.train.subset(range(public_size))
        return cls(
            teacher=teacher,
            tokenizer=tokenizer,
            path=path,
            optimizer=torch.optim.AdamW(teacher.parameters(), lr=cfg.distill_lr),
            public_t=encode(tokenizer, public, cfg.max_length),
            public_s=encode(student_tokenizer, public, cfg.max_length),
            test_t=encode(tokenizer, task.test, cfg.max_length),
            num_labels=task.num_labels,
            device=device,
            settings=DistillSettings.from_config(cfg),
            on_clients=cfg.kd_placement == "clients",
            eval_batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
        )

    def logits(self, rows: list[int]) -> torch.Tensor:
        """[P, K] teacher logits on the public rows (sent to the clients), on the teacher's device."""
        return predict(self.teacher, self.public_t.subset(rows), self.eval_batch_size, self.device)

    def after_aggregation(
        self, student: nn.Module, round_idx: int, rows: list[int], ensemble: torch.Tensor | None
    ) -> dict[str, float]:
        """Mutual distillation (server placement) or the teacher learning from the clients' ensemble."""
        seed = self.seed * 31 + round_idx
        if self.on_clients:
            assert ensemble is not None, "kd_placement=clients needs the clients' ensemble logits"
            loss = learn_from_targets(
                self.teacher, self.public_t.subset(rows), ensemble, self.settings, self.optimizer, seed, self.device
            )
            return {"kd_teacher_loss": loss}
        return mutual_distill(
            self.teacher, student, self.public_t.subset(rows), self.public_s.subset(rows),
            self.settings, self.optimizer, seed, self.device,
        )  # fmt: skip

    def evaluate(self) -> dict[str, float]:
        m = evaluate(self.teacher, self.test_t, self.eval_batch_size, self.device, self.num_labels)
        return {f"teacher_test_{k}": v for k, v in m.items()}

    def save(self, run_dir: Path, student: nn.Module, student_tokenizer: Any, cut: models.ModelSpec | None) -> None:
        """teacher/ (save_pretrained) and, for a student cut from the teacher (`cut`), the student's
        base model folder (student_base/), which the exported adapter names as its base."""
        save_pretrained_atomic(self.teacher, self.tokenizer, run_dir / "teacher")
        if cut is not None:  # the frozen base, rebuilt as at start (same checkpoint, same cut)
            base, _ = models.load_base(cut, self.num_labels)
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
