"""Checkpoints: atomic layout, retention, config checks, optimizer state round trip."""

import json

import pytest
import torch

from fl.config import Config
from fl.errors import ConfigError
from fl.output.checkpoint import (
    complete_checkpoints,
    find_resume_point,
    load_checkpoint,
    load_optimizer,
    optimizer_tensors,
    save_checkpoint,
)


def test_save_keep_and_find_newest(tmp_path):
    cfg = Config(output_dir=str(tmp_path), run_name="r", resume="true")
    mine: list = []  # the checkpoints this run wrote
    for r in (1, 2, 3):
        meta = {"config": cfg.to_dict(), "records": []}
        save_checkpoint(cfg.run_dir, r, {"global.w": torch.full((2,), float(r))}, meta, keep=2, mine=mine)
    (cfg.run_dir / "checkpoints" / ".round-0004.tmp").mkdir()  # a crash mid-write leaves only a temp folder
    names = [p.name for p in complete_checkpoints(cfg.run_dir)]
    assert names == ["round-0002", "round-0003"]
    newest = find_resume_point(cfg)
    tensors, meta = load_checkpoint(newest, cfg)
    assert meta["round"] == 3 and torch.equal(tensors["global.w"], torch.full((2,), 3.0))
    assert json.loads((newest / "meta.json").read_text())["round"] == 3


def test_a_run_prunes_only_the_checkpoints_it_wrote(tmp_path):
    """Stale checkpoints of another run (here rounds 8 and 9) are neither pruned nor mistaken for this run's."""
    cfg = Config(output_dir=str(tmp_path), run_name="r")
    meta = {"config": cfg.to_dict(), "records": []}
    for r in (8, 9):
        save_checkpoint(cfg.run_dir, r, {"w": torch.zeros(1)}, meta, keep=2, mine=[])
    mine: list = []
    for r in (1, 2, 3):
        save_checkpoint(cfg.run_dir, r, {"w": torch.zeros(1)}, meta, keep=1, mine=mine)
    names = [p.name for p in complete_checkpoints(cfg.run_dir)]
    assert names == ["round-0003", "round-0008", "round-0009"] and [p.name for p in mine] == ["round-0003"]


def test_resume_true_without_checkpoint_starts_fresh(tmp_path):
    assert find_resume_point(Config(output_dir=str(tmp_path), resume="true")) is None
    with pytest.raises(ConfigError, match="holds no complete checkpoint"):
        find_resume_point(Config(output_dir=str(tmp_path), resume=str(tmp_path)))


def test_resume_with_another_config_names_the_keys(tmp_path):
    cfg = Config(output_dir=str(tmp_path), run_name="r")
    path = save_checkpoint(cfg.run_dir, 1, {"global.w": torch.ones(1)}, {"config": cfg.to_dict(), "records": []}, 1)
    other = Config(output_dir=str(tmp_path), run_name="r", lr=1e-4, model="elsewhere", rounds=9)
    with pytest.raises(
        ConfigError, match=r"another config: lr \(0.002 -> 0.0001\), model \('embedded' -> 'elsewhere'\)"
    ):
        load_checkpoint(path, other)
    load_checkpoint(path, Config(output_dir=str(tmp_path), run_name="r", rounds=9))  # rounds may change


def test_optimizer_state_round_trip():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    tensors, extra = optimizer_tensors(opt)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=0.5)
    load_optimizer(opt2, tensors, json.loads(json.dumps(extra)))
    for o in (opt, opt2):
        o.param_groups[0]["params"][0].grad = torch.full((3,), 2.0)
        o.step()
    assert torch.equal(p, q)
