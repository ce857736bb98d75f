"""`fl export RUN_DIR [--merge]`: the final global model of a run, ready for the Hugging Face hub.

Without --merge: the adapter (or the full model of FedAvg / FedEx-LoRA), copied with a model card.
With --merge: the adapter merged into its base (peft's `merge_and_unload`), saved with
`save_pretrained` as a standalone model that `AutoModelForSequenceClassification.from_pretrained`
(or, for task_kind=causal_lm, `AutoModelForCausalLM.from_pretrained`) loads. Either way a
`README.md` model card records the federated setting in the Hugging Face model-card format (YAML
metadata, then text).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fl.errors import ConfigError
from fl.output.rundir import save_pretrained_atomic

# the settings a model card names
CARD_KEYS = (
    "scheme",
    "num_clients",
    "clients_per_round",
    "rounds",
    "local_epochs",
    "lr",
    "partition",
    "lora_r",
    "lora_aggregation",
    "server_optimizer",
    "dp_clip",
)


def model_card(doc: dict[str, Any], merged: bool, base: str) -> str:
    """YAML front matter (library, base model, tags, metrics) and a description of the run."""
    cfg, last = doc["config"], doc["rounds"][-1]
    causal = cfg.get("task_kind") == "causal_lm"
    metric = "test_mcc" if cfg.get("task") == "cola" else "test_accuracy"
    if causal and last.get("test_accuracy") is None:
        metric = "test_perplexity"
    peft = not merged and cfg.get("scheme") != "fedavg" and cfg.get("lora_aggregation") != "fedex"
    data = cfg.get("dataset") or cfg.get("task")
    front = [
        "---",
        f"library_name: {'peft' if peft else 'transformers'}",
        f"base_model: {base}",
        f"pipeline_tag: {'text-generation' if causal else 'text-classification'}",
        "tags:\n- federated-learning\n- fl\n" + (f"- {cfg.get('scheme')}\n" if cfg.get("scheme") else "").rstrip(),
        f"datasets:\n- {data}",
        "model-index:",
        f"- name: {Path(cfg.get('output_dir', '.')).name}/{cfg.get('run_name') or 'run'}",
        "  results:",
        f"  - task:\n      type: {'text-generation' if causal else 'text-classification'}",
        f"    dataset:\n      name: {data}\n      type: {data}",
        "    metrics:",
        f"    - type: accuracy\n      value: {last.get('test_accuracy')}",
        f"    - type: {'perplexity' if causal else 'matthews_correlation'}\n      value: "
        f"{last.get('test_perplexity' if causal else 'test_mcc')}",
        "---",
    ]
    rows = "\n".join(
        f"| {r['round']} | {r.get('test_loss')} | {r.get(metric)} | {r.get('bytes_up')} |" for r in doc["rounds"]
    )
    settings = ", ".join(f"{k}={cfg.get(k)}" for k in CARD_KEYS if cfg.get(k) is not None)
    finals = ", ".join(f"{k[5:]} {v}" for k, v in last.items() if k.startswith("test_"))
    body = f"""
# Federated fine-tuning of {base}

Trained with [fl](https://github.com/) ({cfg.get("scheme")}) on `{data}`: {cfg.get("num_clients")} clients,
{cfg.get("rounds")} rounds; {"a standalone model (adapter merged into its base)" if not peft else "a peft adapter"}.

- settings: {settings}
- final test metrics (round {last["round"]}): {finals}
- environment: torch {doc.get("env", {}).get("torch")}, transformers {doc.get("env", {}).get("transformers")},
  peft {doc.get("env", {}).get("peft")}

| round | test loss | {metric} | bytes up |
|---|---|---|---|
{rows}
"""
    return "\n".join(front) + "\n" + body


def head_labels(adapter: Path) -> int:
    """The label count of a saved adapter's classification head."""
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as fh:
        for key in fh.keys():
            if key.endswith(("classifier.weight", "classifier.out_proj.weight", "score.weight")):
                return int(fh.get_slice(key).get_shape()[0])
    raise ConfigError(f"{adapter} holds no classification head; export works for sequence classifiers")


def export(run_dir: str, merge: bool = False, out: str | None = None) -> Path:
    """Write the export folder (default <run_dir>/export) and return it."""
    run = Path(run_dir)
    results = run / "results.json"
    if not results.is_file():
        raise ConfigError(f"{run_dir!r} holds no results.json; give a run folder written by `fl run`")
    doc = json.loads(results.read_text())
    adapter, full = run / "adapter", run / "model"
    if not adapter.is_dir() and not full.is_dir():
        raise ConfigError(f"{run_dir!r} holds no adapter/ or model/; run with save_model=true")
    target = Path(out) if out else run / "export"
    if adapter.is_dir():
        config = json.loads((adapter / "adapter_config.json").read_text())
        base = config.get("base_model_name_or_path") or doc.get("model_path", "")
    else:
        base = doc.get("model_path", "")
    if merge and adapter.is_dir():
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

        if doc["config"].get("task_kind") == "causal_lm":
            base_model = AutoModelForCausalLM.from_pretrained(base)
        else:
            base_model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=head_labels(adapter))
        model = PeftModel.from_pretrained(base_model, adapter).merge_and_unload()
        save_pretrained_atomic(model, AutoTokenizer.from_pretrained(adapter), target)
    else:  # the adapter, or a model that is already whole (FedAvg, FedEx-LoRA's merged export)
        tmp = target.parent / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(adapter if adapter.is_dir() else full, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    merged = merge or not adapter.is_dir()
    (target / "README.md").write_text(model_card(doc, merged, base))
    return target
