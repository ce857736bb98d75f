"""FedKDLoRA end to end on tiny models: teacher pre-training, both placements under torchrun (gloo),
and the ensemble the teacher learns from checked against a hand replay of the clients."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fl import comm, models
from fl.cli import main
from fl.client.train import LocalSchedule, client_seed, train_local
from fl.config.recipe import load_config
from fl.kd.part import Distillation, DistillTerm, public_rows
from fl.kd.steps import learn_from_targets
from fl.setup import prepare
from fl.strategies.base import ClientContext, RoundPlan
from fl.tasks.classify import predict
from tests.helpers import run_torchrun

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "fedkdlora.yaml"


@pytest.fixture(scope="module")
def kd_setup(tmp_path_factory, tiny_model_dir, tiny_task):
    """Pre-train a tiny teacher with `fl pretrain-teacher`; return the shared overrides."""
    out = tmp_path_factory.mktemp("kd")
    train, test = tiny_task
    common = [
        f"model={tiny_model_dir}",
        f"teacher_model={tiny_model_dir}",
        "task=csv",
        f"train_file={train}",
        f"test_file={test}",
        "num_clients=3",
        "rounds=2",
        "batch_size=16",
        "lr=5e-3",
        "max_length=16",
        "lora_r=4",
        "teacher_data_pct=30",
        "teacher_pretrain_epochs=2",
        "teacher_lr=1e-3",
        "distill_lr=1e-4",
        "student_layers=1",
        "kd_public_examples=24",
        f"output_dir={out}",
        "num_threads=1",
        "partition=dirichlet",
        "dirichlet_alpha=1.0",
    ]
    assert main(["pretrain-teacher", str(RECIPE), *common, "run_name=teacher"]) == 0
    return out, common + [f"teacher_ckpt={out / 'teacher' / 'teacher'}"]


def test_pretrain_teacher_writes_model_and_metrics(kd_setup):
    out, _ = kd_setup
    doc = json.loads((out / "teacher" / "teacher_metrics.json").read_text())
    assert doc["status"] == "completed" and doc["public_examples"] == 60
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    assert (out / "teacher" / "teacher" / "config.json").is_file()
    assert (out / "teacher" / "teacher" / "tokenizer.json").is_file()


@pytest.mark.parametrize("placement", ["server", "clients"])
def test_torchrun_fedkdlora_records_teacher_and_student(kd_setup, placement, tiny_model_dir):
    out, common = kd_setup
    proc = run_torchrun(3, [*common, f"kd_placement={placement}", f"run_name=kd-{placement}"], RECIPE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = out / f"kd-{placement}"
    doc = json.loads((run_dir / "results.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [0, 1, 2]
    for rec in doc["rounds"]:
        for key in ("test_accuracy", "test_loss", "teacher_test_accuracy", "teacher_test_loss", "teacher_test_mcc"):
            assert isinstance(rec[key], float)
    logits = 24 * 2 * 4  # 24 public rows x 2 labels x fp32
    for rec in doc["rounds"][1:]:
        if placement == "clients":
            assert rec["bytes_logits"] == 3 * 2 * logits  # 3 clients, down and up
            assert rec["bytes_up"] == rec["bytes_down"] == 3 * (doc["payload_bytes"] + logits)
            # the collectives: the aggregation error gathers each client's own upload (adapter + logits +
            # 2 + 5 x 3 scalars), as padded rows: 2 client ranks x 2 rows (3 clients, at most 2 a rank); no
            # d_out x d_in product travels. The downlink carries the next round's teacher logits, except
            # after the last round
            assert rec["bytes_products"] == 0
            assert rec["wire_bytes_up"] == 2 * 2 * (doc["payload_bytes"] + logits + (2 + 5 * 3) * 4)
            last = rec["round"] == doc["config"]["rounds"]
            assert rec["wire_bytes_down"] == 2 * (doc["payload_bytes"] + (0 if last else logits))
            assert "kd_teacher_loss" in rec
        else:
            assert rec["bytes_logits"] == 0 and "kd_student_loss" in rec
    assert (run_dir / "teacher" / "config.json").is_file()
    # the exported student adapter loads on its saved 1-layer base with plain peft
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    adapter_cfg = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str((run_dir / "student_base").resolve())
    base = AutoModelForSequenceClassification.from_pretrained(adapter_cfg["base_model_name_or_path"])
    assert base.config.num_hidden_layers == 1
    PeftModel.from_pretrained(base, run_dir / "adapter")


def test_teacher_learns_from_example_weighted_mean_of_client_logits(kd_setup):
    """Replay one clients-placement round by hand: each client's logits on the public rows, their
    example-weighted mean, the teacher's distillation step; compare with the torchrun job's teacher."""
    out, common = kd_setup
    over = [*common, "kd_placement=clients", "rounds=1", "run_name=kd-replay"]
    proc = run_torchrun(3, over, RECIPE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(RECIPE, over)
    torch.set_num_threads(1)
    s = prepare(cfg, comm.Runtime())  # rank 0 of a one-process world: the teacher is loaded too
    teacher = s.strategy.part(Distillation).teacher
    rows = public_rows(cfg.seed, 1, s.public_size, cfg.kd_public_examples)
    targets = teacher.targets(rows)
    public = teacher.public_s.subset(rows)
    glob = {k: v.detach().clone() for k, v in models.get_trainable_state(s.model).items()}
    sent, cpu = [], torch.device("cpu")
    for c in range(cfg.num_clients):
        models.set_trainable_state(s.model, glob)
        data = s.task.encode(s.tokenizer, s.task.train.subset(s.shards[c]))
        ctx = ClientContext(c, RoundPlan(1, (c,), cfg.lr), glob, client_seed(cfg.seed, 1, c), cfg.batch_size, 64, cpu)
        term = DistillTerm(s.task, public, targets, cfg.kd_alpha, cfg.kd_temperature, ctx)
        res = train_local(
            s.model, s.task, data, LocalSchedule(cfg.lr, 1, cfg.batch_size), seed=ctx.seed, device=cpu, terms=[term]
        )
        sent.append((res.num_examples, predict(s.model, public, cfg.eval_batch_size, cpu)))
    ensemble = {"logits": sum(n * z for n, z in sent) / sum(n for n, _ in sent)}
    learn_from_targets(
        s.task,
        teacher.teacher,
        teacher.public_t.subset(rows),
        ensemble,
        teacher.settings,
        teacher.optimizer,
        cfg.seed * 31 + 1,
        torch.device("cpu"),
    )
    saved = load_file(out / "kd-replay" / "teacher" / "model.safetensors")
    mine = teacher.teacher.state_dict()
    for k, v in saved.items():
        torch.testing.assert_close(v, mine[k], atol=1e-5, rtol=0)
