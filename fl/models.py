"""Models, whatever the task: find and load a pretrained folder, wrap it with LoRA, get / set its
trainable state. Which model class a task builds is the task's (`fl.tasks`).

The trainable state is a `dict[str, Tensor]` keyed by parameter name: for LoRA the peft adapter
state (LoRA A/B matrices plus the task's head), moved with peft's own `get_peft_model_state_dict`
/ `set_peft_model_state_dict`; for full fine-tuning every parameter. LoRA targets are peft's own
per-architecture defaults unless the config names them.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl import embedded
from fl.config import Config, ConfigError
from fl.hub import hub_reachable, in_hub_cache

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
    """'embedded' / 'smollm2' -> the packaged models (`fl.embedded`); an existing folder -> itself; else a hub name."""
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
            cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules, cfg.seed, freeze_a,
            cfg.lora_modules_to_save,
        )  # fmt: skip
        source = (cfg.teacher_ckpt or "") if cfg.student_layers else cfg.model
        return cls(source, cfg.student_layers, cfg.kd_attention_weight > 0, cfg.seed, spec if lora else None,
                   cfg.model_dropout)  # fmt: skip


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
        task_type=task_type, r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
        modules_to_save=save,
    )  # fmt: skip
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


class ServerModel:
    """Rank 0's stand-in for a LoRA model it neither trains nor scores (a torchrun job's aggregator):
    the trainable state by name and the parameter counts, as rank 1 built them. The base weights,
    transformers' modeling code and peft stay off rank 0 until the final export builds the model.
    `get_trainable_state`, `set_trainable_state`, `count_parameters` and `adapter_layout` take it like a
    model (`layout`: rank 1's `adapter_layout`, its tensors on this rank's device)."""

    def __init__(self, state: dict[str, torch.Tensor], trainable: int, total: int, layout: Any = None):
        self.state, self.counts, self.layout = state, (trainable, total), layout


def adapter_layout(model: Any) -> tuple[dict[str, torch.Tensor], float] | None:
    """(every adapter tensor by peft's key, frozen ones too; the LoRA scale alpha / r) of a peft model
    or a `ServerModel`; None for a model without adapters."""
    if isinstance(model, ServerModel):
        return model.layout
    if not is_peft(model):
        return None
    from peft import get_peft_model_state_dict

    cfg = next(iter(model.peft_config.values()))
    return dict(get_peft_model_state_dict(model)), cfg.lora_alpha / cfg.r


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config")


def default_export_name(model: nn.Module) -> str:
    """The final model's folder: adapter/ for a peft model, model/ for a whole one."""
    return "adapter" if is_peft(model) else "model"


def get_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors that train and travel, keyed by name (views of the parameters, not copies).

    For a peft model: peft's adapter state dict (LoRA A/B and the head), less any frozen tensor.
    """
    if isinstance(model, ServerModel):
        return model.state
    if not is_peft(model):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    from peft import get_peft_model_state_dict

    training = {p.data_ptr() for p in model.parameters() if p.requires_grad}
    return {k: v for k, v in get_peft_model_state_dict(model).items() if v.data_ptr() in training}


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable parameters keyed like `get_trainable_state` (peft renames adapter keys)."""
    if isinstance(model, ServerModel):
        return model.state  # type: ignore[return-value]
    if not is_peft(model):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    by_ptr = {p.data_ptr(): p for p in model.parameters() if p.requires_grad}
    return {k: by_ptr[v.data_ptr()] for k, v in get_trainable_state(model).items()}


def set_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a trainable state in place (copied onto the parameters' device); any missing or
    unexpected key is an error."""
    params = trainable_parameters(model)
    if set(state) != set(params):
        extra, missing = sorted(set(state) - set(params)), sorted(set(params) - set(state))
        raise ValueError(f"trainable state keys differ: unexpected {extra[:3]}, missing {missing[:3]}")
    if wrong := [
        f"{k} {tuple(v.shape)} vs {tuple(params[k].shape)}" for k, v in state.items() if v.shape != params[k].shape
    ]:
        raise ValueError(f"trainable state shapes differ: {wrong[:3]}")
    if is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)  # a partial state (FFA's B only) loads too
        if result.unexpected_keys:
            raise ValueError(f"adapter has unexpected keys {result.unexpected_keys[:3]}")
        return
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name])  # onto the parameter's (or the ServerModel tensor's) own device


def set_base_weights(model: nn.Module, base: dict[str, torch.Tensor]) -> None:
    """FedEx-LoRA: load the frozen weights of the adapted modules (module name -> [d_out, d_in])."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for module, weight in base.items():
            params[f"{module}.base_layer.weight"].copy_(weight)


def layer_stack(model: nn.Module) -> tuple[nn.Module, str]:
    """(parent module, attribute name) of the transformer's list of layers."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        for attr, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == n and attr in ("layer", "layers", "h"):
                return module, attr
    raise ConfigError(
        f"cannot find the layer list of {type(model).__name__}; student_layers works for BERT-like models"
    )


def evenly_spaced(n: int, k: int) -> list[int]:
    """k of n layer indices, evenly spaced from the first (6 of 12 -> 0,2,4,6,8,10; 3 of 6 -> 0,2,4)."""
    return [i * n // k for i in range(k)]


def keep_layers(model: nn.Module, k: int) -> nn.Module:
    """Cut a classifier to k evenly spaced layers (DistilBERT's initialisation), in place."""
    n = model.config.num_hidden_layers
    if not 1 <= k <= n:
        raise ConfigError(f"student_layers={k} must be between 1 and the teacher's {n} layers")
    parent, attr = layer_stack(model)
    layers = getattr(parent, attr)
    setattr(parent, attr, nn.ModuleList([layers[i] for i in evenly_spaced(n, k)]))
    model.config.num_hidden_layers = k
    return model


def check_max_length(model: nn.Module, max_length: int) -> None:
    """max_length must fit the model's position embeddings (512 for BERT)."""
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise ConfigError(
            f"max_length={max_length} exceeds this model's {positions} positions; set max_length={positions} or less"
        )


def snapshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy (trainable-state dicts hold views of live parameters)."""
    return {k: v.detach().clone() for k, v in state.items()}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    if isinstance(model, ServerModel):
        return model.counts
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
