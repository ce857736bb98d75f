"""The bad-input catalogue: each one ends with one line naming the problem and the fix, exit code 2,
and nothing written. The README's troubleshooting table lists the same cases."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fl import comm
from fl.cli import main
from fl.config import ConfigError
from fl.recipe import load_config
from fl.setup import prepare

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "fedlora.yaml")


def _files(tmp: Path, tiny_model_dir: Path) -> dict[str, str]:
    """Bad files and folders the catalogue points at."""
    tmp.mkdir()
    (tmp / "bad.yaml").write_text("scheme: [fedavg\n")
    (tmp / "list.yaml").write_text("- scheme\n- fedavg\n")
    (tmp / "glue").mkdir()
    (tmp / "nocfg").mkdir()
    (tmp / "blocker").write_text("a file, not a folder")
    rows = "text,label\n" + "".join(f"good movie {i},1\nbad movie {i},0\n" for i in range(10))
    (tmp / "ok.csv").write_text(rows)
    (tmp / "empty.csv").write_text("text,label\n")
    (tmp / "oneclass.csv").write_text("text,label\n" + "".join(f"fine {i},1\n" for i in range(10)))
    (tmp / "badlabel.csv").write_text("text,label\nsomething new,7\n")
    (tmp / "nocol.csv").write_text("sentence,label\na,0\nb,1\n")
    from transformers import AutoModelForSequenceClassification

    three = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=3, ignore_mismatched_sizes=True
    )
    three.save_pretrained(tmp / "teacher3")
    names = ["bad.yaml", "list.yaml", "glue", "nocfg", "blocker", "ok.csv", "empty.csv", "oneclass.csv"]
    names += ["badlabel.csv", "nocol.csv", "teacher3"]
    return {k.replace(".", "_"): str(tmp / k) for k in names}


# (id, recipe or None for the default, overrides with {placeholders}, expected message fragment)
CATALOGUE = [
    ("unknown-key", None, ["learning_rate=1e-3"], "unknown config key 'learning_rate'"),
    ("misspelled-key", None, ["lrr=1e-3"], "did you mean lr"),
    ("bad-choice", None, ["scheme=fedprox"], "scheme='fedprox' is not valid; choose one of"),
    ("unknown-task", None, ["task=mnli"], "task='mnli' is not valid"),
    ("wrong-type-int", None, ["rounds=two"], "rounds='two' is not a valid int"),
    ("wrong-type-bool", None, ["save_model=maybe"], "save_model='maybe' is not a valid bool"),
    ("negative-lr", None, ["lr=-1"], "lr=-1.0 is out of range; give a value in (0, 10]"),
    (
        "public-pct-100",
        None,
        ["teacher_data_pct=100"],
        "teacher_data_pct=100.0 is out of range; give a value in [0, 100)",
    ),
    ("malformed-yaml", "{bad_yaml}", [], "is not valid YAML at line"),
    ("recipe-not-mapping", "{list_yaml}", [], "must be a mapping of key: value lines"),
    ("recipe-missing", "{glue}/none.yaml", [], "not found; pass a YAML file"),
    ("override-no-equals", None, ["rounds"], "override 'rounds' is not of the form key=value"),
    ("data-dir-missing", None, ["task=sst2", "data_dir=/no/such/glue"], "data_dir='/no/such/glue' is not a folder"),
    ("data-dir-no-files", None, ["task=sst2", "data_dir={glue}"], "SST-2/train.tsv and dev.tsv"),
    ("csv-without-files", None, ["task=csv", "train_file=none"], "task=csv needs train_file"),
    ("train-file-missing", None, ["train_file=/no/such.csv"], "data file '/no/such.csv' not found"),
    ("text-column-missing", None, ["train_file={nocol_csv}", "test_file={nocol_csv}"], "no column 'text'"),
    ("empty-train", None, ["train_file={empty_csv}"], "training data of task=csv is empty"),
    ("one-class-train", None, ["train_file={oneclass_csv}", "test_file={oneclass_csv}"], "single label"),
    ("unknown-test-label", None, ["test_file={badlabel_csv}"], "label values ['7'] never occur in train_file"),
    (
        "test-repeats-train",
        None,
        ["train_file={ok_csv}", "test_file={ok_csv}"],
        "test sentences also occur in the training data",
    ),
    ("model-folder-missing", None, ["model=./no/such/model"], "model folder './no/such/model' not found"),
    ("model-folder-no-config", None, ["model={nocfg}"], "is a folder without config.json"),
    ("hub-unreachable", None, ["model=nobody/no-such-model"], "the hub is unreachable"),
    ("too-many-clients", None, ["num_clients=500"], "cannot be split among 500 clients"),
    ("lora-targets", None, ["lora_target_modules=nope"], "lora_target_modules ['nope'] name no module"),
    ("unwritable-output", None, ["output_dir={blocker}"], "is not writable"),
    ("kd-without-teacher", None, ["scheme=fedkdlora"], "scheme=fedkdlora needs teacher_ckpt"),
    ("kd-without-public", None, ["scheme=fedkdlora", "teacher_ckpt=x", "teacher_data_pct=0"], "needs a public slice"),
    (
        "student-too-deep",
        None,
        ["scheme=fedkdlora", "teacher_ckpt={model}", "student_layers=5"],
        "student_layers=5 must be between 1 and the teacher's 2 layers",
    ),
    ("teacher-label-count", None, ["scheme=fedkdlora", "teacher_ckpt={teacher3}"], "has 3 labels but the task has 2"),
    ("kd-alpha-range", None, ["kd_alpha=1.5"], "kd_alpha=1.5 is out of range; give a value in [0, 1]"),
    ("bad-fault-spec", None, ["fault_inject=boom"], "fault_inject='boom' is not valid"),
    ("resume-nothing-there", None, ["resume={glue}"], "holds no complete checkpoint"),
    ("bad-run-name", None, ["run_name=a/b"], "run_name='a/b' may hold only"),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input(case, tmp_path, tiny_overrides, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub check answers at once, network or not
    _, recipe, extra, needle = case
    files = {**_files(tmp_path / "f", tiny_model_dir), "model": str(tiny_model_dir)}
    extra = [e.format(**files) for e in extra]
    keys = {e.split("=")[0] for e in extra if "=" in e}
    over = [o for o in tiny_overrides if o.split("=")[0] not in keys] + extra
    out = Path(next(o for o in over if o.startswith("output_dir=")).split("=", 1)[1])
    capsys.readouterr()  # only what main() prints counts
    assert main(["run", (recipe or RECIPE).format(**files), *over]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err, err
    assert len(err.splitlines()) == 1
    assert not (out / "tiny" / "results.json").exists()
    if case[0] != "unwritable-output":
        assert not out.exists()


def test_catalogue_is_large_and_documented():
    assert len(CATALOGUE) >= 25
    readme = (ROOT / "README.md").read_text()
    for case_id, *_ in CATALOGUE:
        assert f"`{case_id}`" in readme, f"README troubleshooting lacks {case_id}"


def test_nproc_that_cannot_host_the_clients(tiny_overrides):
    cfg = load_config(RECIPE, tiny_overrides)  # 4 clients
    with pytest.raises(ConfigError, match=re.escape("torchrun started 5 client ranks for num_clients=4")):
        prepare(cfg, comm.Runtime(rank=1, world_size=6))


def test_resume_refuses_another_config(tmp_path, tiny_overrides, capsys):
    from fl.server import run

    over = [o for o in tiny_overrides if not o.startswith(("rounds", "output_dir"))]
    over += ["rounds=1", f"output_dir={tmp_path}"]
    run(load_config(RECIPE, over))
    before = (tmp_path / "tiny" / "results.json").read_bytes()
    assert main(["run", RECIPE, *over, "resume=true", "lr=0.1", "rounds=2"]) == 2
    err = capsys.readouterr().err
    assert "was written with another config: lr (0.005 -> 0.1)" in err
    assert (tmp_path / "tiny" / "results.json").read_bytes() == before
    torch.set_num_threads(1)
