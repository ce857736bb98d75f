"""Causal-LM rows (fl.data.lm_rows): every field of a chat or instruction row is checked for its type
before anything runs, one line naming the file, the row and the fix; a JSONL file that opens with a
UTF-8 byte-order mark is read, as a CSV file with one is."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from fl.data.lm_rows import as_messages
from fl.data.sources import load_file_rows
from fl.errors import ConfigError

CFG = SimpleNamespace(
    messages_column="messages", instruction_column="instruction", input_column="input", output_column="output"
)
USER, REPLY = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}


def rows(tmp_path, *records: dict) -> dict:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps(records[0]) + "\n")
    return load_file_rows(str(path), str(test))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"messages": "hello"}, "row 2: 'messages' is str, not a list of turns; give a list of turns, each"),
        ({"messages": [["user", "hi"]]}, "row 2: 'messages' turn 1 is a list, not a mapping"),
        ({"messages": [{"role": "robot", "content": "hi"}, REPLY]}, "row 2: 'messages' turn 1 has role 'robot'"),
        ({"messages": [{"role": "user", "content": 5}, REPLY]}, "row 2: 'messages' turn 1's content is int, not text"),
        ({"messages": []}, "row 2: 'messages' is empty, not a list of turns"),
    ],
)
def test_a_malformed_chat_row_is_one_line(tmp_path, bad, message):
    raw = rows(tmp_path, {"messages": [USER, REPLY]}, bad)
    with pytest.raises(ConfigError, match="train.jsonl") as err:
        as_messages(raw["train"], CFG, str(tmp_path / "train.jsonl"))
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"instruction": ["x"], "output": "yo"}, "row 2: 'instruction' is list, not text; give a string"),
        ({"instruction": "x", "output": None}, "row 2: 'output' is empty, not text"),
        ({"instruction": "x", "input": 3, "output": "yo"}, "row 2: 'input' is int, not text"),
    ],
)
def test_a_malformed_instruction_row_is_one_line(tmp_path, bad, message):
    raw = rows(tmp_path, {"instruction": "a", "input": None, "output": "b"}, bad)
    with pytest.raises(ConfigError) as err:
        as_messages(raw["train"], CFG, "train.jsonl")
    assert message in str(err.value)


def test_a_missing_input_is_fine_and_rows_become_turns(tmp_path):
    raw = rows(tmp_path, {"instruction": "a", "input": None, "output": "b"}, {"instruction": "c", "output": "d"})
    chat = as_messages(raw["train"], CFG, "train.jsonl")
    assert chat["messages"][1] == [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]


def test_a_jsonl_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"instruction": "hi", "output": "yo"}\n{"instruction": "a", "output": "b"}\n')
    raw = load_file_rows(str(path), str(path))
    assert raw["train"].column_names == ["instruction", "output"] and raw["train"][0]["instruction"] == "hi"
