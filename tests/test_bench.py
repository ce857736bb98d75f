"""Each benchmark's --quick mode runs end to end and writes its report (numbers are never asserted)."""

import json
from pathlib import Path

import pytest

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def test_schemes_quick(tmp_path, tiny_model_dir):
    from bench import schemes

    path = schemes.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc["results"]) == {"FedAvg", "FedLoRA", "FedKDLoRA (server KD)", "FedKDLoRA (client KD)",
                                   "Centralized (1 client, FedLoRA)"}  # fmt: skip
    assert (tmp_path / "rotten_tomatoes-schemes-quick.png").stat().st_size > 0
    assert "machine:" in path.read_text() and "python -m bench.schemes" in path.read_text()


@pytest.mark.skipif(not GLUE.is_dir(), reason="../shared/data/glue not present")
def test_overhead_quick(tmp_path, tiny_model_dir):
    from bench import overhead

    path = overhead.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--data-dir", str(GLUE)])
    doc = json.loads(path.with_suffix(".json").read_text())
    assert {"fedlora/fl, 1 process", "fedavg/fl, 1 process"} <= set(doc)
    assert all(v["ratio"] > 0 for k, v in doc.items() if "/" in k)


def test_scaling_quick(tmp_path, tiny_model_dir):
    from bench import scaling

    path = scaling.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc["runs"]) == {"2", "4"}
    assert all(len(r["peak_memory_per_rank"]) == 3 for r in doc["runs"].values())
