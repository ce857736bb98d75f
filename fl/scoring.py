"""`fl eval TARGET --benchmarks ...` and `fl.evaluate(...)`: a causal LM scored on benchmark rows
offline (`fl.data.benchmarks`) by log-likelihood multiple choice (`fl.tasks.choices`): acc and
acc_norm with a 95% interval (1.96 standard errors, the harness's stderr), items per second.

TARGET is a run folder written by `fl run` (its exported adapter or model), a peft adapter folder
(also one trained elsewhere: its `base_model_name_or_path` is loaded under it), a model folder,
'smollm2' (the embedded SmolLM2-135M-Instruct) or a hub name. One process; scoring split over
torchrun ranks and each round's scores inside a federated run are issue 35's next steps.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fl.data.benchmarks import SOURCES, load_benchmark
from fl.errors import ConfigError


def interval(hits: int, n: int) -> float:
    """Half-width of the 95% interval of a mean of n 0/1 scores (1.96 x the sample standard error)."""
    if n < 2:
        return float("nan")
    p = hits / n
    return 1.96 * math.sqrt(p * (1 - p) / (n - 1))


def resolve_target(target: str) -> tuple[str, str | None]:
    """(base model to load, peft adapter folder or None) for a run folder, an adapter, a model or a name."""
    from fl.models import resolve_model

    path = Path(target).expanduser()
    if (path / "results.json").is_file():  # a run folder: what `fl run` exported
        for sub in ("adapter", "model"):
            if (path / sub).is_dir():
                return resolve_target(str(path / sub))
        raise ConfigError(f"run folder {target!r} holds no adapter/ or model/; run it with save_model=true")
    if (path / "adapter_config.json").is_file():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ConfigError(f"adapter {target!r} names no base_model_name_or_path; it cannot be loaded alone")
        return resolve_model(base), str(path)
    return resolve_model(target), None


def load_causal_lm(target: str, device: torch.device) -> tuple[Any, Any, str]:
    """(model in eval mode on `device`, tokenizer, what was loaded); a classifier is a one-line error."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from fl.models import quiet_transformers

    quiet_transformers()
    base, adapter = resolve_target(target)
    try:
        arch = (AutoConfig.from_pretrained(base).architectures or ["?"])[0]
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{target!r} cannot be loaded ({first_line(err)}); give a model folder, smollm2 or a run"
        ) from None
    if not arch.endswith("ForCausalLM"):
        raise ConfigError(f"{target!r} is a {arch}, not a causal language model; give a causal LM (e.g. smollm2)")
    try:
        model = AutoModelForCausalLM.from_pretrained(base).float()  # fp32, whatever the checkpoint's dtype
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        has_tokenizer = adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(adapter if has_tokenizer else base)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{target!r} cannot be loaded ({first_line(err)}); check the folder") from None
    return model.to(device).eval(), tokenizer, base + (f" + adapter {adapter}" if adapter else "")


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def score(model: Any, tokenizer: Any, items: Sequence[Any], device: torch.device) -> dict[str, Any]:
    """acc and acc_norm of `items`, with their intervals and the items scored per second."""
    from fl.tasks.choices import choice_logprobs, pick

    hits = [0, 0]
    t0 = time.perf_counter()
    for item in items:
        picks = pick(choice_logprobs(model, tokenizer, item, device), item.choices)
        hits[0] += picks[0] == item.gold
        hits[1] += picks[1] == item.gold
    seconds = time.perf_counter() - t0
    n = len(items)
    return {
        "n": n,
        "acc": hits[0] / n,
        "acc_ci95": interval(hits[0], n),
        "acc_norm": hits[1] / n,
        "acc_norm_ci95": interval(hits[1], n),
        "items_per_s": n / seconds if seconds else float("nan"),
    }


def evaluate(
    target: str, benchmarks: Sequence[str], limit: int | None = 200, seed: int = 0, shots: int = 0, device: str = "cpu"
) -> dict[str, Any]:
    """Score `target` on each benchmark (a seeded sample of `limit` rows; None: all). Raises
    ConfigError for an unknown benchmark, a classifier, missing rows or more shots than dev rows."""
    unknown = [b for b in benchmarks if b not in SOURCES]
    if unknown or not benchmarks:
        raise ConfigError(f"unknown benchmark {unknown[0] if unknown else ''!r}; choose from {', '.join(SOURCES)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit}: give a row count of at least 1, or None for every row")
    if not 0 <= shots <= 5:
        raise ConfigError(f"shots={shots}: mmlu takes 0 to 5 dev rows before each question")
    rows = {b: load_benchmark(b, limit, seed, shots if b == "mmlu" else 0) for b in benchmarks}  # bad input first
    dev = torch.device(device)
    model, tokenizer, loaded = load_causal_lm(target, dev)
    results = {b: score(model, tokenizer, items, dev) for b, items in rows.items()}
    return {
        "target": target,
        "loaded": loaded,
        "limit": limit,
        "seed": seed,
        "mmlu_shots": shots,
        "device": device,
        "results": results,
    }


def table(doc: dict[str, Any]) -> str:
    """The results as a markdown table."""
    lines = ["| benchmark | n | acc | acc_norm | items/s |", "|---|---|---|---|---|"]
    for name, r in doc["results"].items():
        lines.append(
            f"| {name} | {r['n']} | {r['acc']:.3f} ± {r['acc_ci95']:.3f} | {r['acc_norm']:.3f} ± "
            f"{r['acc_norm_ci95']:.3f} | {r['items_per_s']:.1f} |"
        )
    return "\n".join(lines)
