"""The command line: --help, and bad input -> one line on stderr, exit code 2, nothing written."""

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


def _bad(tmp_path, tiny_overrides, extra):
    out = tmp_path / "out"
    over = [o for o in tiny_overrides if not o.startswith(tuple(k.split("=")[0] + "=" for k in extra))] + extra
    return over, out


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["learning_rate=1e-3"], "unknown config key 'learning_rate'"),
        (["task=mnli"], "task='mnli' is not valid"),
        (["teacher_data_pct=100"], "teacher_data_pct=100.0 must be in [0, 100)"),
        (["model=./no/such/model"], "model folder './no/such/model' not found"),
        (["task=sst2", "data_dir=/no/such/glue"], "data_dir='/no/such/glue' is not a folder"),
        (["train_file=/no/such.csv"], "data file '/no/such.csv' not found"),
        (["num_clients=500"], "cannot be split among 500 clients"),
        (["max_train_samples=20", "num_clients=17"], "cannot be split among 17 clients"),
        (["lora_target_modules=nope"], "lora_target_modules ['nope'] name no module"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, tiny_overrides, capsys, extra, needle):
    over, out = _bad(tmp_path, tiny_overrides, extra)
    assert main(["run", RECIPE, *over]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_unwritable_output_dir(tmp_path, tiny_overrides, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    over = [o for o in tiny_overrides if not o.startswith("output_dir")] + [f"output_dir={blocker}"]
    assert main(["run", RECIPE, *over]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_console_exit_code_is_2():
    proc = subprocess.run([sys.executable, "-m", "fl", "run", RECIPE, "rounds=zero"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: rounds='zero' is not a valid int"
