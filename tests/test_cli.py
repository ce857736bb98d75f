"""The command line: --help for both commands, and the real exit code (the catalogue of bad
inputs is tests/test_bad_inputs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fl.cli import main
from fl.config import Config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "fedlora.yaml")


def test_run_help_lists_every_key(capsys):
    import dataclasses

    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert f"  {f.name}=" in text
    assert "torchrun --nproc_per_node" in text


def test_pretrain_teacher_help(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain-teacher", "--help"])
    text = capsys.readouterr().out
    assert "teacher_pretrain_epochs" in text and "teacher_ckpt" in text


def test_console_exit_code_is_2():
    proc = subprocess.run([sys.executable, "-m", "fl", "run", RECIPE, "rounds=zero"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: rounds='zero' is not a valid int"
