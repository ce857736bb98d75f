"""Causal language modelling: instruction tuning (loss on the responses) and LM fine-tuning (packed
text), with `AutoModelForCausalLM` and any algorithm of the strategy.

- Loss: mean cross-entropy of the next token over the positions whose label is not -100.
- Evaluation, summed per shard (one reduce gives the whole test set): the token loss sum and the
  token count (test_loss is the mean token loss, test_perplexity its exp); for chat rows with
  short answers, greedy generation (batched, left padding, `max_new_tokens`) scored by exact match
  and, where the data names its answer words (the sentiment instructions: positive / negative), by
  choice accuracy: the answer word the generated text starts with. test_accuracy is the choice
  accuracy where there are answer words, else the exact match.
- Distillation (FedKDLoRA on token logits): per scored token, the teacher's k most likely tokens
  at temperature T (`kd_top_k`): their probabilities and indices travel, not the vocabulary; the
  clients answer with their own probabilities on those tokens, and the KL is taken over the top-k
  support plus one tail bucket (`fl.tasks.kd_losses.topk_kl`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fl import models
from fl.comm.message import Message
from fl.config import Config
from fl.data.lm_rows import LMData, LMRows, load_lm_data
from fl.errors import ConfigError
from fl.models.precision import autocast
from fl.tasks import SplitSummary, lm_encode
from fl.tasks.kd_losses import topk_kl
from fl.tasks.lm_encode import IGNORE, LMEncoded

State = dict[str, torch.Tensor]


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def load_causal_lm(path: str, seed: int, dtype: torch.dtype | None = None, **extra: Any) -> nn.Module:
    """AutoModelForCausalLM from a folder or hub name; a classifier checkpoint is refused in one line."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = getattr(AutoConfig.from_pretrained(path), "architectures", None) or []
    if arch and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in arch):
        raise ConfigError(
            f"model {path!r} is a {arch[0]}, not a causal language model; task_kind=causal_lm needs one "
            "(e.g. model=smollm2, or a GPT-2 / Llama / Qwen2 folder), or use task_kind=classify"
        )
    torch.manual_seed(seed)
    return models.load_pretrained(AutoModelForCausalLM, path, dtype=dtype or torch.float32, **extra)


@dataclass
class CausalLMTask:
    """See the module docstring."""

    data: LMData
    tokenizer: Any
    max_length: int
    train_on_prompt: bool
    long_prompts: str
    max_new_tokens: int
    top_k: int
    temperature: float  # KD's: the teacher's top-k probabilities are taken at it
    gradient_checkpointing: bool
    load_in_4bit: bool
    precision: str = "fp32"  # evaluation and KD targets autocast like local training (bf16 is ~2.5x on CPUs with AMX)
    group_by_length: bool = False  # training batches of rows of similar length (fl.tasks.order)

    @classmethod
    def from_config(cls, config: Config) -> CausalLMTask:
        cfg = config
        tokenizer = lm_tokenizer(models.resolve_model(cfg.model))
        data = load_lm_data(cfg, tokenizer)
        train, skipped = lm_encode.fitting_rows(tokenizer, data.train, cfg.max_length, cfg.long_prompts, "train")
        test, skipped_test = lm_encode.fitting_rows(tokenizer, data.test, cfg.max_length, cfg.long_prompts, "test")
        data = LMData(data.name, data.kind, train, test, data.choices, {"train": skipped, "test": skipped_test})
        new = cfg.max_new_tokens
        if new is None:  # short answers: generate them, with room for a sentence around them; else the loss only
            answers = [str(m[-1]["content"]) for m in data.test.ds["messages"]] if data.kind == "chat" else []
            longest = max((len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers), default=99)
            new = longest + 8 if longest <= 24 else 0
        return cls(
            data,
            tokenizer,
            cfg.max_length,
            cfg.train_on_prompt,
            cfg.long_prompts,
            new,
            cfg.kd_top_k,
            cfg.kd_temperature,
            cfg.gradient_checkpointing,
            cfg.load_in_4bit,
            cfg.precision,
            cfg.group_by_length,
        )

    def without_rows(self) -> CausalLMTask:
        """See `Task.without_rows` (`build_model` then loads the tokenizer from the model's folder)."""
        data = replace(self.data, train=SplitSummary(len(self.train)), test=SplitSummary(len(self.test)))
        return replace(self, data=data, tokenizer=None)  # type: ignore[arg-type]

    name = property(lambda self: self.data.name)
    train = property(lambda self: self.data.train)
    test = property(lambda self: self.data.test)

    @property
    def notes(self) -> dict[str, Any]:
        """What results.json records of the data: rows left out because their prompt does not fit."""
        return {"skipped_rows": self.data.skipped} if self.data.skipped else {}

    @property
    def generates(self) -> bool:
        return self.data.kind == "chat" and self.max_new_tokens > 0

    @property
    def metric(self) -> str:
        return "accuracy" if self.generates else "perplexity"

    @property
    def columns(self) -> tuple[str, ...]:
        return ("test_perplexity", "test_accuracy") if self.generates else ("test_perplexity",)

    # ---- model and data -------------------------------------------------------------------------
    def build_model(self, spec: models.ModelSpec) -> tuple[nn.Module, Any, str]:
        models.quiet_transformers()
        path = models.resolve_model(spec.source)
        model = load_causal_lm(path, spec.seed, **quantized(self.load_in_4bit))
        tokenizer = lm_tokenizer(path)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if spec.keep_layers:
            model = models.keep_layers(model, spec.keep_layers)
        if spec.dropout is not None:
            model = models.set_dropout(model, spec.dropout)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if self.load_in_4bit:  # QLoRA: the 4-bit base stays frozen, LoRA trains in bf16 / fp32
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=self.gradient_checkpointing)
        if spec.lora is not None:
            model = models.wrap_lora(model, spec.lora, "CAUSAL_LM")
        return model, tokenizer, path

    def load_teacher(self, source: str, seed: int, eager_attention: bool) -> tuple[nn.Module, Any, str]:
        """A causal LM that shares the student's tokenizer (the top-k indices must mean the same tokens)."""
        path = models.resolve_model(source)
        tokenizer = lm_tokenizer(path)
        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError(f"teacher {path!r} has another tokenizer than the student; KD on token logits needs one")
        return load_causal_lm(path, seed), tokenizer, path

    def encode(self, tokenizer: Any, rows: LMRows) -> LMEncoded:
        return lm_encode.encode_rows(tokenizer, rows, self.max_length, self.train_on_prompt, self.long_prompts)

    def partition_labels(self, rows: Sequence[int]) -> list[int] | None:
        return None

    def partition_groups(self, rows: Sequence[int]) -> list[str] | None:
        groups = self.train.groups
        return [groups[i] for i in rows] if groups is not None else None

    # ---- training -------------------------------------------------------------------------------
    def train_batches(self, data: LMEncoded, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        return lm_encode.train_batches(data, batch_size, seed, self.group_by_length)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        labels = batch.pop("labels")
        logits = model(**batch).logits  # [B, L, V]
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten()), labels.shape[0]

    def row_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(each row's summed token loss [N], each row's scored tokens [N])."""
        labels = batch.pop("labels")[:, 1:]
        logits = model(**batch).logits[:, :-1].float()
        per = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # [N, L-1], 0 where ignored
        return per.sum(-1), (labels != IGNORE).sum(-1).to(per.dtype)

    def join(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batches of equal row counts right-padded to one width and stacked in order (client-major)."""
        width = max(b["input_ids"].shape[1] for b in batches)
        pad = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "labels": IGNORE}
        return {
            k: torch.cat([F.pad(b[k], (0, width - b[k].shape[1]), value=v) for b in batches]) for k, v in pad.items()
        }

    def batch_weight(self, batch: dict[str, torch.Tensor]) -> int:
        """The loss's terms in a batch: its scored tokens (the loss is their mean)."""
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def is_head(self, name: str) -> bool:
        return "lm_head" in name

    # ---- evaluation -----------------------------------------------------------------------------
    def eval_template(self, device: torch.device) -> Message:
        names = ("loss_sum", "tokens", "rows", "exact", "choice")
        return Message({}, {f"eval.{k}": 0.0 for k in names})

    @torch.inference_mode()
    def eval_sums(self, model: nn.Module, data: LMEncoded, batch_size: int, device: torch.device) -> Message:
        with autocast(device, self.precision):
            return self._eval_sums(model, data, batch_size, device)

    def _eval_sums(self, model: nn.Module, data: LMEncoded, batch_size: int, device: torch.device) -> Message:
        sums = self.eval_template(device)
        model.eval()
        for rows in lm_encode.by_length([len(x) for x in data.input_ids], batch_size):
            batch = {k: v.to(device) for k, v in lm_encode.collate(data, rows).items()}
            labels = batch.pop("labels")[:, 1:]
            logits = model(**batch).logits[:, :-1].float()
            sums.scalars["eval.loss_sum"] += float(
                F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
            )
            sums.scalars["eval.tokens"] += int((labels != IGNORE).sum())
        if self.generates and len(data):
            exact, choice = self.score_answers(model, data, batch_size, device)
            sums.scalars["eval.exact"], sums.scalars["eval.choice"] = exact, choice
        sums.scalars["eval.rows"] = float(len(data))
        return sums

    def score_answers(
        self, model: nn.Module, data: LMEncoded, batch_size: int, device: torch.device
    ) -> tuple[int, int]:
        """(exact matches, right answer words) of greedy generation from each row's prompt. The answer word
        a generation gives is the first of the data's answer words among its words."""
        assert data.prompts is not None and data.answers is not None
        exact = choice = 0
        choices = [normalise(c) for c in self.data.choices or ()]
        for rows in lm_encode.by_length([len(p) for p in data.prompts], batch_size):
            batch = {k: v.to(device) for k, v in lm_encode.collate_prompts(data, rows).items()}
            out = model.generate(
                **batch, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id
            )
            texts = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            for text, i in zip(texts, rows, strict=True):
                got, want = normalise(text), normalise(data.answers[i])
                exact += got == want
                picked = next((w for w in got.split() if w in choices), None)
                choice += picked is not None and picked == want
        return exact, choice

    def metrics(self, sums: Message) -> dict[str, float]:
        s = sums.scalars
        loss = s["eval.loss_sum"] / s["eval.tokens"] if s["eval.tokens"] else float("nan")
        out = {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf")}
        if self.generates and s["eval.rows"]:
            out["exact_match"] = s["eval.exact"] / s["eval.rows"]
            out["accuracy"] = (s["eval.choice"] if self.data.choices else s["eval.exact"]) / s["eval.rows"]
        return out

    # ---- distillation: top-k per scored token ---------------------------------------------------
    def scored(self, data: LMEncoded) -> list[int]:
        """Scored positions per row (labels other than -100, after the shift)."""
        return [sum(1 for y in row[1:] if y != IGNORE) for row in data.labels]

    def kd_forward(
        self, model: nn.Module, data: LMEncoded, rows: Sequence[int], device: torch.device, attentions: bool = False
    ) -> dict[str, Any]:
        """Logits at the scored positions of the rows, in row order: [N, V]; labels [N]."""
        if attentions:
            raise ConfigError("kd_attention_weight works with classifiers; set kd_attention_weight=0 for causal LMs")
        batch = {k: v.to(device) for k, v in lm_encode.collate(data, rows).items()}
        labels = batch.pop("labels")[:, 1:]
        logits = model(**batch).logits[:, :-1]
        keep = labels != IGNORE
        return {"logits": logits[keep], "labels": labels[keep], "attentions": None, "mask": None}

    def kd_targets(self, model: nn.Module, data: LMEncoded, batch_size: int, device: torch.device) -> State:
        probs, idx = [], []
        model.eval()
        with torch.inference_mode(), autocast(device, self.precision):
            for start in range(0, len(data), batch_size):
                rows = list(range(start, min(start + batch_size, len(data))))
                logits = self.kd_forward(model, data, rows, device)["logits"].float()
                top = F.softmax(logits / self.temperature, dim=-1).topk(self.top_k, dim=-1)
                probs.append(top.values)
                idx.append(top.indices.float())  # token ids < 2^24 are exact in the fp32 wire format
        return {"probs": torch.cat(probs), "indices": torch.cat(idx)}

    def kd_like(self, data: LMEncoded, device: torch.device) -> State:
        n = sum(self.scored(data))
        return {
            "probs": torch.zeros(n, self.top_k, device=device),
            "indices": torch.zeros(n, self.top_k, device=device),
        }

    def kd_reply(self, model: nn.Module, data: LMEncoded, targets: State, batch_size: int, device: torch.device):
        """The client's own probabilities on the teacher's top-k tokens [N, k]."""
        out, offsets = [], self.offsets(data)
        with torch.inference_mode(), autocast(device, self.precision):
            for start in range(0, len(data), batch_size):
                rows = list(range(start, min(start + batch_size, len(data))))
                logits = self.kd_forward(model, data, rows, device)["logits"].float()
                idx = targets["indices"][offsets[start] : offsets[rows[-1] + 1]].to(device).long()
                out.append(F.softmax(logits / self.temperature, dim=-1).gather(-1, idx))
        return torch.cat(out)

    def kd_reply_like(self, data: LMEncoded, device: torch.device) -> torch.Tensor:
        return torch.zeros(sum(self.scored(data)), self.top_k, device=device)

    def kd_as_targets(self, ensemble: torch.Tensor, sent: State | None) -> State:
        """The clients' mean probabilities on the teacher's tokens: a mixture, still summing to <= 1."""
        assert sent is not None, "the teacher's top-k tokens of this round"
        return {"probs": ensemble, "indices": sent["indices"]}

    def offsets(self, data: LMEncoded) -> list[int]:
        counts = self.scored(data)
        return [sum(counts[:i]) for i in range(len(counts) + 1)]

    def kd_kl(
        self,
        model: nn.Module,
        data: LMEncoded,
        rows: Sequence[int],
        targets: State,
        temperature: float,
        device: torch.device,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        out = self.kd_forward(model, data, rows, device)
        offsets = self.offsets(data)
        pick = torch.cat([torch.arange(offsets[r], offsets[r + 1]) for r in rows])
        probs, idx = targets["probs"][pick].to(device), targets["indices"][pick].to(device)
        return topk_kl(out["logits"], probs, idx, temperature), out


def lm_tokenizer(path: str) -> Any:
    """The model's tokenizer; without a pad token it pads with EOS, and without either it is refused."""
    tok = models.load_tokenizer(path)
    if tok.pad_token_id is None:
        raise ConfigError(
            f"the tokenizer of {path!r} has no pad token and no EOS token to pad with; add one "
            "(tokenizer.add_special_tokens({'pad_token': ...})) and save it with the model"
        )
    return tok


def quantized(load_in_4bit: bool) -> dict[str, Any]:
    """from_pretrained's arguments for 4-bit QLoRA (bitsandbytes, NF4, bf16 compute); CUDA only."""
    if not load_in_4bit:
        return {}
    if not torch.cuda.is_available():
        raise ConfigError("load_in_4bit=true needs a CUDA GPU (bitsandbytes 4-bit); on a CPU set load_in_4bit=false")
    try:
        from transformers import BitsAndBytesConfig
    except ImportError:  # pragma: no cover - old transformers
        raise ConfigError("load_in_4bit=true needs transformers with BitsAndBytesConfig") from None
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("load_in_4bit=true needs bitsandbytes; run `pip install fl[qlora]` on the GPU machine")
    cfg = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.bfloat16,
        bnb_4bit_use_double_quant=True,
    )
    return {"quantization_config": cfg, "device_map": {"": torch.cuda.current_device()}}
