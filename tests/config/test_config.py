import dataclasses

import pytest

from fl.config import Config
from fl.config.recipe import build_config, describe_keys, load_config, parse_overrides
from fl.errors import ConfigError


def test_defaults_are_valid_and_name_the_run():
    cfg = Config()
    assert cfg.scheme == "fedlora" and cfg.model == "embedded"
    assert cfg.resolved_run_name == "fedlora-rotten_tomatoes-seed42"


def test_overrides_are_typed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("scheme: fedavg\nlr: 1.0e-3\nrounds: 2\n")
    cfg = load_config(recipe, ["lr=2e-4", "rounds=5", "max_train_samples=none", "save_model=false", "data_dir=/x"])
    assert cfg.scheme == "fedavg"
    assert cfg.lr == pytest.approx(2e-4) and isinstance(cfg.lr, float)
    assert cfg.rounds == 5 and cfg.max_train_samples is None and cfg.save_model is False
    assert cfg.data_dir == "/x"


def test_yaml_list_becomes_comma_string():
    assert build_config({"lora_target_modules": ["query", "value"]}).lora_target_modules == "query,value"


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"learning_rate": 1}, "unknown config key 'learning_rate'"),
        ({"lrr": 1}, "did you mean lr"),
        ({"scheme": "fedprox"}, "scheme='fedprox' is not valid; choose one of: fedavg, fedlora"),
        ({"task": "mnli"}, "choose one of: rotten_tomatoes, sst2, cola, shakespeare, mmlu, csv"),
        ({"rounds": "two"}, "rounds='two' is not a valid int"),
        ({"rounds": 1.5}, "rounds=1.5 is not a valid int"),
        ({"rounds": 0}, "rounds=0 is out of range; give a value in [1, 100000]"),
        ({"lr": -1}, "lr=-1.0 is out of range; give a value in (0, 10]"),
        ({"teacher_data_pct": 100}, "teacher_data_pct=100.0 is out of range; give a value in [0, 100)"),
        ({"teacher_data_pct": -1}, "give a value in [0, 100)"),
        ({"lr": "nan"}, "lr=nan is not a finite number"),
        ({"dirichlet_alpha": "nan"}, "dirichlet_alpha=nan is not a finite number"),
        ({"clients_per_round": 5}, "clients_per_round=5 exceeds num_clients=4"),
        ({"server_betas": "0.9"}, "server_betas='0.9' must be two numbers"),
        ({"server_betas": "0.9,1.0"}, "each beta must be in [0, 1)"),
        ({"run_name": ".."}, "run_name='..' may hold only"),
        ({"task": "csv"}, "task=csv needs train_file"),
        ({"save_model": "maybe"}, "save_model='maybe' is not a valid bool"),
        ({"run_name": "a/b"}, "run_name='a/b' may hold only"),
        ({"lora_dropout": 1.0}, "lora_dropout=1.0 is out of range; give a value in [0, 1)"),
    ],
)
def test_bad_values_name_the_key(values, needle):
    with pytest.raises(ConfigError) as err:
        build_config(values)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scheme: [fedavg\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(scalar)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["rounds"])


def test_help_lists_every_key_with_default():
    text = describe_keys()
    for f in dataclasses.fields(Config):
        assert f"  {f.name}={f.default}" in text


def test_a_key_is_written_flat_or_in_its_section():
    from fl.config.recipe import build_config

    flat = build_config({"lr": "1e-3", "dp_clip": 1.0, "model": "smollm2", "task_kind": "causal_lm"})
    nested = build_config(
        {"local": {"lr": "1e-3"}, "dp": {"dp_clip": 1.0}, "model": {"model": "smollm2"}, "data.task_kind": "causal_lm"}
    )
    assert flat == nested and flat.section("local")["lr"] == 1e-3 and flat.section("dp")["dp_clip"] == 1.0
    with pytest.raises(ConfigError, match="lr belongs to section local, not federation; write local.lr"):
        build_config({"federation": {"lr": 1e-3}})
    with pytest.raises(ConfigError, match="'locl.lr' names no section"):
        build_config({"locl.lr": 1e-3})


def test_every_key_has_one_section_and_its_effect_decides_resume_and_compare():
    from fl.config import COMPARE_IGNORED, RESUMABLE_KEYS, SECTION_OF, SECTIONS, Config

    fields = {f.name: f for f in dataclasses.fields(Config)}
    assert set(SECTION_OF) == set(fields) and sum(len(dataclasses.fields(s)) for s in SECTIONS) == len(fields)
    effects = {name: f.metadata["effect"] for name, f in fields.items()}
    assert RESUMABLE_KEYS == {k for k, e in effects.items() if e != "results"} | {"rounds"}
    quiet = {"num_threads", "collective_timeout_s", "fault_inject"}  # runtime keys fl compare leaves out
    assert COMPARE_IGNORED == {k for k, e in effects.items() if e == "output"} | quiet
    assert {"device", "server_device", "bucket_mb"} <= RESUMABLE_KEYS - COMPARE_IGNORED  # runtime
    assert {"output_dir", "callbacks", "resume"} <= COMPARE_IGNORED and "lr" not in RESUMABLE_KEYS


def test_a_new_key_in_a_section_is_known_everywhere_from_its_field():
    """What docs/extending.md promises: a field in its section is the whole declaration."""
    from fl.config.federation import FederationSection
    from fl.config.fields import config_field
    from fl.config.schema import SECTIONS, key_tables

    @dataclasses.dataclass
    class Federation(FederationSection):
        prox_warmup_rounds: int = config_field(0, "FedProx: mu grows over the first N rounds", lo=0, hi=100)
        trace_dir: str | None = config_field(None, "where to write traces", effect="output")

    sections = tuple(Federation if s is FederationSection else s for s in SECTIONS)
    section_of, resumable, ignored = key_tables(sections)
    assert section_of["prox_warmup_rounds"] == section_of["trace_dir"] == "federation"
    assert "prox_warmup_rounds" not in resumable | ignored and "trace_dir" in resumable & ignored

    @dataclasses.dataclass
    class Clash(FederationSection):
        lr: float = config_field(1.0, "a key another section owns")

    with pytest.raises(TypeError, match="config key lr is in sections"):
        key_tables((*SECTIONS, Clash))


def test_help_groups_the_keys_by_section():
    from fl.config.recipe import describe_keys

    text = describe_keys()
    heads = [line.split("]")[0][1:] for line in text.splitlines() if line.startswith("[")]
    assert heads == ["data", "model", "federation", "local", "dp", "kd", "runtime", "output"]
    assert text.index("[local]") < text.index("  lr=") < text.index("[dp]")


def test_an_override_in_a_section_keeps_the_recipes_other_keys_of_it(tmp_path):
    import fl

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  lora_r: 4\n  max_length: 32\nlocal: {lr: 0.01, batch_size: 8}\n")
    cfg = load_config(recipe, ["model.lora_r=2", "batch_size=4"])
    assert (cfg.lora_r, cfg.max_length, cfg.lr, cfg.batch_size) == (2, 32, 0.01, 4)
    cfg = fl.load_config(recipe, local={"batch_size": 2}, model="smollm2", task_kind="causal_lm")
    assert (cfg.lr, cfg.batch_size, cfg.lora_r, cfg.max_length, cfg.model) == (0.01, 2, 4, 32, "smollm2")
