"""Interrupted runs leave a valid results.json with their status; set-up errors under torchrun are
one line from rank 0, exit code 2 on every rank, and no rank's traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import RECIPE, ROOT, run_torchrun

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_leaves_valid_results_marked_interrupted(tmp_path, tiny_overrides, sig):
    over = [o for o in tiny_overrides if not o.startswith(("output_dir", "rounds"))]
    over += [f"output_dir={tmp_path}", "rounds=200"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fl", "run", str(RECIPE), *over],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    results = tmp_path / "tiny" / "results.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until round 1 is on disk
        if results.exists() and len(json.loads(results.read_text())["rounds"]) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err
    name = f"received {signal.Signals(sig).name}"
    assert name in errors[0] and "run the same command with resume=true" in errors[0]
    assert "torchrun" not in errors[0]  # the launcher that was actually used
    doc = json.loads(results.read_text())  # strict JSON, whole
    assert doc["status"] == "interrupted" and name in doc["status_reason"]
    assert [r["round"] for r in doc["rounds"]] == list(range(len(doc["rounds"])))


def test_setup_error_under_torchrun_is_one_line_from_rank0(tmp_path, tiny_overrides):
    over = [o for o in tiny_overrides if not o.startswith("output_dir")] + [f"output_dir={tmp_path}", "lr=-1"]
    proc = run_torchrun(3, over)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert errors == ["error: lr=-1.0 is out of range; give a value in (0, 10]"]
    assert "[rank" not in proc.stderr  # no rank printed a traceback
    assert proc.stderr.count("exitcode  : 2") == 3  # torchrun's summary: every rank exited 2
    assert not (tmp_path / "tiny").exists()


def test_setup_error_of_one_rank_reaches_rank0(tmp_path, tiny_overrides):
    """A data problem found by the ranks during set-up: still one line, from rank 0."""
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\ngood,1\nbad,\n")
    over = [o for o in tiny_overrides if not o.startswith(("output_dir", "train_file"))]
    proc = run_torchrun(3, [*over, f"output_dir={tmp_path}", f"train_file={bad}"])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "row 2 has an empty label" in errors[0]
    assert proc.stderr.count("exitcode  : 2") == 3 and "[rank" not in proc.stderr
    assert Path(tmp_path / "tiny").exists() is False


def test_a_rank_that_dies_in_setup_is_named_by_rank0s_line(tmp_path, tiny_overrides):
    """A client rank that crashes while loading (not a config error): rank 0, stopped by torchrun, says
    the job stopped in set-up and where the cause is, instead of a bare signal name."""
    over = [o for o in tiny_overrides if not o.startswith("output_dir")] + [f"output_dir={tmp_path}"]
    proc = run_torchrun(3, [*over, "fault_inject=exit:rank=2:round=0"])
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: stopped during set-up (received SIGTERM)")
    assert "its summary names that rank" in errors[0] and "exitcode  : 17" in proc.stderr
    assert not (tmp_path / "tiny").exists()  # nothing written
