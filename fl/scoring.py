"""`fl eval TARGET --benchmarks ...` and `fl.evaluate(...)`: a causal LM scored on benchmark rows
(`fl.data.benchmarks`, offline or from the hub): by log-likelihood multiple choice
(`fl.tasks.choices`: acc and acc_norm) or by what it writes (`fl.tasks.generated`: gsm8k's
exact_match_strict and exact_match_flexible; mmlu_flowertune's acc, invalid and acc_loglik, and acc
per FlowerTune category); each with a 95% interval (1.96 standard errors, the harness's stderr),
items per second.

TARGET is a run folder written by `fl run` (its exported adapter or model), a peft adapter folder
(also one trained elsewhere: its `base_model_name_or_path` is loaded under it), a model folder,
'smollm2' (the embedded SmolLM2-135M-Instruct) or a hub name. Under torchrun every rank scores every
world-th row and rank 0 sums the counts (the same numbers as one process). Each round's scores
inside a federated run: `eval_benchmarks` (fl.tasks.benchmark_rounds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fl.data.benchmarks import BENCHMARKS, GSM8K_MAX_SHOTS, Generated, group_order, load_benchmark, origin
from fl.errors import ConfigError
from fl.tasks.metrics import interval


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
    if not arch.endswith(("ForCausalLM", "LMHeadModel")):  # GPT-2 is a GPT2LMHeadModel
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


def count(
    model: Any,
    tokenizer: Any,
    items: Sequence[Any],
    device: torch.device,
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> dict[str, int]:
    """The items' hit counts ("n" and one count per metric; "n:GROUP" / "acc:GROUP" per category):
    acc and acc_norm of `Choice` items; of `Generated` items those `fl.tasks.generated.generated_hits`
    counts (greedy, at most `max_new_tokens` new tokens where the rule does not set its own),
    `batch_size` items a pass."""
    from fl.tasks.choices import items_logprobs, pick
    from fl.tasks.generated import generated_hits

    if not items:  # a rank's empty share: no metric names, so none is made up
        return {"n": 0}
    if isinstance(items[0], Generated):
        return generated_hits(model, tokenizer, items, device, max_new_tokens, batch_size)
    hits = {"n": len(items), "acc": 0, "acc_norm": 0}
    scored = items_logprobs(model, tokenizer, items, device, batch_size)  # longest first, in batches
    for item, logprobs in zip(items, scored, strict=True):
        picks = pick(logprobs, item.choices)
        hits["acc"] += picks[0] == item.gold
        hits["acc_norm"] += picks[1] == item.gold
    return hits


def score(
    model: Any,
    tokenizer: Any,
    items: Sequence[Any],
    device: torch.device,
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The items' metrics (`count`'s, as rates) with their intervals and the items scored per second."""
    t0 = time.perf_counter()
    hits = count(model, tokenizer, items, device, max_new_tokens, batch_size)
    seconds = time.perf_counter() - t0
    return {**rates(hits), "items_per_s": len(items) / seconds if seconds else float("nan")}


def rates(hits: dict[str, int]) -> dict[str, Any]:
    """Counts as rates with intervals: "n", each metric and its "_ci95"; counts per group ("n:GROUP",
    "acc:GROUP") under "categories", in FlowerTune's order."""
    n = hits["n"]
    out: dict[str, Any] = {"n": n}
    for name, count in hits.items():
        if name != "n" and ":" not in name:
            out[name], out[f"{name}_ci95"] = count / n, interval(count, n)
    groups = sorted((k.split(":", 1)[1] for k in hits if k.startswith("n:")), key=group_order)
    if groups:
        out["categories"] = {g: rates({"n": hits[f"n:{g}"], "acc": hits[f"acc:{g}"]}) for g in groups}
    return out


def evaluate(
    target: str,
    benchmarks: Sequence[str],
    limit: int | None = 200,
    seed: int = 0,
    shots: int = 0,
    device: str = "cpu",
    gsm8k_shots: int = 5,
    max_new_tokens: int = 256,
    source: str = "auto",
) -> dict[str, Any]:
    """Score `target` on each benchmark (a seeded sample of `limit` rows; None: all): `shots` dev rows
    before each MMLU question, `gsm8k_shots` worked solutions before each GSM8K one, at most
    `max_new_tokens` generated for GSM8K, rows from `source` ("auto", "offline", "hub"). Raises
    ConfigError for an unknown benchmark, a classifier, missing rows or more shots than allowed."""
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown or not benchmarks:
        raise ConfigError(f"unknown benchmark {unknown[0] if unknown else ''!r}; choose from {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit={limit}: give a row count of at least 1, or None for every row")
    if not 0 <= shots <= 5:
        raise ConfigError(f"shots={shots}: mmlu takes 0 to 5 dev rows before each question")
    if not 0 <= gsm8k_shots <= GSM8K_MAX_SHOTS:
        raise ConfigError(f"gsm8k_shots={gsm8k_shots}: gsm8k takes 0 to {GSM8K_MAX_SHOTS} worked solutions")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens}: give 1 or more (the harness's gsm8k: 256)")
    k = {"mmlu": shots, "gsm8k": gsm8k_shots}
    rows = {b: load_benchmark(b, limit, seed, k.get(b, 0), source) for b in benchmarks}  # bad input first
    rt = _join_ranks()
    try:
        dev = torch.device(device) if rt is None or device != "cuda" else rt.device
        model, tokenizer, loaded = load_causal_lm(target, dev)
        results = {b: _score_shared(rt, model, tokenizer, items, dev, max_new_tokens) for b, items in rows.items()}
    finally:
        if rt is not None:
            from fl import comm

            comm.shutdown()
    return {
        "target": target,
        "loaded": loaded,
        "limit": limit,
        "seed": seed,
        "mmlu_shots": shots,
        "gsm8k_shots": gsm8k_shots,
        "max_new_tokens": max_new_tokens,
        "rows_from": origin(source),
        "device": device,
        "processes": rt.world_size if rt is not None else 1,
        "results": results,
    }


def _join_ranks() -> Any:
    """Under torchrun: the process group (gloo on CPUs), every rank scoring and the cores shared among
    the node's ranks; else None (one process)."""
    import os

    from fl import comm

    if not comm.launched_by_torchrun():
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    return comm.init(num_threads=max(1, len(os.sched_getaffinity(0)) // local))


def _score_shared(
    rt: Any, model: Any, tokenizer: Any, items: Sequence[Any], device: torch.device, max_new_tokens: int
) -> dict[str, Any]:
    """`score` in one process; under torchrun each rank counts every world-th item, the counts are
    summed on rank 0 and its rates sent to every rank; items/s over the wall time of the slowest rank."""
    if rt is None:
        return score(model, tokenizer, items, device, max_new_tokens)
    from fl import comm
    from fl.job import agree

    comm.barrier(rt)
    t0 = time.perf_counter()
    mine, error = {}, None
    try:
        mine = count(model, tokenizer, items[rt.rank :: rt.world_size], device, max_new_tokens)
    except ConfigError as err:  # e.g. a prompt too long for the model, met on one rank's rows only
        error = err
    agree(rt, error)  # every rank stops together; rank 0 says the first error in one line
    counts = comm.gather_object(rt, mine)  # small dicts; a rank's share may lack a category
    comm.barrier(rt)
    seconds = time.perf_counter() - t0
    result = None
    if rt.is_main:
        total: dict[str, int] = {}
        for part in counts or []:
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
        result = {**rates(total), "items_per_s": len(items) / seconds}
    return comm.broadcast_object(rt, result)


def table(doc: dict[str, Any]) -> str:
    """The results as a markdown table: a line per benchmark and metric (and FlowerTune category)."""
    lines = ["| benchmark | n | metric | score | items/s |", "|---|---|---|---|---|"]
    for name, r in doc["results"].items():
        speed = f"{r['items_per_s']:.2f}"  # two decimals: generation runs well under 1 item/s on a CPU
        parts = [(r, "")] + [(c, f" ({g})") for g, c in r.get("categories", {}).items()]
        for part, label in parts:
            for metric in (k for k in part if f"{k}_ci95" in part):
                lines.append(
                    f"| {name} | {part['n']} | {metric}{label} | {part[metric]:.3f} ± {part[metric + '_ci95']:.3f} "
                    f"| {speed} |"
                )
                speed = ""  # once per benchmark
    return "\n".join(lines)
