"""A model's trainable state by name: the tensors that train and travel (peft's adapter state for
LoRA, every parameter for full fine-tuning), read and written with peft's own functions; the base
weights FedEx folds into; rank 0's model-free stand-in (`ServerModel`); layer surgery for a
distilled student.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fl.errors import ConfigError


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
    """Cut a model to k evenly spaced layers (DistilBERT's initialisation), in place; each kept layer
    takes its new index, which a decoder's key/value cache goes by."""
    n = model.config.num_hidden_layers
    if not 1 <= k <= n:
        raise ConfigError(f"student_layers={k} must be between 1 and the teacher's {n} layers")
    parent, attr = layer_stack(model)
    layers, kept = getattr(parent, attr), evenly_spaced(n, k)
    setattr(parent, attr, nn.ModuleList([layers[i] for i in kept]))
    for new, layer in enumerate(getattr(parent, attr)):  # a decoder's key/value cache is indexed by layer_idx
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    types = getattr(model.config, "layer_types", None)
    if isinstance(types, list) and len(types) == n:  # per-layer attention kinds (transformers 5), kept alike
        model.config.layer_types = [types[i] for i in kept]
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
