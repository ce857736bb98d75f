"""FedKDLoRA: LoRA students on the clients, a pre-trained teacher on the server, and knowledge
distillation both ways on the server's public slice.

- kd_placement=server (the original): after FedAvg of the client adapters, the teacher and the
  aggregated student distil into each other on the round's public rows; the student after that
  step is the next global model.
- kd_placement=clients: the server sends the teacher's logits on the round's public rows; clients
  add a KL term on them to their cross-entropy; their student logits on the same rows come back
  as an example-weighted mean, and the teacher learns from that ensemble. No private data and no
  client model leaves a client beyond the averaged adapters.

Server-side state (teacher and its optimizer) lives here; the collectives stay in the server loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl import models
from fl.checkpoint import load_optimizer, optimizer_tensors, split_prefix, with_prefix
from fl.client import evaluate, predict
from fl.data import Encoded, TaskData, encode
from fl.report import save_pretrained_atomic
from fl.strategies.base import Strategy
from fl.teacher import learn_from_targets, mutual_distill


@dataclass
class FedKDLoRA(Strategy):
    name: str = "fedkdlora"
    lora: bool = True
    # rank 0 only, filled by setup_server
    teacher: nn.Module | None = None
    teacher_tokenizer: Any = None
    teacher_path: str = ""
    teacher_opt: torch.optim.Optimizer | None = None
    public_t: Encoded | None = None  # public slice, teacher tokenization
    public_s: Encoded | None = None  # public slice, student tokenization
    test_t: Encoded | None = None
    num_labels: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.kd_on_clients = self.cfg.kd_placement == "clients"

    def public_rows(self, round_idx: int, public_size: int) -> list[int]:
        """The round's public rows: a seeded sample, the same on every rank (indices into the slice)."""
        k = self.cfg.kd_public_examples
        if k is None or k >= public_size:
            return list(range(public_size))
        return sorted(random.Random(self.cfg.seed * 7_919 + round_idx).sample(range(public_size), k))

    def setup_server(self, task: TaskData, public_size: int, student_tokenizer: Any, device: torch.device) -> None:
        """Load the teacher, tokenize the public slice and the test split for it (rank 0)."""
        self.teacher, self.teacher_tokenizer, self.teacher_path = models.load_teacher(self.cfg, task.num_labels)
        self.teacher.to(device)
        self.device, self.num_labels = device, task.num_labels
        public = task.train.subset(range(public_size))
        self.public_t = encode(self.teacher_tokenizer, public, self.cfg.max_length)
        self.public_s = encode(student_tokenizer, public, self.cfg.max_length)
        self.test_t = encode(self.teacher_tokenizer, task.test, self.cfg.max_length)
        self.teacher_opt = torch.optim.AdamW(self.teacher.parameters(), lr=self.cfg.distill_lr)

    def teacher_logits(self, rows: list[int]) -> torch.Tensor:
        """[P, K] teacher logits on the public rows (sent to the clients)."""
        return predict(self.teacher, self.public_t.subset(rows), self.cfg.eval_batch_size, self.device)

    def server_update(
        self, student: nn.Module, round_idx: int, rows: list[int], ensemble: torch.Tensor | None
    ) -> dict[str, float]:
        """After aggregation: mutual distillation (server) or the teacher learning from the ensemble."""
        seed = self.cfg.seed * 31 + round_idx
        if self.kd_on_clients:
            loss = learn_from_targets(
                self.teacher, self.public_t.subset(rows), ensemble, self.cfg, self.teacher_opt, seed, self.device
            )
            return {"kd_teacher_loss": loss}
        return mutual_distill(
            self.teacher, student, self.public_t.subset(rows), self.public_s.subset(rows),
            self.cfg, self.teacher_opt, seed, self.device,
        )  # fmt: skip

    def evaluate_extra(self) -> dict[str, float]:
        m = evaluate(self.teacher, self.test_t, self.cfg.eval_batch_size, self.device, self.num_labels)
        return {f"teacher_test_{k}": v for k, v in m.items()}

    def save_extras(self, run_dir: Path, student: nn.Module, student_tokenizer: Any) -> None:
        """teacher/ (save_pretrained) and, for a cut-down student, the student's base model folder
        (student_base/), which the exported adapter names as its base."""
        save_pretrained_atomic(self.teacher, self.teacher_tokenizer, run_dir / "teacher")
        if self.cfg.student_layers:  # the frozen base, rebuilt as at start (same checkpoint, same cut)
            base, _ = models.load_base(self.cfg, self.num_labels)
            path = save_pretrained_atomic(base, student_tokenizer, run_dir / "student_base")
            for peft_cfg in student.peft_config.values():
                peft_cfg.base_model_name_or_path = str(path.resolve())

    def server_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The teacher's weights and its optimizer (it keeps learning across rounds)."""
        opt_tensors, opt_extra = optimizer_tensors(self.teacher_opt)
        tensors = {**with_prefix(self.teacher.state_dict(), "teacher"), **with_prefix(opt_tensors, "teacher_opt")}
        return tensors, {"teacher_opt": opt_extra}

    def load_server_state(self, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
        missing, unexpected = self.teacher.load_state_dict(split_prefix(tensors, "teacher"), strict=False)
        if unexpected or [k for k in missing if "position_ids" not in k]:
            raise ValueError(f"checkpoint teacher does not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
        load_optimizer(self.teacher_opt, split_prefix(tensors, "teacher_opt"), extra["teacher_opt"])
