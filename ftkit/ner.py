"""Session 04: named-entity recognition with B-/I- tags.

- IOB schemes: `validate_iob2` (in ftkit.data), `validate_iob1`, `iob1_to_iob2`, `iob2_to_iob1`, `spans`.
- Subword label alignment: `align_labels` gives one label per sub-token, -100 where the loss must ignore it.
- Back to words: `word_tags` takes the first sub-token's prediction for each word.
- Scores: `seqeval_metrics`, entity-level and strict IOB2, one prediction per word in both alignment modes.
- Looking at predictions: `highlight_html`, `error_kinds`, `type_confusion`.
"""
from __future__ import annotations

import html
import numbers
from collections import Counter

import numpy as np

from .data import split_tag, validate_iob2

IGNORE = -100  # the label id that torch's cross-entropy skips


# --------------------------------------------------------------------------- input checks
def check_words(tokens, where: str = "tokens") -> None:
    """A list of words (strings). One string is refused: iterating it would count letters as words."""
    if isinstance(tokens, str):
        raise ValueError(f"{where}: the words are one string ({tokens[:40]!r}), but a list of words is expected, one "
                         "tag per word: split the text first, e.g. ner.split_words(text)")
    if not hasattr(tokens, "__len__") or isinstance(tokens, dict):
        raise ValueError(f"{where}: a list of words is expected, not a {type(tokens).__name__}")
    bad = next((i for i, w in enumerate(tokens) if not isinstance(w, str)), None)
    if bad is not None:
        raise ValueError(f"{where}: word {bad} is {tokens[bad]!r}; every word must be a string")


def check_tag_names(tags, where: str = "tags") -> None:
    """A list of tag names ("O", "B-PER", ...). One string, or integer tag ids, are refused with the fix.

    Integer ids are not taken as they are: a dataset's ClassLabel numbers its tags in its own order, which need
    not be the model's label order, so the same id can mean another tag."""
    if isinstance(tags, str):
        raise ValueError(f"{where}: the tags are one string ({tags[:40]!r}), but a list of tags is expected, one "
                         "per word, e.g. ['B-PER', 'I-PER', 'O']")
    if not hasattr(tags, "__len__") or isinstance(tags, dict):
        raise ValueError(f"{where}: a list of tags is expected, not a {type(tags).__name__}")
    ids = [t for t in tags if isinstance(t, numbers.Integral) and not isinstance(t, bool)]
    if ids:
        shown = [int(t) if isinstance(t, numbers.Integral) else t for t in list(tags)[:6]]
        raise ValueError(f"{where}: the tags are integer ids ({shown}), but ftkit reads tag names such as "
                         "'B-PER'. Convert the ids to names with your dataset's ClassLabel, e.g. "
                         "names = ds['train'].features['tags'].feature; "
                         "ds = ds.map(lambda r: {'tags': names.int2str(r['tags'])}) "
                         "(a dataset's id order need not be the model's label order)")


# --------------------------------------------------------------------------- tagging schemes
def validate_iob1(tags) -> None:
    """IOB1: entities start with I-; B-X appears only right after another X entity, to split the two."""
    check_tag_names(tags)
    prev_type = None
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag, i)
        if prefix == "B" and prev_type != kind:
            raise ValueError(f"invalid IOB1 at position {i}: {tag!r} does not follow an entity of type {kind}; "
                             f"in IOB1 an entity starts with I-{kind}")
        prev_type = kind


def iob1_to_iob2(tags) -> list:
    """Every entity starts with B-: an I-X that does not continue an X entity becomes B-X."""
    validate_iob1(tags)
    out, prev = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (prev == "O" or prev[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        prev = tag
    return out


def iob2_to_iob1(tags) -> list:
    """B-X stays only where it splits two adjacent X entities; elsewhere it becomes I-X."""
    validate_iob2(tags)
    out, prev = [], "O"
    for tag in tags:
        new = tag
        if tag.startswith("B-") and not (prev != "O" and prev[2:] == tag[2:]):
            new = "I-" + tag[2:]
        out.append(new)
        prev = tag
    return out


def spans(tags, strict: bool = False) -> list[tuple[str, int, int]]:
    """(type, start, end) for each entity in IOB2 tags; `end` is exclusive.

    A model's predictions can hold an I-X that continues no X entity. By default (to show what the model said)
    such a stray I- opens an entity; with `strict=True` it is no entity, as in seqeval's strict IOB2 mode, the
    scoring `seqeval_metrics` uses. Tags must be a list of names (`check_tag_names`)."""
    check_tag_names(tags)
    found, start, kind = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        continues = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not continues:
            found.append((kind, start, i))
            start, kind = None, None
        if tag.startswith("B-") or (tag.startswith("I-") and not continues and not strict):
            start, kind = i, tag[2:]
    return found


def label_list(entity_types) -> list[str]:
    """O first, then B-/I- for each type: the classifier's label order."""
    return ["O"] + [f"{p}-{t}" for t in entity_types for p in ("B", "I")]


# --------------------------------------------------------------------------- subword alignment
def align_labels(word_ids, word_tags, label2id, mode: str = "first") -> list[int]:
    """One label id per sub-token.

    Special tokens ([CLS], [SEP], padding: word id None) get -100, so the loss ignores them.
    mode="first": only the first sub-token of a word keeps the word's label, the rest get -100.
    mode="all": every sub-token is labelled; a word's continuation pieces turn B-X into I-X, so
    that "Washington" -> wash ##ing ##ton reads B-LOC I-LOC I-LOC, still one entity.
    A tag missing from `label2id` is a ValueError that names it and the label set; so are integer tag ids
    (`check_tag_names`).
    """
    if mode not in ("first", "all"):
        raise ValueError(f"mode must be 'first' or 'all', not {mode!r}")
    check_tag_names(word_tags, "word_tags")
    words = max((w for w in word_ids if w is not None), default=-1) + 1
    if words > len(word_tags):
        raise ValueError(f"the tokenizer found {words} words but there are {len(word_tags)} tags: give one tag per "
                         "word (and pass the words as a list, with is_split_into_words=True)")
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(_label_id(word_tags[word], label2id))
        elif mode == "first":
            labels.append(IGNORE)
        else:
            tag = word_tags[word]
            labels.append(_label_id("I-" + tag[2:] if tag.startswith("B-") else tag, label2id))
        previous = word
    return labels


def _label_id(tag, label2id) -> int:
    if tag not in label2id:
        raise ValueError(f"tag {tag!r} is not in the label set {list(label2id)}")
    return label2id[tag]


def check_sentence(tokens, tags, where: str | None = None) -> None:
    """One sentence: a list of words (`check_words`), a list of tag names (`check_tag_names`), one tag per word.
    `where` (e.g. "split 'train' row 3") prefixes every message."""
    check_words(tokens, f"{where} 'tokens'" if where else "tokens")
    check_tag_names(tags, f"{where} 'tags'" if where else "tags")
    if len(tokens) != len(tags):
        raise ValueError(f"{where + ': ' if where else ''}{len(tokens)} words but {len(tags)} tags; every word needs "
                         "exactly one tag")


def check_rows(ds) -> None:
    """`ds` is a DatasetDict whose every row has "tokens" (a list of words) and "tags" (one tag name per word).

    One split given alone, a sentence given as one string, integer tag ids or a row with more words than tags are
    ValueErrors naming the split and row and saying what to do (`data.require_splits`, `check_sentence`)."""
    from .data import require_columns, require_splits

    require_splits(ds, "ds", splits=())
    for split, part in ds.items():
        require_columns(part, ["tokens", "tags"], f"split {split!r}")
        for row, (tokens, tags) in enumerate(zip(part["tokens"], part["tags"])):
            check_sentence(tokens, tags, f"split {split!r} row {row}")


def check_tags(ds, label2id) -> None:
    """Every split's rows are well formed (`check_rows`) and their tags are in the model's label set.

    A tag the model does not know (e.g. B-ORG only in the test split, when the labels came from the training split)
    is a ValueError naming the tag, its split and row, and the label set: the model could never predict it."""
    check_rows(ds)
    known = set(label2id)
    for split, part in ds.items():
        for row, tags in enumerate(part["tags"]):
            unknown = [t for t in tags if t not in known]
            if unknown:
                raise ValueError(
                    f"tag {unknown[0]!r} in split {split!r} (row {row}) is not in the model's tag set "
                    f"{list(label2id)}; "
                    "a model cannot learn or predict a tag it has no label for: add training examples with that tag "
                    "and build the label list from them, or map the tag to a known one (or to 'O') in every split")


def tokenize_and_align(ds, tokenizer, label2id, mode: str = "first", max_length: int = 128):
    """Tokenize pre-split words and attach aligned `labels` to every split (a DatasetDict with a "train" split).

    Each row's "tokens" is a list of words and its "tags" a list of tag NAMES, one per word. Integer tag ids (a
    dataset's ClassLabel column) are refused, not guessed: the dataset's id order need not be `label2id`'s, so convert
    them first with the ClassLabel's `int2str` (the error shows how). One Dataset instead of a DatasetDict, or words
    given as one string, are ValueErrors too (`check_rows`).

    `mode` ("first" or "all", see `align_labels`) labels the "train" split: it decides what the model learns from.
    Every other split is labelled at each word's first piece, whatever the mode, so its loss and its scores count
    one prediction per word (the one `word_tags` and `predict_tags` read back) and the two modes are compared like
    for like. Tags are checked in every split first (`check_tags`)."""
    if mode not in ("first", "all"):
        raise ValueError(f"mode must be 'first' or 'all', not {mode!r}")
    from .data import require_splits

    require_splits(ds, "ds", splits=("train",))
    check_tags(ds, label2id)

    def encode(batch, split_mode):
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        enc["labels"] = [align_labels(enc.word_ids(i), tags, label2id, split_mode)
                         for i, tags in enumerate(batch["tags"])]
        return enc

    from datasets import DatasetDict

    return DatasetDict({split: part.map(encode, batched=True, remove_columns=part.column_names,
                                        fn_kwargs={"split_mode": mode if split == "train" else "first"})
                        for split, part in ds.items()})


def word_tags(token_label_ids, word_ids, id2label, n_words: int) -> list[str]:
    """Back to one tag per word: the first sub-token's label. Words cut off by truncation get "O".
    A label id missing from `id2label` is a ValueError (`_label_names`)."""
    names = _label_names(id2label)
    _check_ids_known([label_id for label_id, word in zip(token_label_ids, word_ids) if word is not None], names,
                     "predicted")
    tags = ["O"] * n_words
    previous = None
    for label_id, word in zip(token_label_ids, word_ids):
        if word is not None and word != previous:
            tags[word] = names[int(label_id)]
        previous = word
    return tags


def alignment_table(tokens, tags, tokenizer, label_names, mode: str = "first"):
    """word / token / word_id / label for one sentence, to look at the alignment."""
    import pandas as pd

    check_sentence(tokens, tags)

    label2id = {l: i for i, l in enumerate(label_names)}
    enc = tokenizer(tokens, is_split_into_words=True)
    word_ids = enc.word_ids()
    labels = align_labels(word_ids, tags, label2id, mode)
    return pd.DataFrame({
        "token": tokenizer.convert_ids_to_tokens(enc["input_ids"]),
        "word_id": word_ids,
        "word": [tokens[w] if w is not None else "" for w in word_ids],
        "label id": labels,
        "label": [label_names[l] if l != IGNORE else "(ignored)" for l in labels],
    })


# --------------------------------------------------------------------------- training and prediction
def seqeval_metrics(id2label):
    """A Trainer `compute_metrics`: entity-level P/R/F1, overall and per type, and word accuracy, with ftkit's
    offline seqeval module in strict IOB2 mode (seqeval's `mode="strict", scheme=IOB2`).

    Strict, because the data are IOB2 (`data.validate_iob2`): an entity is a B-X followed by its I-X, and a
    predicted I-X with no B-X before it is no entity. seqeval's default (CoNLL-style) mode would let such an I-X
    open one, so gold B-PHONE I-PHONE vs predicted I-PHONE I-PHONE would count as a perfect match.
    Every position whose label is not -100 is one scored item: `tokenize_and_align` labels evaluation splits at
    each word's first piece, so these are word-level scores. A set with no labelled position is a ValueError, and so is
    a gold or predicted label id that `id2label` lacks (it names the id and the valid ids).
    `id2label` maps id -> tag (int or digit-string keys, as in `model.config.id2label`), or is the list of tags."""
    from . import metrics

    names = _label_names(id2label)

    def compute(eval_pred):
        logits, labels = eval_pred
        preds = np.argmax(logits, axis=-1)
        labels = np.asarray(labels)
        keep = labels != IGNORE
        _check_ids_known(labels[keep], names, "gold")
        _check_ids_known(preds[keep], names, "predicted")
        true_tags, pred_tags = [], []
        for p_row, l_row in zip(preds, labels):
            keep = l_row != IGNORE
            true_tags.append([names[int(l)] for l in l_row[keep]])
            pred_tags.append([names[int(p)] for p in p_row[keep]])
        if not any(true_tags):
            raise ValueError("the evaluation set has no labelled word (every label is -100): nothing to score")
        if not any(tag.startswith("B-") for row in true_tags for tag in row):
            # strict IOB2 opens an entity only at B-: without one, precision, recall and F1 are over zero entities
            raise ValueError("the evaluation labels hold no entity (no B- tag): entity F1 over zero entities is not "
                             "a number. Score a set that has entities; if its tags are IOB1 (an entity may start "
                             "with I-), convert them first with ner.iob1_to_iob2")
        scores = metrics.load("seqeval").compute(predictions=pred_tags, references=true_tags, mode="strict")
        flat = {k: v for k, v in scores.items() if k.startswith("overall_")}
        flat.update({f"{kind}_f1": v["f1"] for kind, v in scores.items() if isinstance(v, dict)})
        return flat

    return compute


def _label_names(id2label) -> dict:
    """id -> tag as a dict with int keys, from a dict (int or digit-string keys, as config.json stores them) or a
    list of tags."""
    if isinstance(id2label, (list, tuple)):
        return dict(enumerate(id2label))
    if not hasattr(id2label, "items"):
        raise ValueError(f"id2label must map label ids to tags (e.g. model.config.id2label), not a "
                         f"{type(id2label).__name__}")
    try:
        return {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ValueError(f"id2label must map label ids to tags, e.g. {{0: 'O', 1: 'B-PER'}}; its keys are "
                         f"{list(id2label)[:6]}: did you pass label2id?") from None


def _check_ids_known(ids, names: dict, role: str) -> None:
    """Every id has a tag in `names`; else a ValueError naming the id, the valid ids and the fix."""
    unknown = sorted({int(i) for i in np.asarray(ids).ravel()} - set(names))
    if not unknown:
        return
    fix = ("the classifier has more outputs than id2label has labels: build the metrics from the model's own "
           "model.config.id2label" if role == "predicted" else
           "the labels were made with another label set: tokenize with label2id = {tag: i for i, tag in "
           "id2label.items()}, the same label list the model was built with")
    raise ValueError(f"{role} label id {unknown[0]} is not in id2label (valid ids: {sorted(names)}, tags "
                     f"{list(names.values())[:10]}); {fix}")


def predict_tags(model, tokenizer, sentences, batch_size: int = 32, max_length: int = 128) -> list[list[str]]:
    """Word-level IOB2 tags for a list of pre-split sentences (each a list of words): each word gets its first
    piece's prediction (`word_tags`), as the scores count it. One sentence is `[words]`, not `words`."""
    import torch

    from .models import on_device

    if isinstance(sentences, (str, dict)) or not hasattr(sentences, "__len__"):
        raise ValueError(f"sentences: a list of sentences, each a list of words, is expected, not a "
                         f"{type(sentences).__name__}; e.g. [ner.split_words(text)]")
    for i, words in enumerate(sentences):
        check_words(words, f"sentences[{i}]" + (" (one sentence is [words], not words)" if isinstance(words, str)
                                                 else ""))

    model.eval()
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start:start + batch_size]
        enc = tokenizer(batch, is_split_into_words=True, truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        with torch.inference_mode():
            ids = model(**on_device(enc, model)).logits.argmax(-1).cpu().numpy()
        for i, words in enumerate(batch):
            out.append(word_tags(ids[i], enc.word_ids(i), model.config.id2label, len(words)))
    return out


# --------------------------------------------------------------------------- looking at predictions
COLOURS = {0: "#fde68a", 1: "#bfdbfe", 2: "#bbf7d0", 3: "#fecaca", 4: "#e9d5ff", 5: "#fed7aa"}


def highlight_html(tokens, tags, title: str = "", types=None) -> str:
    """The sentence with each entity in a coloured box labelled with its type."""
    check_sentence(tokens, tags)
    types = list(types or sorted({t for t, _, _ in spans(tags)}))
    starts = {s: (t, e) for t, s, e in spans(tags)}
    parts, i = [], 0
    while i < len(tokens):
        if i in starts:
            kind, end = starts[i]
            colour = COLOURS[types.index(kind) % len(COLOURS)] if kind in types else "#e5e7eb"
            text = html.escape(" ".join(tokens[i:end]))
            parts.append(f'<span style="background:{colour};padding:1px 4px;border-radius:4px">{text} '
                         f'<sub style="font-size:70%">{html.escape(kind)}</sub></span>')
            i = end
        else:
            parts.append(html.escape(tokens[i]))
            i += 1
    head = f"<b>{html.escape(title)}</b> " if title else ""
    return f'<div style="line-height:2">{head}{" ".join(parts)}</div>'


def _check_pairs(gold_seqs, pred_seqs) -> None:
    """As many predicted sentences as gold ones, each with as many tags: zip would silently score fewer."""
    for what, seqs in (("gold_seqs", gold_seqs), ("pred_seqs", pred_seqs)):
        if isinstance(seqs, str) or any(isinstance(tags, str) for tags in list(seqs)):
            raise ValueError(f"{what}: a list of sentences, each a list of tags, is expected; one sentence's tags "
                             "are [tags], e.g. [['B-PER', 'I-PER', 'O']]")
    gold_seqs, pred_seqs = list(gold_seqs), list(pred_seqs)
    if len(gold_seqs) != len(pred_seqs):
        raise ValueError(f"{len(gold_seqs)} gold sentences but {len(pred_seqs)} predicted ones; they must match")
    for i, (gold, pred) in enumerate(zip(gold_seqs, pred_seqs)):
        if len(gold) != len(pred):
            raise ValueError(f"sentence {i}: {len(gold)} gold tags but {len(pred)} predicted tags; they must match")


def error_kinds(gold_seqs, pred_seqs) -> Counter:
    """Each gold entity is correct, wrong type (same span), wrong boundary (overlaps, same type),
    wrong type and boundary, or missed; each predicted entity that overlaps nothing is spurious.
    Entities are read strictly (`spans(..., strict=True)`), as `seqeval_metrics` scores them, so "correct"
    counts exactly the entities that its F1 counts as right."""
    _check_pairs(gold_seqs, pred_seqs)
    counts: Counter = Counter()
    for gold_tags, pred_tags in zip(gold_seqs, pred_seqs):
        gold, pred = spans(gold_tags, strict=True), spans(pred_tags, strict=True)
        used = set()
        for kind, s, e in gold:
            if (kind, s, e) in pred:
                counts["correct"] += 1
                used.add((kind, s, e))
                continue
            overlap = [p for p in pred if p[1] < e and s < p[2]]
            used.update(overlap)
            if not overlap:
                counts["missed"] += 1
            elif any(p[1:] == (s, e) for p in overlap):
                counts["wrong type"] += 1
            elif any(p[0] == kind for p in overlap):
                counts["wrong boundary"] += 1
            else:
                counts["wrong type and boundary"] += 1
        counts["spurious"] += sum(1 for p in pred if p not in used)
    return counts


def type_confusion(gold_seqs, pred_seqs, types):
    """Rows: gold type; columns: the type of the overlapping predicted entity (read strictly, as
    `error_kinds` does), or "missed"."""
    import pandas as pd

    _check_pairs(gold_seqs, pred_seqs)
    table = pd.DataFrame(0, index=list(types), columns=list(types) + ["missed"])
    for gold_tags, pred_tags in zip(gold_seqs, pred_seqs):
        pred = spans(pred_tags, strict=True)
        for kind, s, e in spans(gold_tags, strict=True):
            overlap = [p for p in pred if p[1] < e and s < p[2]]
            table.loc[kind, overlap[0][0] if overlap else "missed"] += 1
    return table


def split_words(text: str) -> list[str]:
    """Words and punctuation, the way the NER datasets are tokenized ("Paris," -> "Paris", ",")."""
    import re

    words = re.findall(r"\w+(?:[-']\w+)*|[^\w\s]", text)
    if not words:
        raise ValueError("type a sentence with at least one word")
    return words


def train_tagger(cfg, encoded, tokenizer, label_names, n_frozen: int = 0, epochs: float | None = None,
                 learning_rate: float | None = None, name: str | None = None, config_overrides: dict | None = None,
                 validate: bool = False, **arg_overrides):
    """A fresh token classifier, bottom `n_frozen` blocks frozen, trained and scored on `encoded["test"]`:
    (RunResult, model). With `validate`, the "validation" split is scored after every epoch as well
    (`RunResult.eval_history`: loss and entity scores per epoch); it chooses nothing, the run ends with its last
    weights. `arg_overrides` go to the TrainingArguments (and `resume_from_checkpoint` to the Trainer).
    `encoded` comes from `tokenize_and_align` with the same label order as `label_names`."""
    from transformers import DataCollatorForTokenClassification

    from . import models, train
    from .data import require_splits

    require_splits(encoded, "encoded", splits=("train", "test"))
    _check_label_ids(encoded, label_names)
    model = models.load_token_classifier(label_names, cfg, **(config_overrides or {}))
    train.freeze_bottom(model, n_frozen)
    overrides = dict(arg_overrides, **({"num_train_epochs": epochs} if epochs is not None else {}))
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    if validate and "validation" not in encoded:
        raise ValueError(f"validate=True scores the 'validation' split after every epoch, but the encoded data have "
                         f"only {list(encoded)}; keep the dataset's validation split, or pass validate=False")
    result = train.fit(model, encoded["train"], encoded["test"], cfg,
                       name=name or f"{n_frozen} frozen, {epochs or cfg.epochs} ep",
                       data_collator=DataCollatorForTokenClassification(tokenizer),
                       compute_metrics=seqeval_metrics(model.config.id2label),
                       validation_ds=encoded["validation"] if validate else None, **overrides)
    return result, model


def _check_label_ids(encoded, label_names) -> None:
    """Label ids fit the classifier's `label_names`: an id past its end would fail deep inside the loss."""
    for split in ("train", "test"):
        if split not in encoded:
            raise ValueError(f"encoded data need a {split!r} split (from tokenize_and_align); splits: {list(encoded)}")
        top = max((max(row) for row in encoded[split]["labels"] if row), default=IGNORE)
        if top >= len(label_names):
            raise ValueError(f"split {split!r} holds label id {top}, but label_names has {len(label_names)} labels "
                             f"({list(label_names)}); tokenize with label2id built from the same label_names")


def tagger_panel(model, tokenizer, types):
    """A text box: type a sentence, press Tag, see the entities."""
    import ipywidgets as w
    from IPython.display import HTML, display

    from .widgets import Panel

    def tag(sentence):
        words = split_words(sentence)
        tags = predict_tags(model, tokenizer, [words])[0]
        display(HTML(highlight_html(words, tags, types=types)))
        return list(zip(words, tags))

    box = w.Text(value="Angela Merkel met executives of Siemens in Munich .", description="sentence",
                 layout={"width": "90%"})
    return Panel(tag, {"sentence": box}, title="Type a sentence and press Tag", button="Tag")


def training_panel(cfg, encoded, tokenizer, label_names, table, depth: int, learning_rate: float,
                   epochs: float | None = None):
    """Epochs and frozen blocks for the tagger; each run adds a row to `table`.

    Every run uses the main run's `learning_rate`, so a row differs from the main run only in the knobs the
    learner moved (like with like)."""
    from . import widgets

    def run(n_frozen, epochs):
        result, _ = train_tagger(cfg, encoded, tokenizer, label_names, n_frozen, epochs, learning_rate=learning_rate,
                                 name=frozen_name(n_frozen, depth, epochs, learning_rate))
        table.add(result)
        return result.numbers_only()

    def plot(_panel):
        return table.bar("overall_f1", title="entity-level F1 per run")

    controls = {"n_frozen": widgets.int_slider(0, 0, depth, "frozen blocks"),
                "epochs": widgets.float_slider(float(epochs or cfg.epochs), 0.5, 8.0, "epochs", step=0.5)}
    return widgets.Panel(run, controls, plot=plot, title="Train the tagger")


# --------------------------------------------------------------------------- section 6's frozen run, recorded
# The main run's settings (section 4), and section 6's run that freezes FROZEN_BLOCKS of the 6 blocks and changes
# nothing else. Recorded (`python -m ftkit record ner_frozen`: about 4 minutes on 2 cores); the notebook draws it from
# the recording at the main run's defaults and trains it only when a setting differs.
MAIN_RUN = {"dataset": "wikigold", "align mode": "first", "max length": 128,
            "epochs": {"smoke": None, "cpu": 4, "gpu": 4}, "learning rate": {"smoke": 1e-4, "cpu": 1e-4, "gpu": 5e-5}}
FROZEN_BLOCKS = 4


def frozen_settings(profile) -> dict:
    """What decides section 6's recorded frozen run (`ftkit.results.SWEEPS["ner_frozen"]`), from the profile alone."""
    p = getattr(profile, "profile", profile)
    return {"dataset": MAIN_RUN["dataset"], "align mode": MAIN_RUN["align mode"], "max length": MAIN_RUN["max length"],
            "epochs": MAIN_RUN["epochs"][p.name], "learning rate": MAIN_RUN["learning rate"][p.name],
            "frozen blocks": FROZEN_BLOCKS, "encoder": p.models["encoder"], "train_size": p.train_size,
            "eval_size": p.eval_size, "batch_size": p.batch_size, "max_steps": p.max_steps,
            "split": "data.for_profile(data.load(dataset), cfg, stratify=None)"}


def frozen_name(n_frozen: int, depth: int, epochs, learning_rate: float) -> str:
    """The run's name in section 6's table (the panel's runs are named alike)."""
    return f"{n_frozen} of {depth} blocks frozen, {epochs} ep, lr {learning_rate:g}"


def frozen_sweep(cfg) -> list[dict]:
    """Section 6's frozen run at the main run's settings: one row, the run's table row and, under "run", the whole
    run without its model (`RunResult.to_record`)."""
    from . import data, models, train

    s = frozen_settings(cfg)
    types = list(data.DATASETS[s["dataset"]].entity_types)
    label_names = label_list(types)
    ds = data.for_profile(data.load(s["dataset"]), cfg, stratify=None)
    tokenizer = models.load_tokenizer("encoder", cfg)
    encoded = tokenize_and_align(ds, tokenizer, {l: i for i, l in enumerate(label_names)}, mode=s["align mode"],
                                 max_length=s["max length"])
    depth = len(train.find_blocks(models.load_token_classifier(label_names, cfg))[1])
    epochs = float(s["epochs"] or cfg.epochs)
    result, _ = train_tagger(cfg, encoded, tokenizer, label_names, s["frozen blocks"], epochs,
                             learning_rate=s["learning rate"],
                             name=frozen_name(s["frozen blocks"], depth, epochs, s["learning rate"]))
    result.numbers_only()
    return [{**result.row(), "run": result.to_record()}]


def frozen_run(cfg, yours: dict, panel, table):
    """Section 6's frozen run for the notebook: read from the recording (`results.sweep_rows("ner_frozen", cfg)`)
    and added to `table` when `yours` (the notebook's "dataset", "align mode", "max length", "epochs" and "learning
    rate") equals the code's `frozen_settings`, which the recording was made with; else trained now by a click on the
    training `panel` (which adds its row), and said so. Returns the run (without a model)."""
    from . import results, train

    code = frozen_settings(cfg)
    differ = {k: (v, code[k]) for k, v in yours.items() if code.get(k) != v}
    if differ:
        print("your settings differ from the recording's (yours, recorded): "
              + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in differ.items()) + "; training the frozen run now")
        epochs = yours.get("epochs")
        return panel.click(n_frozen=FROZEN_BLOCKS, epochs=float(epochs or cfg.epochs))
    recorded = results.sweep_rows("ner_frozen", cfg)
    print(recorded.summary())
    run = train.RunResult.from_record(recorded[0]["run"])
    run.name += " (trained now)" if recorded.provenance.get("live") else " (recorded)"
    table.add(run)
    return run
