"""Shared fixtures: a tiny BERT and tokenizer built from a config, and a small learnable CSV task.

Everything is made in a temp folder from code: offline, fast and deterministic.
"""

from __future__ import annotations

import csv
import os
import random
import tempfile
from pathlib import Path

# datasets' cache (the loaded files and the tokenized splits) goes to a folder of this test session,
# set before datasets is imported; torchrun jobs started by the tests inherit it
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="fl-test-datasets-"))

import pytest


def pytest_collection_modifyitems(config, items):
    """CUDA tests skip themselves where there is no GPU, so CI stays green on CPUs."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m cuda` on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


POSITIVE = ["good", "great", "fine", "nice", "fun", "best"]
NEGATIVE = ["bad", "awful", "dull", "poor", "boring", "worst"]
NEUTRAL = ["the", "movie", "film", "plot", "was", "very", "a", "really", "story", "acting", "and", "it"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences whose label is set by one sentiment word among neutral filler."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(NEUTRAL, k=rng.randint(3, 8))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT classifier and its WordPiece tokenizer, saved with save_pretrained."""
    import inspect

    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny-bert")
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + POSITIVE + NEGATIVE + NEUTRAL) + "\n")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers 5
        tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    else:  # transformers 4
        tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    assert "[UNK]" not in tok.tokenize(" ".join(POSITIVE + NEGATIVE + NEUTRAL))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(SPECIAL + POSITIVE + NEGATIVE + NEUTRAL),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    # A short supervised warm-up stands in for pre-training, so that LoRA on the frozen encoder
    # can learn the tiny task; then a fresh head, as a pretrained checkpoint would have.
    rows = make_sentences(256, 99)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(4):
        for i in range(0, len(rows), 32):
            texts, labels = zip(*rows[i : i + 32], strict=True)
            batch = tok(list(texts), padding=True, return_tensors="pt")
            loss = model(**batch, labels=torch.tensor(labels)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.classifier.reset_parameters()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_nodrop_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny BERT with its own dropout off (hidden and attention): runs whose dropout draws would
    otherwise differ between layouts compare exactly."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("tiny-bert-nodrop") / "model"
    shutil.copytree(tiny_model_dir, out)
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> tuple[Path, Path]:
    """(train.csv, test.csv): 200 and 60 sentences."""
    out = tmp_path_factory.mktemp("tiny-task")
    return write_csv(out / "train.csv", make_sentences(200, 1)), write_csv(out / "test.csv", make_sentences(60, 2))


def make_overrides(model_dir: Path, train: Path, test: Path, out_dir: Path, run_name: str) -> list[str]:
    """key=value overrides that point a recipe at the tiny model and task (4 clients, 2 rounds)."""
    return [
        f"model={model_dir}",
        "task=csv",
        f"train_file={train}",
        f"test_file={test}",
        "num_clients=4",
        "rounds=2",
        "batch_size=16",
        "lr=5e-3",
        "max_length=16",
        "lora_r=4",
        "teacher_data_pct=20",
        f"output_dir={out_dir}",
        f"run_name={run_name}",
        "num_threads=1",
        "precision=fp32",
    ]


def score(model, tokenizer, cfg) -> dict[str, float]:
    """The task's metrics of `model` on the config's test split, as fl computes them each round."""
    import torch

    from fl.tasks import build_task

    task = build_task(cfg)
    return task.metrics(task.eval_sums(model, task.encode(tokenizer, task.test), 64, torch.device("cpu")))


@pytest.fixture
def tiny_overrides(tiny_model_dir, tiny_task, tmp_path) -> list[str]:
    """The tiny overrides, writing under tmp_path/out/tiny."""
    return make_overrides(tiny_model_dir, *tiny_task, tmp_path / "out", "tiny")


LM_SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<bot>"]
LM_WORDS = (
    POSITIVE
    + NEGATIVE
    + NEUTRAL
    + ["review", "positive", "negative", "?", ".", ":", "###", "Instruction", "Response", "is", "this"]
)
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} {% else %}<bot> "
    "{{ m['content'] }}</s> {% endif %}{% endfor %}{% if add_generation_prompt %}<bot> {% endif %}"
)


def lm_tokenizer(chat_template: bool):
    """A word-level tokenizer over the tiny vocabulary: <s> first, </s> as EOS, <pad> to pad."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(LM_SPECIAL + LM_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.add_special_tokens(LM_SPECIAL)  # matched whole, before the whitespace split
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_lm(out: Path, arch: str, chat_template: bool) -> Path:
    """A random 2-layer GPT-2 or Llama with the tiny tokenizer, saved with save_pretrained."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tok = lm_tokenizer(chat_template)
    n = len(tok)
    torch.manual_seed(0)
    ids = {"vocab_size": n, "bos_token_id": 2, "eos_token_id": 3, "pad_token_id": 0}
    if arch == "gpt2":
        config = GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2, **ids)
        model = GPT2LMHeadModel(config)
    else:
        sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=1, max_position_embeddings=64, **sizes, **ids))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return tiny_lm(tmp_path_factory.mktemp("tiny-llama"), "llama", chat_template=True)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return tiny_lm(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", chat_template=False)


@pytest.fixture(scope="session")
def tiny_sft(tmp_path_factory) -> tuple[Path, Path]:
    """(train.jsonl, test.jsonl): instruction rows whose answer is the sentiment word's class."""
    import json

    out = tmp_path_factory.mktemp("tiny-sft")
    paths = []
    for name, n, seed in (("train", 160, 3), ("test", 40, 4)):
        p = out / f"{name}.jsonl"
        rows = [
            {"instruction": f"review : {t} ?", "output": "positive" if y else "negative"}
            for t, y in make_sentences(n, seed)
        ]
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(p)
    return paths[0], paths[1]


def lm_overrides(model_dir: Path, train: Path, test: Path, out_dir: Path, run_name: str) -> list[str]:
    """key=value overrides that point a recipe at a tiny causal LM and the tiny instruction rows: the
    tiny overrides with smaller batches, longer rows, no LoRA dropout and smaller evaluation batches."""
    changed = {"batch_size": "8", "max_length": "32"}
    base = [
        f"{o.split('=')[0]}={changed[o.split('=')[0]]}" if o.split("=")[0] in changed else o
        for o in make_overrides(model_dir, train, test, out_dir, run_name)
    ]
    return ["task_kind=causal_lm", *base, "lora_dropout=0", "eval_batch_size=16"]
