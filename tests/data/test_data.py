import hashlib
import re
from collections import Counter
from pathlib import Path

import pytest

from fl.config import Config
from fl.data.labelled import RT_TEST_SIZE, TextDataset, check_leakage, load_labelled, rotten_tomatoes
from fl.errors import ConfigError
from fl.tasks.classify import collate, encode

GLUE = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue"


def digest(data: TextDataset) -> str:
    return hashlib.sha256(
        "\n".join(f"{t}\t{y}" for t, y in zip(data.texts, data.labels, strict=True)).encode()
    ).hexdigest()


def test_rotten_tomatoes_split_is_fixed_and_stratified():
    train, test = rotten_tomatoes()
    # the same rows, in the same order, as every report since the first (pinned from the earlier loader)
    assert digest(test) == "d9666e47a14da8a9dd792bc9118e207c46b248ef163e56cc6a590ccd7894b734"
    assert digest(train) == "db996dc0bb30204ee9d6b386e9acd7b96f963616d335ddc81642799f106c3fa6"
    assert len(train) + len(test) == 8530 and len(test) == RT_TEST_SIZE
    assert Counter(test.labels) == {0: 500, 1: 500}
    assert not set(train.texts) & set(test.texts)
    again = rotten_tomatoes()
    assert again[1].texts == test.texts and again[0].texts[:50] == train.texts[:50]
    # the package stores rows sorted by label: the shuffles must mix the public slice and any prefix
    assert 0.4 < sum(train.labels[:1506]) / 1506 < 0.6
    assert 0.3 < sum(train.labels[:32]) / 32 < 0.7


def csv_task(tmp_path, train: tuple[str, str], test: tuple[str, str], **columns) -> tuple:
    """(the labelled task, its config) of a train and a test file written as (name, text)."""
    for name, text in (train, test):
        (tmp_path / name).write_text(text)
    cfg = Config(task="csv", train_file=str(tmp_path / train[0]), test_file=str(tmp_path / test[0]), **columns)
    return load_labelled(cfg), cfg


def test_csv_task_with_string_labels(tmp_path):
    train = ("tr.tsv", "sentence\tkind\nnice one\tpos\nawful\tneg\nok\tpos\n")
    test = ("te.jsonl", '{"sentence": "fine", "kind": "pos"}\n{"sentence": "bad", "kind": "neg"}\n')
    task, _ = csv_task(tmp_path, train, test, text_column="sentence", label_column="kind")
    assert task.train.labels == [1, 0, 1] and task.test.labels == [1, 0]  # sorted names: neg=0, pos=1
    assert task.num_labels == 2 and task.metric == "accuracy"


@pytest.mark.parametrize(
    "train, test, columns, needle",
    [
        ("text,label\na,0\nb,1\n", "text,label\nc,2\n", {}, "label values ['2'] never occur"),
        ("text,label\na,0\nb,0\n", "text,label\nc,0\n", {}, "single label"),
        ("text,label\n", "text,label\nc,0\n", {}, "has no rows; the train data of task=csv is empty"),
        ("txt,label\na,0\nb,1\n", "txt,label\nc,0\n", {}, "no column 'text'; set text_column="),
    ],
)
def test_bad_csv_data(tmp_path, train, test, columns, needle):
    (tmp_path / "tr.csv").write_text(train)
    (tmp_path / "te.csv").write_text(test)
    cfg = Config(task="csv", train_file=str(tmp_path / "tr.csv"), test_file=str(tmp_path / "te.csv"), **columns)
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_labelled(cfg)


def test_missing_files_and_dirs(tmp_path):
    with pytest.raises(ConfigError, match="not found; check train_file"):
        load_labelled(Config(task="csv", train_file=str(tmp_path / "no.csv"), test_file=str(tmp_path / "no.csv")))
    with pytest.raises(ConfigError, match="is not a folder"):
        load_labelled(Config(task="sst2", data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="SST-2/train.tsv and dev.tsv"):
        load_labelled(Config(task="sst2", data_dir=str(tmp_path)))


def test_leakage_is_refused():
    train = TextDataset.from_lists(["It's great!", "bad"], [1, 0])
    with pytest.raises(ConfigError, match="1 of 1 test sentences also occur"):
        check_leakage(train, TextDataset.from_lists(["it s great"], [1]))
    check_leakage(train, TextDataset.from_lists(["something else"], [1]))


@pytest.mark.skipif(not GLUE.is_dir(), reason="../shared/data/glue not present")
@pytest.mark.parametrize(
    "task, n_train, n_test, metric", [("sst2", 67349, 872, "accuracy"), ("cola", 8551, 1043, "mcc")]
)
def test_glue_dir_layout(task, n_train, n_test, metric):
    data = load_labelled(Config(task=task, data_dir=str(GLUE)))
    assert (len(data.train), len(data.test), data.metric, data.num_labels) == (n_train, n_test, metric, 2)
    assert set(data.train.labels) == {0, 1}


def test_glue_shaped_fixture_reads_like_glue():
    """The vendored fixture (tests/fixtures/glue) has GLUE's layouts: SST-2 with a header, CoLA without."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "glue"
    for task, metric in (("sst2", "accuracy"), ("cola", "mcc")):
        data = load_labelled(Config(task=task, data_dir=str(fixture)))
        assert (len(data.train), len(data.test), data.metric, data.num_labels) == (600, 200, metric, 2)
        assert set(data.train.labels) == {0, 1} and all(data.train.texts)


def test_max_samples_and_padding(tiny_model_dir, tiny_task):
    from transformers import AutoTokenizer

    train, test = tiny_task
    task = load_labelled(
        Config(task="csv", train_file=str(train), test_file=str(test), max_train_samples=10, max_eval_samples=5)
    )
    assert len(task.train) == 10 and len(task.test) == 5
    enc = encode(AutoTokenizer.from_pretrained(tiny_model_dir), task.train, max_length=6)
    assert max(len(x) for x in enc.input_ids) <= 6
    batch = collate(enc, [0, 1, 2])
    width = max(len(enc.input_ids[i]) for i in (0, 1, 2))
    assert batch["input_ids"].shape == (3, width) == batch["attention_mask"].shape
    assert batch["attention_mask"].sum().item() == sum(len(enc.input_ids[i]) for i in (0, 1, 2))


def test_shuffle_train_is_a_seeded_permutation_before_the_caps(tiny_task):
    train, test = tiny_task
    files = {"task": "csv", "train_file": str(train), "test_file": str(test)}
    plain = load_labelled(Config(**files)).train
    mixed = load_labelled(Config(**files, shuffle_train=True)).train
    assert mixed.texts != plain.texts and sorted(mixed.texts) == sorted(plain.texts)
    assert load_labelled(Config(**files, shuffle_train=True)).train.texts == mixed.texts  # same seed, same order
    assert load_labelled(Config(**files, shuffle_train=True, seed=7)).train.texts != mixed.texts
    capped = load_labelled(Config(**files, shuffle_train=True, max_train_samples=10)).train
    assert capped.texts == mixed.texts[:10]  # the cap takes the first rows of the shuffled order
    assert load_labelled(Config(**files, shuffle_train=True)).test.texts == load_labelled(Config(**files)).test.texts


def test_parquet_and_jsonl_load_through_datasets(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"review": ["great fun", "dull", "nice"], "y": ["pos", "neg", "pos"]}).to_parquet(
        tmp_path / "tr.parquet"
    )
    (tmp_path / "te.jsonl").write_text('{"review": "bad", "y": "neg"}\n\n{"review": "fine", "y": "pos"}\n')
    cfg = Config(
        task="csv",
        train_file=str(tmp_path / "tr.parquet"),
        test_file=str(tmp_path / "te.jsonl"),
        text_column="review",
        label_column="y",
    )
    task = load_labelled(cfg)
    assert task.train.labels == [1, 0, 1] and task.test.labels == [0, 1] and task.label_names == ["neg", "pos"]
    assert task.train.texts == ["great fun", "dull", "nice"]


def test_sentence_pairs_are_tokenized_together(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    train = ("tr.csv", "a,b,label\ngood movie,fun film,1\nbad plot,dull story,0\n")
    task, cfg = csv_task(
        tmp_path, train, ("te.csv", "a,b,label\nnice,great,1\n"), text_column="a", text_pair_column="b"
    )
    assert task.train.pairs == ["fun film", "dull story"]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = encode(tok, task.train, max_length=32)
    assert enc.input_ids[0] == tok("good movie", "fun film")["input_ids"]  # [CLS] a [SEP] b [SEP]
    assert enc.input_ids[0].count(tok.sep_token_id) == 2


def test_second_tokenization_is_served_from_the_map_cache(tmp_path, tiny_model_dir, tiny_task):
    """The cache files of the tokenized split: made by the first encode, reused (none new) by the second."""
    from transformers import AutoTokenizer

    train, test = tiny_task
    cfg = Config(task="csv", train_file=str(train), test_file=str(test))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = load_labelled(cfg).train
    folder = Path(data.ds.cache_files[0]["filename"]).parent

    def cache_files() -> set[str]:
        return {p.name for p in folder.glob("cache-*.arrow")}

    before = cache_files()
    first = encode(tok, data, max_length=12)
    made = cache_files() - before
    assert len(made) == 1  # the tokenized split, written once
    again = encode(tok, load_labelled(cfg).train, max_length=12)  # a fresh load, as a second run does
    assert cache_files() - before == made and again.input_ids == first.input_ids
    other = encode(tok, data, max_length=8)  # other settings: another cache file
    assert len(cache_files() - before) == 2 and other.input_ids != first.input_ids
