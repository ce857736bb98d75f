"""What the 7B hub recipes move per round, as fl's code computes it, without the weights.

    python -m bench.lora_scale [--out bench/reports/lora-scale.md]

Each recipe's architecture is built on the meta device from its published sizes (no hub, no
weights), wrapped with fl's own LoRA (`fl.models.wrap_lora`, the recipe's r, alpha and peft's
default targets), and its strategy is built from the recipe. For every round of the recipe the
sampled clients (`Strategy.plan_round`) are placed on the recipe's torchrun layout
(`fl.comm.placement.Placement`), and `fl.comm.transport.upload_bytes_per_rank` gives what each client rank
sends up. `before` is what the previous code moved for the same round: the summed upload plus one
d_out x d_in product of s B_i A_i per adapted module (the aggregation error's measurement).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

# published sizes of the two hub recipes' models (config.json of each repository)
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "mistralai/Mistral-7B-v0.3": (
        "MistralConfig",
        {
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "vocab_size": 32768,
        },
    ),
    "Qwen/Qwen2.5-7B-Instruct": (
        "Qwen2Config",
        {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
        },
    ),
}
RECIPES = ("recipes/hub-flowertune-mistral-7b.yaml", "recipes/hub-flowertune-qwen2.5-7b.yaml")
PROCS = 5  # the recipes' header: torchrun --nproc_per_node=5 (rank 0 + 4 client ranks)


def meta_model(name: str, cfg: Any) -> torch.nn.Module:
    """The recipe's model on the meta device, LoRA-wrapped as fl wraps it."""
    import transformers
    from transformers import AutoModelForCausalLM

    from fl import models
    from fl.strategies import model_spec

    kind, sizes = ARCHITECTURES[name]
    config = getattr(transformers, kind)(**sizes)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return models.wrap_lora(model, model_spec(cfg).lora, "CAUSAL_LM")


def measure(recipe: str, **overrides: Any) -> dict[str, Any]:
    """Bytes per client rank per round over the recipe's rounds: mean and max, now and before."""
    from fl import models
    from fl.comm.message import Message
    from fl.comm.placement import Placement
    from fl.comm.transport import upload_bytes_per_rank
    from fl.config.recipe import load_config
    from fl.strategies import SetupContext, build_strategy

    cfg = load_config(recipe, [f"{k}={v}" for k, v in overrides.items()])
    model = meta_model(cfg.model, cfg)
    strategy = build_strategy(cfg)
    strategy.setup(SetupContext(cfg, None, model, None, torch.device("meta"), True, False, 0))
    state = models.get_trainable_state(model)
    adapter = Message({"global": state}).nbytes
    owners = Placement(PROCS, cfg.num_clients, cfg.ranks_per_client).owners()
    lora = next(p for p in strategy.parts if p.name == "base")  # the LoRA aggregation part
    products = lora.product_numel(state) * 4
    now, before = [], []
    for r in range(1, cfg.rounds + 1):
        plan = strategy.plan_round(r)
        template = strategy.upload_template(state, plan)
        now.append(upload_bytes_per_rank(strategy, template, plan, owners))
        before.append(template.nbytes + products)  # one summed upload with the products, every client rank
    return {
        "recipe": recipe,
        "model": cfg.model,
        "lora_r": cfg.lora_r,
        "modules": len(lora.modules),
        "adapter_bytes": adapter,
        "mean": sum(now) / len(now),
        "max": max(now),
        "before_mean": sum(before) / len(before),
        "products_bytes": products,
        "rounds": cfg.rounds,
    }


def table(rows: list[dict[str, Any]]) -> str:
    mb = 1e6
    lines = [
        "| recipe | adapter | upload per client rank per round, mean / max | ratio to the adapter (max) "
        "| before (with d_out x d_in products) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['recipe']}` ({r['model']}, r={r['lora_r']}, {r['modules']} modules) "
            f"| {r['adapter_bytes'] / mb:.1f} MB "
            f"| {r['mean'] / mb:.1f} / {r['max'] / mb:.1f} MB | {r['max'] / r['adapter_bytes']:.2f} "
            f"| {r['before_mean'] / mb:,.0f} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lora_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    args = parser.parse_args()
    rows = [measure(r) for r in RECIPES]
    text = table(rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
