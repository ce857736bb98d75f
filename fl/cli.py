"""Command line: `fl run <recipe.yaml> [key=value ...]`.

Bad input ends with one line on stderr (`error: ...`) and exit code 2, before anything is
written; `fl run --help` lists every config key with its default and meaning.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fl.config import ConfigError, describe_keys, load_config

RUN_EPILOG = """\
examples:
  fl run recipes/fedlora.yaml                                # simulation: one process
  fl run recipes/fedlora.yaml rounds=5 lr=1e-3 partition=iid
  torchrun --nproc_per_node=3 -m fl run recipes/fedlora.yaml # rank 0 aggregates, 1..2 train
  recipes/run.sh 4 recipes/sst2-fedlora.yaml data_dir=../shared/data/glue

config keys (recipe YAML keys, or key=value overrides; later wins):
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl", description="Federated fine-tuning of language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run one federated experiment",
        description="Run one federated experiment from a recipe, under torchrun or in one process.",
        epilog=RUN_EPILOG + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("recipe", help="recipe YAML (see recipes/)")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return parser


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        cfg = load_config(args.recipe, args.overrides)
        from fl.server import run  # heavy imports only once the config is known to be good

        run(cfg)
    except ConfigError as err:
        if not err.quiet:
            prefix = "error" if _is_main_process() else f"error (rank {os.environ.get('RANK')})"
            print(f"{prefix}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; results.json holds every finished round", file=sys.stderr)
        return 130
    return 0
