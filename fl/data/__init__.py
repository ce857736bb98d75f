"""Rows before they are tokens: `sources` loads what a task names (the embedded packages through
`embedded`, GLUE folders, the user's files, hub datasets through `datasets`) and checks files;
`labelled` holds classification's labelled rows and `lm_rows` their causal-LM twin (instruction,
chat and packed-text rows); `partition` splits rows among clients (pure functions, and the
clients' shards); `benchmarks` reads MMLU, ARC, HellaSwag, PIQA and OpenBookQA offline as
multiple-choice items; `hub` answers in a moment whether the hub is reachable. May import `fl.errors`
and `fl.config`; never models, ranks or collectives (a tokenizer that packs text is passed in).
"""


def __getattr__(name: str) -> object:
    """`from fl.data import TextDataset`, as before the rooms, without loading the labelled rows'
    module for every `fl.data.*` import."""
    if name in ("TextDataset", "load_labelled"):
        from fl.data import labelled

        return getattr(labelled, name)
    raise AttributeError(f"module 'fl.data' has no attribute {name!r}")
