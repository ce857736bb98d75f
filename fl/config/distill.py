"""The `kd` section of the config. Knowledge distillation (scheme=fedkdlora and `fl pretrain-teacher`):
the teacher, the students and the distillation's knobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from fl.config.fields import BIG
from fl.config.fields import config_field as _f
from fl.errors import ConfigError

KD_PLACEMENTS = ("server", "clients")


@dataclass
class DistillSection:
    """Knowledge distillation (scheme=fedkdlora and `fl pretrain-teacher`): the teacher, the students
    and the distillation's knobs.
    """

    SECTION = "kd"

    teacher_model: str = _f("embedded", "pretrain-teacher: hub name or folder the teacher is fine-tuned from")
    teacher_ckpt: str | None = _f(
        None, "fedkdlora: the pre-trained teacher (folder written by `fl pretrain-teacher`, or a hub name)"
    )
    teacher_pretrain_epochs: int = _f(3, "pretrain-teacher: epochs on the public slice", lo=1, hi=10_000)
    teacher_lr: float = _f(5e-5, "pretrain-teacher: AdamW learning rate (full fine-tuning)", lo=0, hi=10, open_lo=True)
    student_layers: int | None = _f(
        None,
        "fedkdlora: build the student from teacher_ckpt keeping k evenly spaced layers; unset: use model",
        lo=1,
        hi=10_000,
    )
    kd_placement: str = _f(
        "server",
        "server: mutual distillation on rank 0 after averaging (the original); clients: teacher logits go "
        "to the clients, their student logits come back",
        KD_PLACEMENTS,
    )
    kd_epochs: int = _f(1, "distillation epochs per round over the round's public examples", lo=1, hi=10_000)
    kd_public_examples: int | None = _f(
        512, "public examples distilled on per round (a seeded sample of the public slice); unset: all", lo=1, hi=BIG
    )
    distill_lr: float = _f(
        2e-5, "AdamW learning rate of the teacher while it learns from the student", lo=0, hi=10, open_lo=True
    )
    kd_alpha: float = _f(0.5, "weight of the T^2-scaled KL term; 1 - kd_alpha weighs cross-entropy", lo=0, hi=1)
    kd_temperature: float = _f(2.0, "distillation temperature T", lo=0, hi=1000, open_lo=True)
    kd_top_k: int = _f(
        32,
        "causal_lm KD: the teacher's k most likely tokens per position travel (probabilities and ids)",
        lo=1,
        hi=1_000_000,
    )
    kd_attention_weight: float = _f(
        0.0, "weight of the attention-map MSE term (student layer i <-> teacher i*Lt/Ls)", lo=0, hi=1e6
    )

    def check(self) -> None:
        """The rules of this section that one key's kind cannot say."""
        if not self.teacher_model.strip():
            raise ConfigError("teacher_model is empty; give a value (see `fl run --help`)")
        if self.scheme == "fedkdlora" and not self.teacher_ckpt:
            raise ConfigError(
                "scheme=fedkdlora needs teacher_ckpt=<folder>; make one with `fl pretrain-teacher <recipe>`"
            )
        if self.scheme == "fedkdlora" and self.teacher_data_pct <= 0:
            raise ConfigError("scheme=fedkdlora needs a public slice: set teacher_data_pct > 0 (e.g. 20)")
        if self.task_kind == "causal_lm" and self.kd_attention_weight > 0:
            raise ConfigError("kd_attention_weight works with classifiers; set it to 0 for task_kind=causal_lm")
