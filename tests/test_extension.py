"""fl as a library: a stateful part and a task written here (not in fl/), run from Python and under
torchrun, by dotted path from a recipe outside the repository, resumed bit for bit; a user
aggregator that gathers; FedProx written outside fl; `fl.run`'s Result; a callback that stops; bad
components; the worked examples of docs/extending.md.

Run as a script (`torchrun ... tests/test_extension.py OUT MODEL TRAIN TEST`), this file is the
user's program: its own part and task, under torchrun, with `fl.run`.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import fl
from fl.data.labelled import TextDataset
from fl.strategies import Aggregator
from fl.strategies.aggregate import coordinate_median
from fl.strategies.base import ClientContext, ServerStep, State, TrainResult
from fl.tasks.classify import ClassifyTask

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "fedlora.yaml"
METRICS = ("test_loss", "test_accuracy", "train_loss")


# ---- what a user writes -------------------------------------------------------------------------
class Lookahead(fl.Part):
    """Server-side lookahead on the global state (Zhang et al. 2019, "Lookahead Optimizer: k steps
    forward, 1 step back": slow weights, server state) and each client's memory of its last change,
    a share of which it starts its next round from (per-client state): stateful on both sides."""

    name = "lookahead"

    def __init__(self, alpha: float = 0.5, memory: float = 0.1):
        self.alpha, self.memory = alpha, memory
        self.slow: State = {}
        self.steps = 0
        self.last: dict[int, State] = {}  # client -> its last change (on the client's rank)

    def client_start(self, client: int, state: State) -> State:
        mine = self.last.get(client)
        return state if mine is None else {k: v + self.memory * mine[k].to(v.device) for k, v in state.items()}

    def client_finish(self, ctx: ClientContext, end: State, result: TrainResult, model: Any) -> dict[str, State]:
        self.last[ctx.client] = {k: (end[k] - ctx.start[k]).detach().float().cpu() for k in ctx.start}
        return {}  # nothing travels

    def server_step(self, step: ServerStep) -> None:
        if not self.slow:
            self.slow = {k: v.detach().float().clone() for k, v in step.global_state.items()}
        self.slow = {k: s + self.alpha * (step.new[k].float() - s) for k, s in self.slow.items()}
        step.new = {k: v.clone() for k, v in self.slow.items()}
        self.steps += 1
        step.record["lookahead_steps"] = self.steps

    def state(self) -> tuple[State, dict[str, Any]]:
        return dict(self.slow), {"steps": self.steps}

    def load_state(self, tensors: State, extra: dict[str, Any], device: torch.device) -> None:
        self.slow = {k: v.to(device) for k, v in tensors.items()}
        self.steps = int(extra.get("steps", 0))

    def client_state_like(self, global_state: State) -> State | None:
        return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in global_state.items()}

    def client_state(self, client: int) -> State | None:
        return self.last.get(client)

    def load_client_state(self, client: int, state: State) -> None:
        self.last[client] = {k: v.cpu() for k, v in state.items()}


class SentimentRows(ClassifyTask):
    """A user task: sentiment classification over rows made in code (the built-in classifier's
    model, batches and metrics, the user's data)."""

    @classmethod
    def make(cls, max_length: int = 16) -> SentimentRows:
        from tests.conftest import make_sentences

        train, test = make_sentences(200, 1), make_sentences(60, 2)
        rows = [TextDataset.from_lists([t for t, _ in r], [y for _, y in r]) for r in (train, test)]
        return cls.for_rows(rows[0], rows[1], max_length, name="sentiment_rows")  # type: ignore[return-value]


class UserMedian(Aggregator):
    """The coordinate-wise median, written as a user aggregator that gathers every client's change."""

    name = "user_median"
    gathers, weighted = True, False

    def server_step(self, step: ServerStep) -> None:
        got = [m.parts["delta"] for _, m in sorted((step.individual or {}).items()) if m.scalars["accepted"]]
        step.delta = coordinate_median(got)


class StopAfter(fl.Callback):
    def __init__(self, last_round: int = 2):
        self.last_round = last_round

    def on_evaluate(self, run, record):
        return {"seen_by_callback": True}

    def on_round_end(self, run, record):
        if record["round"] >= self.last_round:
            run.stop(f"stopped by the test after round {record['round']}")


# ---- helpers ------------------------------------------------------------------------------------
def base_overrides(model: Path, out: Path, run_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": str(model),
        "num_clients": 4,
        "rounds": 2,
        "batch_size": 16,
        "lr": 5e-3,
        "max_length": 16,
        "lora_r": 4,
        "teacher_data_pct": 20,
        "output_dir": str(out),
        "run_name": run_name,
        "num_threads": 1,
        "precision": "fp32",
        **extra,
    }


def csv_overrides(tiny_task) -> dict[str, Any]:
    return {"task": "csv", "train_file": str(tiny_task[0]), "test_file": str(tiny_task[1])}


def same_metrics(a: list[dict], b: list[dict], loss_tol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=1e-6)
        assert x["test_loss"] == pytest.approx(y["test_loss"], abs=loss_tol)


def torchrun(args: list[str], cwd: Path, nproc: int = 3) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def script_main(out: str, model: str) -> None:
    """This file as the user's program under torchrun: its own part and task, through `fl.run`."""
    cfg = fl.load_config(RECIPE, **base_overrides(Path(model), Path(out), "dist"))
    fl.run(cfg, parts=[Lookahead()], task=SentimentRows.make())


# ---- tests --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_user_part_and_task_run_alike_in_one_process_and_under_torchrun(tmp_path, tiny_model_dir):
    cfg = fl.load_config(RECIPE, **base_overrides(tiny_model_dir, tmp_path, "sim"))
    sim = fl.run(cfg, parts=[Lookahead()], task=SentimentRows.make())
    assert [r["lookahead_steps"] for r in sim.records[1:]] == [1, 2]
    assert sim.doc["test_examples"] == 60 and sim.doc["config"]["task"] == "rotten_tomatoes"  # the object won
    torchrun([str(Path(__file__)), str(tmp_path), str(tiny_model_dir)], cwd=ROOT)
    dist = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert dist["env"]["world_size"] == 3 and dist["env"]["rank0_model"] == "trainable state only"
    same_metrics(sim.records, dist["rounds"], loss_tol=1e-4)  # the tolerance of tests/test_server.py
    assert [r["lookahead_steps"] for r in dist["rounds"][1:]] == [1, 2]


@pytest.mark.slow
def test_a_resumed_run_with_the_user_part_equals_an_uninterrupted_one_bit_for_bit(tmp_path, tiny_model_dir, tiny_task):
    over = {**base_overrides(tiny_model_dir, tmp_path, "whole", rounds=3), **csv_overrides(tiny_task)}
    whole = fl.run(fl.load_config(RECIPE, **over), parts=[Lookahead()])
    first = fl.run(fl.load_config(RECIPE, **{**over, "run_name": "parts", "rounds": 1}), parts=[Lookahead()])
    assert first.status == "completed" and len(first.records) == 2
    ckpt = tmp_path / "parts" / "checkpoints" / "round-0001" / "state.safetensors"
    from safetensors.torch import load_file

    saved = load_file(ckpt)
    assert any(k.startswith("server.lookahead.") for k in saved)  # the part's server state
    assert any(k.startswith("client.0.lookahead.") for k in saved)  # and each client's
    rest = fl.run(fl.load_config(RECIPE, **{**over, "run_name": "parts", "resume": "true"}), parts=[Lookahead()])
    for k in whole.state:
        assert torch.equal(whole.state[k], rest.state[k]), k
    for x, y in zip(whole.records, rest.records, strict=True):
        assert {k: x.get(k) for k in (*METRICS, "lookahead_steps")} == {
            k: y.get(k) for k in (*METRICS, "lookahead_steps")
        }
    # without the part, the checkpoint does not fit: one clear error
    with pytest.raises(fl.ConfigError, match="written by the parts"):
        fl.run(fl.load_config(RECIPE, **{**over, "run_name": "parts", "resume": "true", "rounds": 4}))


@pytest.mark.slow
def test_a_recipe_outside_the_repo_names_the_part_by_dotted_path_under_torchrun(tmp_path, tiny_model_dir, tiny_task):
    folder = tmp_path / "my_project"
    folder.mkdir()
    header = (
        "from typing import Any\n\nimport torch\n\nimport fl\nfrom fl.strategies.base import ClientContext, "
        "ServerStep, State, TrainResult\n\n\n"
    )
    (folder / "my_algos.py").write_text(header + inspect.getsource(Lookahead))
    recipe = {"scheme": "fedlora", "parts": [{"_component_": "my_algos.Lookahead", "alpha": 0.5}]}
    recipe.update(base_overrides(tiny_model_dir, tmp_path / "out", "dotted"))
    recipe.update(csv_overrides(tiny_task))
    import yaml

    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    torchrun(["-m", "fl", "run", "recipe.yaml"], cwd=folder)
    doc = json.loads((tmp_path / "out" / "dotted" / "results.json").read_text())
    assert [r["lookahead_steps"] for r in doc["rounds"][1:]] == [1, 2]
    assert doc["config"]["parts"] == [{"_component_": "my_algos.Lookahead", "alpha": 0.5}]


@pytest.mark.slow
def test_a_user_aggregator_that_gathers_works_like_the_builtin_median(tmp_path, tiny_model_dir, tiny_task):
    over = {**base_overrides(tiny_model_dir, tmp_path, "builtin"), **csv_overrides(tiny_task)}
    builtin = fl.run(fl.load_config(RECIPE, **over, aggregation="median"))
    user = fl.run(fl.load_config(RECIPE, **{**over, "run_name": "user"}), parts=[UserMedian()])
    for k in builtin.state:
        assert torch.equal(builtin.state[k], user.state[k]), k
    same_metrics(builtin.records, user.records)
    with pytest.raises(fl.ConfigError, match="is one already"):  # two aggregators
        fl.run(fl.load_config(RECIPE, **{**over, "run_name": "both", "aggregation": "median"}), parts=[UserMedian()])


@pytest.mark.slow
def test_fedprox_written_outside_fl_gives_the_builtin_metrics(tmp_path, tiny_model_dir, tiny_task):
    over = {**base_overrides(tiny_model_dir, tmp_path, "builtin"), **csv_overrides(tiny_task)}
    builtin = fl.run(fl.load_config(RECIPE, **over, prox_mu=0.5))
    spec = [{"_component_": "docs.examples.fedprox.FedProx", "mu": 0.5}]
    user = fl.run(fl.load_config(RECIPE, **{**over, "run_name": "user", "parts": spec}))
    same_metrics(builtin.records, user.records)  # train_loss differs: the loss term counts the penalty


@pytest.mark.slow
def test_fl_run_returns_the_records_of_results_json_and_a_state_that_loads(tmp_path, tiny_model_dir, tiny_task):
    from fl import models
    from fl.strategies import model_spec
    from fl.tasks import build_task

    cfg = fl.load_config(RECIPE, **base_overrides(tiny_model_dir, tmp_path, "api"), **csv_overrides(tiny_task))
    result = fl.run(cfg)
    doc = json.loads((tmp_path / "api" / "results.json").read_text())
    assert isinstance(result, fl.Result) and result.status == "completed" and result.records == doc["rounds"]
    assert result.run_dir == tmp_path / "api" and result.model_path == tmp_path / "api" / "adapter"
    model, _, _ = build_task(cfg).build_model(model_spec(cfg))
    models.set_trainable_state(model, result.state)  # every name and shape fits the model
    for k, v in models.get_trainable_state(model).items():
        assert torch.equal(v, result.state[k])
    with pytest.raises(fl.ConfigError, match="already holds a run"):  # a notebook cell run twice
        fl.run(cfg)


@pytest.mark.slow
def test_a_callback_that_stops_after_round_2_leaves_a_valid_resumable_run(tmp_path, tiny_model_dir, tiny_task):
    over = {**base_overrides(tiny_model_dir, tmp_path, "stop", rounds=4), **csv_overrides(tiny_task)}
    got = fl.run(fl.load_config(RECIPE, **over), callbacks=[StopAfter(2)])
    assert [r["round"] for r in got.records] == [0, 1, 2] and got.stopped_early.startswith("stopped by the test")
    assert all(r["seen_by_callback"] for r in got.records)  # a key the callback added, in results.json too
    doc = json.loads((tmp_path / "stop" / "results.json").read_text())
    assert doc["status"] == "completed" and doc["stopped_early"] and (tmp_path / "stop" / "adapter").is_dir()
    assert (tmp_path / "stop" / "checkpoints" / "round-0002" / "meta.json").is_file()
    more = fl.run(fl.load_config(RECIPE, **over, resume="true"))
    assert [r["round"] for r in more.records] == [0, 1, 2, 3, 4] and more.stopped_early is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("parts=[{_component_: no_such_module.Part}]", "parts[0]: 'no_such_module.Part' names no module"),
        ("parts=[{_component_: fl.strategies.FedProx, muu: 1}]", "parts[0]: fl.strategies.FedProx takes no argument"),
        (
            "parts=[{_component_: fl.output.callbacks.EarlyStopping}]",
            "parts[0]: fl.output.callbacks.EarlyStopping is not an fl.Part",
        ),
        ("callbacks=[{_component_: fl.strategies.FedProx, mu: 1}]", "callbacks[0]: fl.strategies.FedProx is not an"),
        ("parts=[{_component_: fl.strategies.FedProx, mu: -1}]", "parts[0]: fl.strategies.FedProx: prox_mu=-1"),
        ("parts=[{_component_: feddyn}]", "feddyn needs feddyn_alpha > 0"),
        ("task={_component_: fl.output.callbacks.EarlyStopping}", "task: a EarlyStopping is not an fl.Task"),
        ("parts=[{_component_: fl.config.fields.BIG}]", "is a int, not a class or function"),
        ("parts=[{mu: 1}]", "parts[0]: {'mu': 1} is not a component"),
    ],
)
def test_a_bad_component_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, tiny_overrides, spec, message):
    from fl.cli import main

    code = main(["run", str(RECIPE), *tiny_overrides, f"output_dir={tmp_path}", spec])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not any(tmp_path.iterdir())


def test_config_refuses_wrong_types_and_unknown_keys_when_built():
    with pytest.raises(fl.ConfigError, match="lr='1e-3' is a str, not a float"):
        fl.Config(lr="1e-3")
    with pytest.raises(fl.ConfigError, match="unknown config key 'lrr'; did you mean lr"):
        fl.Config(lrr=1e-3)
    with pytest.raises(fl.ConfigError, match="rounds=True is a bool"):
        fl.Config(rounds=True)
    assert fl.Config(lr=1).lr == 1.0 and isinstance(fl.Config(lr=1).lr, float)
    assert fl.load_config({"lr": "1e-3"}, rounds="2").lr == 1e-3  # text is converted where a recipe gives it


@pytest.mark.slow
def test_the_worked_examples_run_from_their_recipes(tmp_path, tiny_overrides):
    from fl.cli import main

    for name in ("krum", "fedprox", "target"):
        recipe = ROOT / "docs" / "examples" / f"{name}.yaml"
        assert main(["run", str(recipe), *tiny_overrides, f"output_dir={tmp_path}", f"run_name={name}"]) == 0
    krum = json.loads((tmp_path / "krum" / "results.json").read_text())
    assert all(r["krum_clients"] == 4 for r in krum["rounds"][1:])  # every client's own change reached Krum
    target = json.loads((tmp_path / "target" / "results.json").read_text())
    reached = [r["round"] for r in target["rounds"] if r["target_reached"]]
    assert len(target["rounds"]) == (reached[0] + 1 if reached else 6)  # stopped right after the first hit


@pytest.mark.slow
def test_the_worked_examples_run_from_a_python_script_under_torchrun(tmp_path, tiny_overrides):
    script = ROOT / "docs" / "examples" / "experiment.py"
    proc = torchrun([str(script), *tiny_overrides, f"output_dir={tmp_path}", "run_name=script"], cwd=ROOT)
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    doc = json.loads((tmp_path / "script" / "results.json").read_text())
    assert last["test_accuracy"] == doc["rounds"][-1]["test_accuracy"] and doc["env"]["world_size"] == 3
    assert all("krum_clients" in r and "target_reached" in r for r in doc["rounds"][1:])


def test_the_public_api_names():
    assert set(fl.__all__) == {
        "run",
        "load_config",
        "evaluate",
        "Config",
        "Result",
        "Part",
        "ClientTerm",
        "Task",
        "Callback",
        "EarlyStopping",
        "ConfigError",
        "RunStopped",
    }
    assert fl.callbacks.EarlyStopping is fl.EarlyStopping  # the module's old name still answers
    for name in fl.__all__:
        assert getattr(fl, name) is not None


if __name__ == "__main__":  # the user's program, under torchrun (see the module docstring)
    script_main(*sys.argv[1:3])
