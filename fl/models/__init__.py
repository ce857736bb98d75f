"""Models, whatever the task: `load` finds and builds one (embedded / folder / hub, LoRA through
peft), `state` reads and writes its trainable state by name. Which model class a task builds is
the task's (`fl.tasks`). May import `fl.errors`, `fl.config` and `fl.data` (the embedded packages,
the hub check); never ranks or collectives. The names below are the room's public surface
(`from fl import models; models.get_trainable_state(model)`).
"""

from fl.models.load import (
    EMBEDDED,
    LoraSpec,
    ModelSpec,
    load_pretrained,
    load_tokenizer,
    lora_targets,
    quiet_transformers,
    resolve_model,
    set_dropout,
    wrap_lora,
)
from fl.models.state import (
    ServerModel,
    adapter_layout,
    check_max_length,
    count_parameters,
    default_export_name,
    evenly_spaced,
    get_trainable_state,
    is_peft,
    keep_layers,
    layer_stack,
    set_base_weights,
    set_trainable_state,
    snapshot,
    trainable_parameters,
)

__all__ = [
    "EMBEDDED",
    "LoraSpec",
    "ModelSpec",
    "ServerModel",
    "adapter_layout",
    "check_max_length",
    "count_parameters",
    "default_export_name",
    "evenly_spaced",
    "get_trainable_state",
    "is_peft",
    "keep_layers",
    "layer_stack",
    "load_pretrained",
    "load_tokenizer",
    "lora_targets",
    "quiet_transformers",
    "resolve_model",
    "set_base_weights",
    "set_dropout",
    "set_trainable_state",
    "snapshot",
    "trainable_parameters",
    "wrap_lora",
]
