"""Answer extraction as the peers do it: GSM8K (lm-evaluation-harness) and FlowerTune's MMLU letter."""

from __future__ import annotations

import pytest

from fl.tasks.answers import INVALID, flowertune_choice, gsm8k_correct, gsm8k_flexible, gsm8k_strict

REFERENCE = "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 1,234"


@pytest.mark.parametrize(
    "reply, strict, flexible",
    [
        ("so she sold 1,234 in all. #### 1,234", "1,234", "1,234"),
        ("It costs $18 in total.", INVALID, "$18"),
        ("The change is -7 degrees.\n#### -7", "-7", "-7"),
        ("No number here.", INVALID, INVALID),
        ("3 apples and 5 pears make 8.", INVALID, "8."),
    ],
)
def test_gsm8k_extraction(reply, strict, flexible):
    assert gsm8k_strict(reply) == strict and gsm8k_flexible(reply) == flexible


def test_gsm8k_exact_match_ignores_commas_dollars_and_a_final_period():
    assert gsm8k_correct("1234", REFERENCE) and gsm8k_correct("$1,234.", REFERENCE)
    assert not gsm8k_correct("1235", REFERENCE) and not gsm8k_correct(INVALID, REFERENCE)


@pytest.mark.parametrize(
    "reply, prediction",
    [
        ("B", "b"),
        ("c) because the ring is commutative", "c"),
        ("  (D).", "d"),
        ("The answer is C", "the answer is c"),  # first character "t": invalid, the whole reply (wrong)
        ("Answer: A", "a"),  # "answer" starts with a: FlowerTune counts it as A
        ("blah\n## B\nmore", "b"),  # the line after "\n##"
        ("", ""),  # nothing: the whole (empty) reply, never a letter
        ("5", "5"),  # a digit: the whole reply
        ("«b»", "b"),  # non-ASCII and punctuation dropped before the first character
    ],
)
def test_flowertune_reads_the_first_character(reply, prediction):
    assert flowertune_choice(reply) == prediction
