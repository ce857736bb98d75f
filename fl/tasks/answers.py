"""Reading answers out of generated text, as the peers whose numbers fl's are compared with read them.

- GSM8K (lm-evaluation-harness, lm_eval/tasks/gsm8k/gsm8k.yaml): `strict-match` takes the first
  "#### N"; `flexible-extract` the last number-like run; both compared by `exact_match` after
  removing commas, "$", everything up to "#### " and a final ".", case-insensitive; no match is
  "[invalid]" (the harness's `RegexFilter` fallback).
- MMLU as FlowerTune's general-NLP board scores it (flwrlabs/flower,
  benchmarks/flowertune-llm/evaluation/general-nlp/utils.py, `format_answer` / `clean_mcq_answer`):
  the reply lower-cased, the line after a "\\n##" if there is one, every non-alphanumeric
  character a space, stripped, non-ASCII dropped, its first character; a letter a-e is the
  prediction, anything else counts as the whole reply (so it never equals the gold letter).
"""

from __future__ import annotations

import re

INVALID = "[invalid]"
GSM8K_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")


def _take(match: str | tuple[str, ...]) -> str:
    """The harness's RegexFilter on one match: the first non-empty group of a tuple, stripped."""
    if isinstance(match, tuple):
        match = next((m for m in match if m), match[0])
    return match.strip()


def gsm8k_strict(text: str) -> str:
    found = GSM8K_STRICT.findall(text)
    return _take(found[0]) if found else INVALID


def gsm8k_flexible(text: str) -> str:
    found = GSM8K_FLEXIBLE.findall(text)
    return _take(found[-1]) if found else INVALID


def gsm8k_normal(text: str) -> str:
    """`exact_match`'s view of an answer: the ignored patterns removed, lower case."""
    for pattern in GSM8K_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def gsm8k_correct(prediction: str, reference: str) -> bool:
    """Exact match after the harness's normalisation (`reference`: the dataset's answer, "... #### 72")."""
    return gsm8k_normal(prediction) == gsm8k_normal(reference)


def flowertune_choice(reply: str) -> str:
    """FlowerTune's prediction from a model's reply to a lettered question (see the module docstring)."""
    output = reply.lower()
    if "\n##" in output:
        parts = output.split("\n##")
        output = parts[1].split("\n")[0].strip().lower() if len(parts) > 1 else output
    output = re.sub(r"[^a-zA-Z0-9]", " ", output).strip()
    output = re.sub(" +", " ", output)
    cleaned = output.encode("ascii", "ignore").decode("ascii")
    first = cleaned[:1]  # FlowerTune also lists "yes" / "no", which one character never equals
    return first if first in ("a", "b", "c", "d", "e") else reply.lower()
