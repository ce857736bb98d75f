"""The reference workload written with no framework: transformers + peft + torch only.

Two users: `bench.overhead` times it as the lower bound for fl's rounds (in one process, or with
the clients spread over worker processes), and `bench.flower_app` runs the same client training
and scoring inside Flower, so that fl and Flower are measured on the same arithmetic.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

Rows = list[tuple[str, int]]  # (text, label)
State = dict[str, torch.Tensor]


def load_model(model_path: str, *, lora: bool, seed: int = 42, num_labels: int = 2) -> tuple[Any, Any]:
    """(model, tokenizer): the checkpoint with a fresh classifier head, wrapped in LoRA r8 on query/value."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    if lora:
        cfg = LoraConfig(
            task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "value"]
        )
        model = get_peft_model(model, cfg)
    return model, tok


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The tensors that train and travel: LoRA + head, or every weight without LoRA."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def get_state(model: torch.nn.Module) -> State:
    return {n: p.detach().clone() for n, p in trainable(model).items()}


def set_state(model: torch.nn.Module, state: State) -> None:
    params = trainable(model)
    if set(params) != set(state):
        raise ValueError(f"state keys differ from the model's trainable tensors: {sorted(set(params) ^ set(state))}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def order_seed(seed: int, round_idx: int, client: int) -> int:
    return seed + 100 * round_idx + client


def train_client(
    model: torch.nn.Module,
    tok: Any,
    shard: Rows,
    *,
    lr: float,
    seed: int,
    batch_size: int = 16,
    max_length: int = 64,
    device: torch.device | str = "cpu",
) -> float:
    """One local epoch with a fresh AdamW, tokenizing each batch as it comes; returns the mean loss.
    The model must already be on `device`."""
    # weight_decay=0.0 as fl's default (torch's AdamW default is 0.01): both sides run the same optimizer
    opt = torch.optim.AdamW(trainable(model).values(), lr=lr, weight_decay=0.0)
    model.train()
    order = torch.randperm(len(shard), generator=torch.Generator().manual_seed(seed)).tolist()
    total = 0.0
    for i in range(0, len(order), batch_size):
        rows = [shard[j] for j in order[i : i + batch_size]]
        batch = tok([t for t, _ in rows], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = F.cross_entropy(model(**batch).logits, torch.tensor([y for _, y in rows], device=device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(rows)
    return total / max(len(shard), 1)


def score(model: torch.nn.Module, tok: Any, test: Rows, max_length: int = 64, batch_size: int = 128) -> dict:
    """Accuracy and mean cross-entropy on `test`, in its own row order."""
    model.eval()
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(test), batch_size):
            rows = test[i : i + batch_size]
            batch = tok([t for t, _ in rows], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits, labels = model(**batch).logits, torch.tensor([y for _, y in rows])
            correct += int((logits.argmax(-1) == labels).sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
    return {"accuracy": correct / len(test), "loss": loss / len(test)}


def average(updates: list[tuple[int, State]]) -> State:
    """Example-weighted mean of client states, in fp32."""
    total = sum(n for n, _ in updates)
    keys = updates[0][1].keys()
    return {k: sum(n * st[k].float() for n, st in updates) / total for k in keys}


# ---- the whole loop, in one process or with worker processes ------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(model_path: str, lora: bool, seed: int) -> None:
    torch.set_num_threads(1)
    _WORKER["model"], _WORKER["tok"] = load_model(model_path, lora=lora, seed=seed)


def _worker_ready(_: int) -> bool:
    return "model" in _WORKER


def _worker_train(job: tuple[State, Rows, float, int]) -> tuple[int, State]:
    state, shard, lr, seed = job
    model = _WORKER["model"]
    set_state(model, state)
    train_client(model, _WORKER["tok"], shard, lr=lr, seed=seed)
    return len(shard), get_state(model)


def run_loop(
    model_path: str,
    shards: list[Rows],
    test: Rows,
    *,
    rounds: int,
    lr: float,
    lora: bool,
    workers: int = 0,
    seed: int = 42,
) -> list[dict[str, float]]:
    """FedAvg / FedLoRA written out: the initial global state is scored (round 0, as Flower's
    `evaluate_fn` and fl do), then per round every client trains from the global state, the states
    are averaged by example count, the test set is scored in this process. `workers` > 0 trains the
    clients in that many 1-thread worker processes (a multiprocessing pool, states pickled over pipes).
    Returns one record per round, round 0 first."""
    model, tok = load_model(model_path, lora=lora, seed=seed)
    glob = get_state(model)
    pool = None
    if workers:
        import torch.multiprocessing as mp  # tensors travel through shared memory, not pipes

        pool = mp.get_context("spawn").Pool(workers, _worker_init, (model_path, lora, seed))
        pool.map(_worker_ready, range(workers), chunksize=1)  # start-up (imports, model load) is not a round
    t_eval = time.perf_counter()
    m = score(model, tok, test)
    done = time.perf_counter()
    records = [{"round": 0, "time_s": 0.0, "time_eval_s": done - t_eval, "test_accuracy": m["accuracy"]}]
    try:
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            jobs = [(glob, shard, lr, order_seed(seed, r, c)) for c, shard in enumerate(shards)]
            if pool is not None:
                updates = pool.map(_worker_train, jobs, chunksize=1)
            else:
                updates = []
                for state, shard, lr_, s in jobs:
                    set_state(model, state)
                    train_client(model, tok, shard, lr=lr_, seed=s)
                    updates.append((len(shard), get_state(model)))
            glob = average(updates)
            set_state(model, glob)
            t_eval = time.perf_counter()
            m = score(model, tok, test)
            done = time.perf_counter()
            records.append(
                {"round": r, "time_s": done - t0, "time_eval_s": done - t_eval, "test_accuracy": m["accuracy"]}
            )
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return records
