"""Finding and building a model, whatever the task: resolve a name (embedded / folder / hub), load
its tokenizer and weights, set its dropout, wrap it with LoRA through peft. Which model class a
task builds is the task's (`fl.tasks`). LoRA targets are peft's own per-architecture defaults
unless the config names them.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl.config import Config
from fl.data import embedded
from fl.data.hub import hub_reachable, in_hub_cache
from fl.errors import ConfigError

EMBEDDED = "embedded"


def quiet_transformers() -> None:
    """Silence load reports, progress bars and deprecation chatter; fl prints its own summary."""
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_model(name: str) -> str:
    """'embedded' / 'smollm2' -> the packaged models (`fl.data.embedded`); an existing folder -> itself;
    else a hub name."""
    if name == EMBEDDED:
        return embedded.minilm_path()
    if name == embedded.SMOLLM2:
        return embedded.smollm2_path()
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model={name!r} is a folder without config.json; save it with save_pretrained")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ConfigError(f"model folder {name!r} not found; give an existing folder, a hub name or 'embedded'")
    if not in_hub_cache(name) and not hub_reachable():
        raise ConfigError(
            f"model {name!r} is not a local folder, not in the hub cache, and the hub is unreachable; "
            "use model=embedded or a folder saved with save_pretrained"
        )
    return name  # a hub name: from_pretrained fetches it, or reads the cache


def _load_error(name: str, err: Exception) -> ConfigError:
    if Path(name).expanduser().is_dir():  # a local folder: the hub has nothing to do with it
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return ConfigError(
            f"model folder {name!r} cannot be loaded ({type(err).__name__}: {first[:200]}); check its config.json "
            "and weights, or save the model again with save_pretrained"
        )
    return ConfigError(
        f"could not load model {name!r} ({type(err).__name__}); it is not a local folder and the hub "
        "is unreachable or has no such model: use model=embedded or a folder saved with save_pretrained"
    )


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # OSError, ValueError, JSON errors from a broken folder
        raise _load_error(path, err) from None
    if tok.pad_token is None:  # decoder models (gpt2, llama) ship without one
        tok.pad_token = tok.eos_token
    return tok


def load_pretrained(auto_class: Any, path: str, **kwargs: Any) -> nn.Module:
    """`auto_class.from_pretrained(path, **kwargs)`, with a one-line error for a folder or name that fails."""
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except Exception as err:  # OSError, ValueError, JSON errors, a truncated weights file
        raise _load_error(path, err) from None


@dataclass(frozen=True)
class LoraSpec:
    """LoRA settings, read from the config once."""

    r: int
    alpha: float
    dropout: float
    targets: str | None  # comma-separated names, "all-linear", or None for the architecture's default
    seed: int
    freeze_a: bool = False  # FFA-LoRA: A stays at its seeded initialisation and does not travel
    modules_to_save: str | None = None  # comma-separated modules that train whole (the head always does)


@dataclass(frozen=True)
class ModelSpec:
    """Which classifier to build, read from the config once."""

    source: str  # `model`, or teacher_ckpt when the student is cut from the teacher
    keep_layers: int | None  # student_layers
    eager_attention: bool  # attention maps for KD
    seed: int
    lora: LoraSpec | None
    dropout: float | None = None  # model_dropout: every dropout rate of the base model (None: the checkpoint's)

    @property
    def adapter(self) -> LoraSpec | None:
        """The adapter that trains (only it and the head travel), or None when every weight trains."""
        return self.lora

    @classmethod
    def from_config(cls, cfg: Config, lora: bool, freeze_a: bool = False) -> ModelSpec:
        spec = LoraSpec(
            cfg.lora_r,
            cfg.lora_alpha,
            cfg.lora_dropout,
            cfg.lora_target_modules,
            cfg.seed,
            freeze_a,
            cfg.lora_modules_to_save,
        )
        source = (cfg.teacher_ckpt or "") if cfg.student_layers else cfg.model
        return cls(
            source, cfg.student_layers, cfg.kd_attention_weight > 0, cfg.seed, spec if lora else None, cfg.model_dropout
        )


def set_dropout(model: nn.Module, p: float) -> nn.Module:
    """Every dropout rate of a (not yet LoRA-wrapped) model at `p`: its `nn.Dropout` modules, the float
    rates attention modules keep for their kernels (e.g. Llama's `attention_dropout`), and the config's,
    so that a saved model says what it trained with. LoRA's own dropout (`lora_dropout`) comes later."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, p)
    for name, value in list(vars(model.config).items()):
        if "dropout" in name and isinstance(value, float):
            setattr(model.config, name, p)
    return model


def lora_targets(override: str | None) -> list[str] | str | None:
    """Module names to adapt: the config's list, peft's "all-linear", or None (peft's per-architecture default)."""
    if override == "all-linear":
        return "all-linear"
    if override:
        return [m.strip() for m in override.split(",") if m.strip()]
    return None


def wrap_lora(model: nn.Module, spec: LoraSpec, task_type: str) -> nn.Module:
    """peft LoRA on the target modules; peft's `task_type` (e.g. SEQ_CLS) keeps the task's head trainable."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(spec.targets)
    if isinstance(targets, list):
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in names]
        if missing:
            raise ConfigError(f"lora_target_modules {missing} name no module of this model; check the names")
    torch.manual_seed(spec.seed)  # LoRA A init, identical on every rank
    save = [m.strip() for m in spec.modules_to_save.split(",") if m.strip()] if spec.modules_to_save else None
    if save:
        names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [m for m in save if m not in names]
        if missing:
            raise ConfigError(f"lora_modules_to_save {missing} name no module of this model; check the names")
    lora = LoraConfig(
        task_type=task_type,
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        modules_to_save=save,
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as err:  # e.g. a module type peft cannot adapt, or no default targets for this architecture
        if targets is None:
            model_type = getattr(model.config, "model_type", "?")
            raise ConfigError(
                f"peft has no default LoRA targets for model_type={model_type!r}; set lora_target_modules=a,b "
                "(e.g. q_lin,v_lin for DistilBERT) or all-linear"
            ) from None
        raise ConfigError(f"lora_target_modules={spec.targets!r}: {str(err).splitlines()[0]}") from None
    if spec.freeze_a:
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.requires_grad_(False)
    return model
