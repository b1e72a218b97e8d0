"""The course data pack: licensed samples of real datasets, shipped inside ftkit (see datapack/README.md).

`load(name)` returns a `datasets.DatasetDict`. Classification sets get a `ClassLabel` "label" column,
so `ds["train"].features["label"].names` gives the label names. NER sets keep IOB2 string "tags".
Every load is validated; bad input raises a ValueError that says what to fix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PACK = Path(__file__).resolve().parent / "datapack"


@dataclass(frozen=True)
class Spec:
    folder: str  # under datapack/
    kind: str  # classification | ner | instruct | corpus
    splits: tuple
    label_names: tuple = ()  # classification: names in label-id order (ints in the files index these)
    entity_types: tuple = ()  # ner
    hub_id: str | None = None  # a parquet-backed Hub dataset with the same content, if one is known
    description: str = ""


def _banking77_labels() -> tuple:
    rows = _read_jsonl(PACK / "intent/banking77/train.jsonl")
    return tuple(sorted({r["label"] for r in rows}))


DATASETS = {
    "rotten_tomatoes": Spec("sentiment/rotten_tomatoes", "classification", ("train", "validation", "test"),
                            ("negative", "positive"), hub_id="cornell-movie-review-data/rotten_tomatoes",
                            description="movie-review sentences, binary sentiment"),
    "uci_reviews": Spec("sentiment/uci_reviews", "classification", ("train", "test"), ("negative", "positive"),
                        description="Yelp/Amazon/IMDb sentences, binary sentiment, with a `source` column"),
    "banking77": Spec("intent/banking77", "classification", ("train", "test"), (), hub_id="PolyAI/banking77",
                      description="online-banking queries, 77 intents"),
    "medquad_qtype": Spec("domain/medquad/qtype", "classification", ("train", "test"),
                          ("causes", "exams and tests", "frequency", "genetic changes", "information",
                           "inheritance", "symptoms", "treatment"),
                          description="medical questions, 8 question types"),
    "wikigold": Spec("ner/wikigold", "ner", ("train", "validation", "test"), entity_types=("PER", "LOC", "ORG", "MISC"),
                     description="Wikipedia sentences, IOB2 PER/LOC/ORG/MISC"),
    "wnut17": Spec("ner/wnut17", "ner", ("train", "validation", "test"),
                   entity_types=("person", "location", "group", "corporation", "product", "creative-work"),
                   description="noisy user text, IOB2, 6 emerging-entity types"),
    "dolly": Spec("instruct/dolly", "instruct", ("train", "test"), hub_id="databricks/databricks-dolly-15k",
                  description="instruction/response pairs (CC BY-SA 3.0)"),
    "medquad_corpus": Spec("domain/medquad/corpus.txt", "corpus", ("train",),
                           description="medical paragraphs for masked-LM domain adaptation"),
    "medquad_qa": Spec("domain/medquad/qa", "qa", ("train", "test"),
                       description="medical question-answer pairs, split by focus (disease or topic)"),
}
COLUMNS = {
    "classification": ("text", "label"),
    "ner": ("tokens", "tags"),
    "instruct": ("instruction", "context", "response", "category"),
    "corpus": ("text",),
    "qa": ("question", "answer", "id", "focus", "qtype", "source"),
}


# --------------------------------------------------------------------------- validation
def require_columns(ds, columns, what: str = "dataset") -> None:
    """Raise a ValueError naming each missing column and the columns that do exist."""
    have = list(ds.column_names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{what} has no column {missing[0]!r} (columns: {have}); "
                         f"rename yours with ds.rename_column(old, {missing[0]!r})")


def require_rows(ds, what: str = "split") -> None:
    if len(ds) == 0:
        raise ValueError(f"{what} is empty: it needs at least one row")


def is_splits(ds) -> bool:
    """A DatasetDict (or a dict of Datasets): named splits rather than rows."""
    from collections.abc import Mapping

    from datasets import Dataset

    return isinstance(ds, Mapping) and bool(ds) and all(isinstance(part, Dataset) for part in ds.values())


def require_splits(ds, what: str = "ds", splits=("train",)) -> None:
    """`ds` is a datasets.DatasetDict (or a dict of Datasets) holding each of `splits`. A single Dataset, a list of
    rows or anything else is a ValueError saying what was given and how to make the splits."""
    from datasets import Dataset

    if isinstance(ds, Dataset):
        raise ValueError(f"{what} is one datasets.Dataset ({ds.num_rows} rows), but a DatasetDict of named splits is "
                         f"expected (needs {list(splits)}): wrap yours, e.g. DatasetDict({{'train': train_ds, 'test': "
                         "test_ds}), or split one, e.g. ds.train_test_split(test_size=0.2, seed=0)")
    if not is_splits(ds):
        raise ValueError(f"{what} is a {type(ds).__name__}, but a DatasetDict of named splits is expected (needs "
                         f"{list(splits)}): build one, e.g. DatasetDict({{'train': Dataset.from_list(train_rows), "
                         "'test': Dataset.from_list(test_rows)})")
    missing = [s for s in splits if s not in ds]
    if missing:
        raise ValueError(f"{what} has no {missing[0]!r} split (splits: {list(ds)}); name your splits "
                         f"{list(splits)}, e.g. DatasetDict({{{missing[0]!r}: ...}})")


def check_labels(labels, allowed, column: str = "label") -> None:
    """Every label must be in `allowed`; the error names the first offender and its row."""
    allowed_set = set(allowed)
    for row, label in enumerate(labels):
        if label not in allowed_set:
            shown = sorted(allowed_set, key=str)[:10]
            raise ValueError(f"{column} {label!r} in row {row} is not in the label set {shown}"
                             f"{' ...' if len(allowed_set) > 10 else ''}")


def check_texts(texts, what: str = "texts") -> list[str]:
    """A non-empty list of non-empty strings; the error names the first bad entry and its position."""
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: give at least one sentence")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{what}[{i}] is {t!r}; every entry must be a non-empty string "
                             "(drop or fill missing texts first, e.g. ds.filter(lambda r: r['text']))")
    return texts


def check_class_ids(labels, column: str = "label", what: str = "training data") -> None:
    """Class ids are whole numbers >= 0. A missing value (None/NaN) or a string label names its row and the fix."""
    import math

    labels = list(labels)
    for row, v in enumerate(labels):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            raise ValueError(f"{what}: {column!r} is missing (None/NaN) in row {row}; drop or label those rows "
                             f"first, e.g. ds.filter(lambda r: r[{column!r}] is not None)")
    for row, v in enumerate(labels):
        if isinstance(v, str):
            raise ValueError(f"{what}: {column!r} holds strings (row {row}: {v!r}), but a classifier needs class "
                             f"ids 0..n-1; convert them with ds.class_encode_column({column!r}) on one split, or "
                             f"ftkit.data.encode_label_column(ds, {column!r}) on a DatasetDict (one mapping for every "
                             "split: DatasetDict.class_encode_column maps each split on its own)")
    for row, v in enumerate(labels):
        if isinstance(v, bool) or not float(v).is_integer() or v < 0:
            raise ValueError(f"{what}: {column!r} in row {row} is {v!r}; class ids are whole numbers 0..n-1")


def encode_label_column(ds, column: str = "label", names=None, train: str = "train"):
    """`ds` (a DatasetDict) with `column` as class ids 0..n-1 under ONE mapping for every split.

    String labels become their index in `names`, or, without `names`, in the training split's labels sorted (the
    ids `class_encode_column` gives that split); the column becomes a ClassLabel. Why not
    `ds.class_encode_column(column)`: on a DatasetDict it encodes each split on its own, so a split that lacks a
    class (or has one more) silently got other ids for the same label. Class ids are kept as they are.
    Every split is checked: a label outside the mapping (`names`, or what the training split holds; for ids,
    0..n-1 with n = len(names) or the training split's largest id + 1), or a mix of strings and ids, is a ValueError
    naming the label, its split and row."""
    from datasets import ClassLabel

    if train not in ds:
        raise ValueError(f"no {train!r} split to take the label mapping from; splits: {list(ds)}")
    for split, part in ds.items():
        require_columns(part, [column], f"split {split!r}")
    kinds = {split: {type(v).__name__ for v in part[column]} for split, part in ds.items()}
    strings = {split for split, k in kinds.items() if "str" in k}
    if strings and any(k != {"str"} for k in kinds.values() if k):
        raise ValueError(f"{column!r} mixes label strings and class ids across splits ({kinds}); use the same kind in "
                         "every split (strings are encoded consistently by ftkit.data.encode_label_column)")
    if not strings:
        ids = [v for v in ds[train][column] if isinstance(v, int)]
        n = len(names) if names is not None else max(ids, default=-1) + 1
        for split, part in ds.items():
            check_labels(part[column], range(n), f"split {split!r}: {column}")
        return ds
    names = list(names) if names is not None else sorted(set(ds[train][column]))
    for split, part in ds.items():
        check_labels(part[column], names, f"split {split!r}: {column}")
    index = {name: i for i, name in enumerate(names)}

    def encode(part):
        features = part.features.copy()
        features[column] = ClassLabel(names=names)
        return part.map(lambda b: {column: [index[v] for v in b[column]]}, batched=True, features=features)

    return type(ds)({split: encode(part) for split, part in ds.items()})


def check_classification(ds, text_column: str = "text", label_column: str = "label",
                         what: str = "training data") -> None:
    """A split for a classifier: both columns exist, rows exist, every text is a string, every label a class id,
    and (for training data) at least two classes occur."""
    require_columns(ds, [text_column, label_column], what)
    require_rows(ds, what)
    check_texts(ds[text_column], f"{what} column {text_column!r}")
    check_class_ids(ds[label_column], label_column, what)
    classes = sorted(set(ds[label_column]), key=str)
    if what == "training data" and len(classes) < 2:
        raise ValueError(f"training data has a single class in {label_column!r} ({classes[0]!r}); "
                         "a classifier needs examples of at least two classes")


def split_tag(tag, position: int, where: str = ""):
    """("O", None) or (prefix, type) for a B-TYPE / I-TYPE tag; anything else is a ValueError."""
    if tag == "O":
        return "O", None
    if not isinstance(tag, str) or len(tag) < 3 or tag[1] != "-" or tag[0] not in "BI":
        raise ValueError(f"{where}tag {tag!r} at position {position} is not O, B-TYPE or I-TYPE")
    return tag[0], tag[2:]


def validate_iob2(tags, types=None, where: str = "") -> None:
    """Raise ValueError at the first tag that breaks IOB2 (an I-X must follow B-X or I-X)."""
    prev = "O"
    for i, tag in enumerate(tags):
        if tag != "O":
            split_tag(tag, i, where)
            if types is not None and tag[2:] not in types:
                raise ValueError(f"{where}tag {tag!r} at position {i} has unknown type {tag[2:]!r}; types: {list(types)}")
            if tag[0] == "I" and (prev == "O" or prev[2:] != tag[2:]):
                raise ValueError(f"{where}invalid IOB2 at position {i}: {tag!r} follows {prev!r}; "
                                 f"an entity must start with B-{tag[2:]} (convert IOB1 with ftkit.ner.iob1_to_iob2)")
        prev = tag


def validate(dsdict, kind: str, label_names=(), entity_types=None) -> None:
    """Check columns, non-empty splits, the label set and IOB2 for every split."""
    for split, ds in dsdict.items():
        what = f"split {split!r}"
        require_rows(ds, what)
        require_columns(ds, COLUMNS[kind], what)
        if kind == "classification" and label_names:
            check_labels(ds["label"], range(len(label_names)), "label")
        if kind == "ner":
            for row, (tokens, tags) in enumerate(zip(ds["tokens"], ds["tags"])):
                if len(tokens) != len(tags):
                    raise ValueError(f"{what} row {row}: {len(tokens)} tokens but {len(tags)} tags; they must match")
                validate_iob2(tags, entity_types, where=f"{what} row {row}: ")
        if kind == "qa":
            for column in ("question", "answer"):
                for row, text in enumerate(ds[column]):
                    if not isinstance(text, str) or not text.strip():
                        raise ValueError(f"{what} row {row}: the {column} is empty; every pair needs both")
    if kind == "qa":
        check_qa_focus_split(dsdict)


def check_qa_focus_split(dsdict) -> None:
    """No focus (disease or topic) is in two splits, so a model fine-tuned on train never saw a test answer.
    (MedQuAD's ids are not unique: 114 repeat across its sub-collections, so ftkit indexes answers by position.)"""
    focus_split = {}
    for split, ds in dsdict.items():
        for focus in ds["focus"]:
            if focus_split.setdefault(focus, split) != split:
                raise ValueError(f"focus {focus!r} is in splits {focus_split[focus]!r} and {split!r}; "
                                 "split QA pairs by focus so that no test topic is trained on")


# --------------------------------------------------------------------------- loading
def _read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _spec(name: str) -> Spec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def label_names(name: str) -> tuple:
    spec = _spec(name)
    if spec.kind != "classification":
        raise ValueError(f"{name!r} is a {spec.kind} dataset and has no label names")
    return spec.label_names or _banking77_labels()


def _encode_labels(rows, names):
    """String labels (banking77, medquad) become ids in `names`; int labels are checked against it."""
    index = {n: i for i, n in enumerate(names)}
    raw = [r["label"] for r in rows]
    if all(isinstance(x, int) for x in raw):
        check_labels(raw, range(len(names)))
        return raw
    check_labels(raw, names)
    return [index[x] for x in raw]


def _packaged(name: str):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    spec = _spec(name)
    if spec.kind == "corpus":
        lines = (PACK / spec.folder).read_text(encoding="utf-8").splitlines()
        return DatasetDict({"train": Dataset.from_dict({"text": lines})})
    out = {}
    for split in spec.splits:
        rows = _read_jsonl(PACK / spec.folder / f"{split}.jsonl")
        if spec.kind == "classification":
            names = label_names(name)
            labels = _encode_labels(rows, names)
            columns = {k: [r[k] for r in rows] for k in rows[0] if k != "label"}
            features = Features({**{k: Value("string") for k in columns}, "label": ClassLabel(names=list(names))})
            ds = Dataset.from_dict({**columns, "label": labels}, features=features)
        else:
            ds = Dataset.from_list(rows)
        out[split] = ds
    return DatasetDict(out)


def _hub(name: str):
    from datasets import load_dataset

    spec = _spec(name)
    if spec.hub_id is None:
        raise ValueError(f"{name!r} has no parquet-backed Hub copy that ftkit knows; use source='packaged'")
    from .env import is_offline

    if is_offline():
        raise ValueError(f"the Hub is unreachable (offline mode), so {name!r} cannot come from source='hub'; "
                         "use source='packaged'")
    # Parquet/JSON Hub repos only: datasets >= 4 refuses loading scripts, and we never pass trust_remote_code.
    ds = load_dataset(spec.hub_id)
    if name == "dolly":  # the Hub copy has one split; hold out 10% like the packaged one
        ds = ds["train"].train_test_split(test_size=0.1, seed=13)
    return ds


def load(name: str, source: str = "packaged"):
    """Load a course dataset as a DatasetDict, validated. `source` is "packaged" (offline) or "hub"."""
    if source not in ("packaged", "hub"):
        raise ValueError(f"source must be 'packaged' or 'hub', not {source!r}")
    spec = _spec(name)
    ds = _packaged(name) if source == "packaged" else _hub(name)
    names = ds["train"].features["label"].names if spec.kind == "classification" else ()
    validate(ds, spec.kind, names, spec.entity_types or None)
    return ds


# --------------------------------------------------------------------------- subsets
def take(ds, n: int | None, seed: int = 0, stratify: str | None = None):
    """A deterministic subset of `n` rows (all rows when n is None or larger than the split).

    With `stratify="label"` every class gets an equal share (as far as the class sizes allow),
    so even a 16-row smoke subset of a binary task has both classes.
    """
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    shuffled = ds.shuffle(seed=seed)
    if stratify is None:
        return shuffled.select(range(n))
    require_columns(ds, [stratify])
    by_class: dict = {}
    for i, label in enumerate(shuffled[stratify]):
        by_class.setdefault(label, []).append(i)
    picked, queues = [], [list(v) for _, v in sorted(by_class.items())]
    while len(picked) < n:  # round-robin over classes keeps the shares equal
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return shuffled.select(sorted(picked))


def for_profile(ds, cfg, stratify: str | None = "label", seed: int = 0):
    """Cut a DatasetDict to the profile's sizes: train_size for train, eval_size for the other splits."""
    from datasets import DatasetDict

    profile = getattr(cfg, "profile", cfg)
    strat = stratify if stratify in ds["train"].column_names else None
    return DatasetDict({split: take(part, profile.train_size if split == "train" else profile.eval_size,
                                    seed=seed, stratify=strat)
                        for split, part in ds.items()})


# --------------------------------------------------------------------------- general English text
GENERAL_SOURCES = {  # dataset -> (train split, held-out split); all non-medical
    "rotten_tomatoes": ("train", "test"), "uci_reviews": ("train", "test"), "banking77": ("train", "test"),
    "dolly": ("train", "test"), "wikigold": ("train", "test"),
}


def _detokenize(tokens) -> str:
    """Join NER tokens back into a sentence ("Paris , France ." -> "Paris, France.")."""
    import re

    return re.sub(r" ([,.;:!?')\]])", r"\1", re.sub(r"([(\[]) ", r"\1", " ".join(tokens)))


def general_corpus(split: str = "train", per_source: int | None = None, seed: int = 0) -> list[str]:
    """Non-medical English sentences from the pack (reviews, banking queries, dolly, Wikipedia).

    `split="train"` draws from the training splits, `split="test"` from the held-out ones, so text
    used to train something on "train" can be evaluated on unseen "test" text. At most `per_source`
    texts come from each dataset; the result is shuffled with `seed` and has no duplicates.
    """
    import random

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    texts = []
    for name, splits in GENERAL_SOURCES.items():
        rows = _read_jsonl(PACK / DATASETS[name].folder / f"{splits[split == 'test']}.jsonl")
        if name == "wikigold":
            found = [_detokenize(r["tokens"]) for r in rows]
        elif name == "dolly":
            found = [t for r in rows for t in (r["instruction"], r["response"])]
        else:
            found = [r["text"] for r in rows]
        found = sorted({t.strip() for t in found if len(t.split()) >= 5})
        random.Random(seed).shuffle(found)
        texts += found[:per_source]
    random.Random(seed).shuffle(texts)
    return texts


def attribution(name: str) -> str:
    """Where the data came from and its license, from the data pack README."""
    spec = _spec(name)
    readme = (PACK / "README.md").read_text(encoding="utf-8")
    heading = "domain/medquad" if spec.folder.startswith("domain/medquad") else spec.folder  # one section for all three
    section = readme.split(f"## {heading}", 1)
    if len(section) < 2:
        return spec.description
    body = section[1].split("\n## ", 1)[0]
    keep = [p.strip() for p in body.split("\n\n") if p.strip().startswith(("**Source.**", "**License.**"))]
    return "\n".join(keep)
