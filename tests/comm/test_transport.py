"""Transport end to end on the tiny model: bucketed collectives give the same runs bit for bit
(FedAvg and FedLoRA, simulation and torchrun, buckets smaller than one tensor), compressed updates
run the same in simulation and under torchrun and report the bytes that crossed, and a resumed
top-k run (residuals in the checkpoint) equals an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fl.config.recipe import load_config
from fl.job import run_document as run
from tests.helpers import RECIPE, run_torchrun, whole_and_resumed

pytestmark = pytest.mark.slow


def base(tiny_overrides, tmp_path, *extra) -> list[str]:
    return [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name"))] + [
        f"output_dir={tmp_path}",
        *extra,
    ]


def saved(run_dir) -> dict[str, torch.Tensor]:
    return load_file(next((run_dir / ("adapter" if (run_dir / "adapter").is_dir() else "model")).glob("*.safetensors")))


def losses(run_dir) -> list[float]:
    return [r["test_loss"] for r in json.loads((run_dir / "results.json").read_text())["rounds"]]


@pytest.mark.parametrize("scheme", ["fedlora"])  # every tensor split across buckets: tests/comm/test_comm.py
def test_bucketed_runs_are_bit_identical(scheme, tmp_path, tiny_overrides):
    over = base(tiny_overrides, tmp_path, f"scheme={scheme}", *(["lr=1e-3"] if scheme == "fedavg" else []))
    for bucket in ("0", "0.0001"):  # 0.0001 MB = 26 values: smaller than most tensors
        assert run_torchrun(3, [*over, f"bucket_mb={bucket}", f"run_name=t{bucket}"]).returncode == 0
        run(load_config(RECIPE, [*over, f"bucket_mb={bucket}", f"run_name=s{bucket}"]))
    for kind in ("t", "s"):
        a, b = saved(tmp_path / f"{kind}0"), saved(tmp_path / f"{kind}0.0001")
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert losses(tmp_path / f"{kind}0") == losses(tmp_path / f"{kind}0.0001")


@pytest.mark.parametrize("codec", ["bf16", "int8", "topk"])
def test_compressed_updates_run_alike_everywhere_and_count_their_bytes(codec, tmp_path, tiny_overrides):
    over = base(tiny_overrides, tmp_path, f"update_compression={codec}", "topk_ratio=0.2")
    proc = run_torchrun(3, [*over, "run_name=dist"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    sim = run(load_config(RECIPE, [*over, "run_name=sim"]))
    a, b = saved(tmp_path / "dist"), saved(tmp_path / "sim")
    assert all(torch.equal(a[k], b[k]) for k in a)  # decoded in client order on rank 0 in both
    dist = json.loads((tmp_path / "dist" / "results.json").read_text())
    plain = 4 * sum(v.numel() for v in a.values())  # one fp32 adapter per client
    for rec in dist["rounds"][1:]:
        assert rec["bytes_up"] < 4 * plain and rec["wire_bytes_up"] < rec["bytes_up"] * 40
    assert dist["rounds"][2]["wire_bytes_down"] < dist["rounds"][0]["wire_bytes_down"]  # changes, not states
    assert sim["rounds"][-1]["test_loss"] == pytest.approx(dist["rounds"][-1]["test_loss"], abs=1e-5)


def test_resumed_topk_run_is_bit_identical(tmp_path, tiny_overrides):
    """Top-k's error feedback (the server's and every client's residual) comes back from a checkpoint:
    2 rounds + a resume to 3 equal 3 rounds. In this process (the kill under torchrun is
    tests/test_reliability.py's)."""
    over = base(tiny_overrides, tmp_path, "update_compression=topk", "topk_ratio=0.1", "rounds=3")
    over = [o for o in over if o != "rounds=2"]
    whole_and_resumed(over, tmp_path)
    a, b = saved(tmp_path / "whole"), saved(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(tmp_path / "whole") == losses(tmp_path / "cut")
    state = load_file(tmp_path / "cut" / "checkpoints" / "round-0003" / "state.safetensors")
    assert any(k.startswith("client.") and ".codec." in k for k in state) and any(".codec." in k for k in state)
