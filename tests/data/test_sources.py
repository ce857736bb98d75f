"""Bad data files: each becomes one line naming the file, the line or row, and the problem."""

from __future__ import annotations

import re

import pytest

from fl.config import Config
from fl.data.labelled import load_labelled
from fl.errors import ConfigError

GOOD_TEST = "text,label\nnice,1\nbad,0\n"


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("tr.csv", b"text,label\ngood,1\n\xff\xfe bad,0\n", "line 3 is not UTF-8 text (byte 0xff)"),
        ("tr.jsonl", b'{"text": "a", "label": 1}\n{"text": "b" "label": 0}\n', "line 2 is not valid JSON"),
        ("tr.jsonl", b'{"text": "a", "label": 1}\n[1, 2]\n', "line 2 is not a JSON object"),
        (
            "tr.csv",
            b"text,label\ngood,1\nbad,\nfine,0\nugly,\n",
            "row 2 has an empty label in column 'label' (2 such rows",
        ),
        ("tr.csv", b"text,label\ngood,1\nbad\nfine,0\n", "row 2 has an empty label"),
        ("tr.csv", b"text,label\ngood,1\n  ,0\n", "row 2 has an empty text in column 'text'"),
        ("tr.csv", b"text,label\ngood,1\nbad,film,0\n", "cannot be read as csv (Error tokenizing data"),
        ("tr.csv", b'text,label\n"' + b"x" * 1_000_001 + b'",1\nok,0\n', "row 1 has a text of 1,000,001 characters"),
        ("tr.csv", b"", "has no rows; the train data of task=csv is empty"),
        ("tr.txt", b"text,label\n", "unsupported extension '.txt'"),
    ],
)
def test_bad_training_file(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    (tmp_path / "te.csv").write_text(GOOD_TEST)
    cfg = Config(task="csv", train_file=str(tmp_path / name), test_file=str(tmp_path / "te.csv"))
    with pytest.raises(ConfigError) as err:
        load_labelled(cfg)
    text = str(err.value)
    assert needle in text and "\n" not in text and name in text


def test_a_folder_given_as_a_file(tmp_path):
    (tmp_path / "te.csv").write_text(GOOD_TEST)
    with pytest.raises(ConfigError, match=re.escape("is a folder; give a data file")):
        load_labelled(Config(task="csv", train_file=str(tmp_path), test_file=str(tmp_path / "te.csv")))


def test_hub_dataset_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot be loaded .the hub is unreachable"):
        load_labelled(Config(task="hf", dataset="someone/no-such-dataset", test_split="validation"))
