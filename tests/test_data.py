import subprocess
import sys
import zipfile

import pytest
from datasets import Dataset, DatasetDict

from ftkit import data

SIZES = {
    "rotten_tomatoes": {"train": 8530, "validation": 1066, "test": 1066},
    "uci_reviews": {"train": 2385, "test": 597},
    "banking77": {"train": 10003, "test": 3074},
    "medquad_qtype": {"train": 10861, "test": 2714},
    "wikigold": {"train": 1350, "validation": 169, "test": 168},
    "wnut17": {"train": 3394, "validation": 1009, "test": 1287},
    "dolly": {"train": 544, "test": 60},
    "medquad_corpus": {"train": 5642},
    "medquad_qa": {"train": 2063, "test": 377},
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_dataset_loads_with_its_schema_and_sizes(name):
    ds = data.load(name)
    assert {k: len(v) for k, v in ds.items()} == SIZES[name]
    kind = data.DATASETS[name].kind
    for split in ds.values():
        assert set(data.COLUMNS[kind]) <= set(split.column_names)


def test_label_names():
    assert data.label_names("rotten_tomatoes") == ("negative", "positive")
    assert len(data.label_names("banking77")) == 77
    ds = data.load("medquad_qtype")
    assert ds["train"].features["label"].names == list(data.label_names("medquad_qtype"))


def test_the_shipped_pack_passes_its_own_checker():
    out = subprocess.run([sys.executable, str(data.PACK / "check_data.py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "ALL OK" in out.stdout


def test_the_wheel_ships_the_data_pack_licenses_and_metrics(tmp_path):
    root = data.PACK.parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(root)], check=True, capture_output=True)
    names = set(zipfile.ZipFile(next(tmp_path.glob("ftkit-*.whl"))).namelist())
    expected = {f"ftkit/{p.relative_to(root / 'ftkit').as_posix()}" for p in data.PACK.rglob("*") if p.is_file()
                and "__pycache__" not in p.parts}
    expected |= {f"ftkit/metrics/{m}/{m}.py" for m in ("accuracy", "f1_macro", "seqeval", "rouge")}
    assert expected - names == set()
    assert "ftkit/datapack/LICENSES/dolly_LICENSE.txt" in names


def test_the_pack_matches_the_shared_data_pack_where_it_is_present():
    shared = data.PACK.parent.parent.parent / "shared" / "data"
    if not shared.is_dir():
        pytest.skip("no ../shared/data beside this checkout")
    ours = {p.relative_to(data.PACK): p.read_bytes() for p in data.PACK.rglob("*") if p.is_file()
            and "__pycache__" not in p.parts}
    theirs = {p.relative_to(shared): p.read_bytes() for p in shared.rglob("*") if p.is_file()
              and "__pycache__" not in p.parts}
    assert sorted(set(theirs) - set(ours)) == [], "copy the new data pack files into ftkit/datapack"
    assert [k for k in theirs if ours.get(k) != theirs[k]] == [], "ftkit/datapack differs from ../shared/data"


def test_general_corpus_splits_never_overlap_and_hold_no_medical_text():
    train_texts, test_texts = data.general_corpus("train"), data.general_corpus("test")
    assert len(train_texts) > 10000 and len(test_texts) > 3000
    assert not set(train_texts) & set(test_texts)
    medical = set(data.load("medquad_corpus")["train"]["text"])
    assert not medical & set(train_texts)
    assert data.general_corpus("train", per_source=10, seed=1) == data.general_corpus("train", per_source=10, seed=1)
    assert len(data.general_corpus("train", per_source=10)) == 10 * len(data.GENERAL_SOURCES)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        data.general_corpus("validation")


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="unknown dataset 'imdb'; choose one of"):
        data.load("imdb")


def test_unknown_source():
    with pytest.raises(ValueError, match="source must be 'packaged' or 'hub'"):
        data.load("dolly", source="web")


def test_hub_source_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="offline mode"):
        data.load("rotten_tomatoes", source="hub")
    with pytest.raises(ValueError, match="no parquet-backed Hub copy"):
        data.load("wikigold", source="hub")


def test_missing_column_names_the_column():
    ds = DatasetDict({"train": Dataset.from_dict({"sentence": ["a"], "label": [0]})})
    with pytest.raises(ValueError, match="has no column 'text'.*rename_column"):
        data.validate(ds, "classification", ("neg", "pos"))


def test_empty_split():
    ds = DatasetDict({"train": Dataset.from_dict({"text": [], "label": []})})
    with pytest.raises(ValueError, match="split 'train' is empty"):
        data.validate(ds, "classification", ("neg", "pos"))


def test_label_outside_the_label_set():
    ds = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b"], "label": [0, 2]})})
    with pytest.raises(ValueError, match=r"label 2 in row 1 is not in the label set"):
        data.validate(ds, "classification", ("neg", "pos"))


@pytest.mark.parametrize("tags, message", [
    (["O", "I-PER"], "invalid IOB2 at position 1: 'I-PER' follows 'O'"),
    (["B-LOC", "I-PER"], "'I-PER' follows 'B-LOC'"),
    (["B-XYZ"], "unknown type 'XYZ'"),
    (["PER"], "is not O, B-TYPE or I-TYPE"),
])
def test_invalid_iob2(tags, message):
    with pytest.raises(ValueError, match=message):
        data.validate_iob2(tags, ("PER", "LOC"))


def test_ner_length_mismatch():
    ds = DatasetDict({"train": Dataset.from_dict({"tokens": [["New", "York"]], "tags": [["B-LOC"]]})})
    with pytest.raises(ValueError, match="2 tokens but 1 tags"):
        data.validate(ds, "ner", entity_types=("LOC",))


def test_take_is_deterministic_and_stratified():
    train = data.load("rotten_tomatoes")["train"]
    a = data.take(train, 16, seed=3, stratify="label")
    b = data.take(train, 16, seed=3, stratify="label")
    assert a["text"] == b["text"]
    assert sorted(a["label"]) == [0] * 8 + [1] * 8
    assert data.take(train, 16, seed=4, stratify="label")["text"] != a["text"]
    with pytest.raises(ValueError, match="subset size must be positive"):
        data.take(train, 0)


def test_for_profile_cuts_to_the_profile_sizes(cfg):
    ds = data.for_profile(data.load("rotten_tomatoes"), cfg)
    assert len(ds["train"]) == cfg.train_size and len(ds["test"]) == cfg.eval_size


def test_attribution_quotes_the_license():
    assert "CC BY-SA 3.0" in data.attribution("dolly")
    assert "CC BY 4.0" in data.attribution("wikigold")
    assert "CC BY 4.0" in data.attribution("medquad_qa") and "MedQuAD" in data.attribution("medquad_qa")


def test_medquad_qa_is_split_by_focus_and_has_a_smoke_subset(cfg):
    qa = data.load("medquad_qa")
    assert not set(qa["train"]["focus"]) & set(qa["test"]["focus"])
    small = data.for_profile(qa, cfg)      # the smoke subset: the profile's sizes, both splits
    assert len(small["train"]) == cfg.train_size and len(small["test"]) == cfg.eval_size


def test_qa_validation_names_the_problem():
    row = {"question": "q?", "answer": "a.", "id": "1", "focus": "asthma", "qtype": "information", "source": "x"}
    with pytest.raises(ValueError, match="focus 'asthma' is in splits 'train' and 'test'"):
        data.validate(DatasetDict({"train": Dataset.from_list([row]), "test": Dataset.from_list([row])}), "qa")
    with pytest.raises(ValueError, match="row 0: the answer is empty"):
        data.validate(DatasetDict({"train": Dataset.from_list([{**row, "answer": " "}])}), "qa")


def test_check_classification_names_the_problem():
    ok = Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    data.check_classification(ok)
    with pytest.raises(ValueError, match="has no column 'sentence'"):
        data.check_classification(ok, text_column="sentence")
    with pytest.raises(ValueError, match="has no column 'y'"):
        data.check_classification(ok, label_column="y")
    with pytest.raises(ValueError, match="single class in 'label' \\(1\\)"):
        data.check_classification(Dataset.from_dict({"text": ["a", "b"], "label": [1, 1]}))


def test_string_labels_get_one_mapping_for_every_split():
    """`DatasetDict.class_encode_column` encodes each split on its own: a test split without 'bad' got good=0 there
    while good=1 in training. One mapping, from the training split, must hold for both."""
    ds = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b", "c"], "label": ["neutral", "good", "bad"]}),
                      "test": Dataset.from_dict({"text": ["d", "e"], "label": ["good", "neutral"]})})
    assert ds.class_encode_column("label")["test"]["label"] == [0, 1]        # the per-split trap this avoids
    encoded = data.encode_label_column(ds)
    assert encoded["train"].features["label"].names == ["bad", "good", "neutral"]
    assert encoded["train"]["label"] == [2, 1, 0] and encoded["test"]["label"] == [1, 2]
    assert data.encode_label_column(ds, names=["neutral", "bad", "good"])["test"]["label"] == [2, 0]


@pytest.mark.parametrize("train_labels, test_labels, message", [
    (["good", "bad"], ["good", "great"],
     r"split 'test': label 'great' in row 1 is not in the label set \['bad', 'good'\]"),
    ([0, 1], [1, 2], r"split 'test': label 2 in row 1 is not in the label set \[0, 1\]"),
    (["good", "bad"], [1, 0], "mixes label strings and class ids"),
])
def test_a_label_the_training_split_lacks_is_named_with_its_split(train_labels, test_labels, message):
    ds = DatasetDict({"train": Dataset.from_dict({"text": ["x"] * 2, "label": train_labels}),
                      "test": Dataset.from_dict({"text": ["y"] * 2, "label": test_labels})})
    with pytest.raises(ValueError, match=message):
        data.encode_label_column(ds)
