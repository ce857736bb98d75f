"""Every shipped recipe parses into a valid config, and its header holds the command that runs it."""

from pathlib import Path

import pytest

from fl.config.recipe import load_config

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"fedlora.yaml", "fedavg.yaml", "sst2-fedlora.yaml", "cola-fedlora.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid_and_documents_its_command(path):
    cfg = load_config(path)
    assert cfg.scheme in ("fedavg", "fedlora", "fedkdlora")
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert path.name in header and ("fl run" in header or "run.sh" in header)
