"""`fl compare` draws one figure and a table naming the settings that differ; `fl export --merge`
writes a standalone model that predicts as the run's final model."""

from __future__ import annotations

import json

import pytest

from fl.cli import main
from fl.config.recipe import load_config
from fl.job import run_document as run
from fl.output.compare import differing_settings
from tests.helpers import RECIPE


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_model_dir, tiny_task):
    from tests.conftest import make_overrides

    out = tmp_path_factory.mktemp("compare")
    base = [o for o in make_overrides(tiny_model_dir, *tiny_task, out, "x") if not o.startswith("run_name")]
    settings = {"a": ["lr=5e-3"], "b": ["lr=1e-3"], "c": ["lr=5e-3", "lora_r=2"]}
    for name, extra in settings.items():
        run(load_config(RECIPE, [*base, *extra, f"run_name={name}"]))
    return out, base


def test_compare_writes_a_figure_and_a_table_naming_the_differences(three_runs, capsys):
    out, _ = three_runs
    fig = out / "cmp.png"
    assert main(["compare", str(out / "a"), str(out / "b"), str(out / "c"), "--out", str(fig)]) == 0
    assert fig.stat().st_size > 1000 and fig.read_bytes()[:4] == b"\x89PNG"
    table = (out / "cmp.md").read_text()
    assert "lora_r=4, lr=0.005" in table and "lora_r=4, lr=0.001" in table and "lora_r=2, lr=0.005" in table
    assert len([line for line in table.splitlines() if line.startswith("| lora_r")]) == 3
    assert "figure:" in capsys.readouterr().out
    assert main(["compare", str(out / "nowhere")]) == 2
    assert main(["compare", str(out / "a"), "--metric", "no_such_metric", "--out", str(fig)]) == 2


def test_differing_settings():
    assert differing_settings([{"lr": 1, "seed": 1, "output_dir": "x"}, {"lr": 2, "seed": 1, "output_dir": "y"}]) == [
        "lr"
    ]


def test_export_merge_predicts_as_the_final_model(three_runs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tests.conftest import score

    out, base = three_runs
    target = out / "merged"
    assert main(["export", str(out / "a"), "--merge", "--out", str(target)]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(target)
    assert not hasattr(model, "peft_config")  # a plain transformers model
    cfg = load_config(RECIPE, [*base, "run_name=a"])
    m = score(model, AutoTokenizer.from_pretrained(target), cfg)
    final = json.loads((out / "a" / "results.json").read_text())["rounds"][-1]
    assert m["accuracy"] == final["test_accuracy"] and m["loss"] == pytest.approx(final["test_loss"], abs=1e-5)
    card = (target / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "federated-learning" in card
    assert "num_clients=4" in card and f"value: {final['test_accuracy']}" in card
    assert main(["export", str(out / "a")]) == 0  # the adapter, with a peft model card
    assert (out / "a" / "export" / "adapter_config.json").is_file()
    assert "library_name: peft" in (out / "a" / "export" / "README.md").read_text()
