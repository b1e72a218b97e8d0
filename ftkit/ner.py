"""Session 04: named-entity recognition with B-/I- tags.

- IOB schemes: `validate_iob2` (in ftkit.data), `validate_iob1`, `iob1_to_iob2`, `iob2_to_iob1`, `spans`.
- Subword label alignment: `align_labels` gives one label per sub-token, -100 where the loss must ignore it.
- Back to words: `word_tags` takes the first sub-token's prediction for each word.
- Looking at predictions: `highlight_html`, `error_kinds`, `type_confusion`.
"""
from __future__ import annotations

import html
from collections import Counter

import numpy as np

from .data import split_tag, validate_iob2

IGNORE = -100  # the label id that torch's cross-entropy skips


# --------------------------------------------------------------------------- tagging schemes
def validate_iob1(tags) -> None:
    """IOB1: entities start with I-; B-X appears only right after another X entity, to split the two."""
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


def spans(tags) -> list[tuple[str, int, int]]:
    """(type, start, end) for each entity in IOB2 tags; `end` is exclusive."""
    found, start, kind = [], None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        continues = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not continues:
            found.append((kind, start, i))
            start, kind = None, None
        if tag.startswith("B-") or (tag.startswith("I-") and not continues):  # a stray I- opens an entity
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
    """
    if mode not in ("first", "all"):
        raise ValueError(f"mode must be 'first' or 'all', not {mode!r}")
    labels, previous = [], None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(label2id[word_tags[word]])
        elif mode == "first":
            labels.append(IGNORE)
        else:
            tag = word_tags[word]
            labels.append(label2id["I-" + tag[2:] if tag.startswith("B-") else tag])
        previous = word
    return labels


def tokenize_and_align(ds, tokenizer, label2id, mode: str = "first", max_length: int = 128):
    """Tokenize pre-split words and attach aligned `labels` to every split."""
    unknown = sorted({t for tags in ds["train"]["tags"] for t in tags} - set(label2id))
    if unknown:
        raise ValueError(f"tags {unknown} are not in the label list {list(label2id)}")

    def encode(batch):
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        enc["labels"] = [align_labels(enc.word_ids(i), tags, label2id, mode) for i, tags in enumerate(batch["tags"])]
        return enc

    return ds.map(encode, batched=True, remove_columns=ds["train"].column_names)


def word_tags(token_label_ids, word_ids, id2label, n_words: int) -> list[str]:
    """Back to one tag per word: the first sub-token's label. Words cut off by truncation get "O"."""
    tags = ["O"] * n_words
    previous = None
    for label_id, word in zip(token_label_ids, word_ids):
        if word is not None and word != previous:
            tags[word] = id2label[int(label_id)]
        previous = word
    return tags


def alignment_table(tokens, tags, tokenizer, label_names, mode: str = "first"):
    """word / token / word_id / label for one sentence, to look at the alignment."""
    import pandas as pd

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
    """A Trainer `compute_metrics`: entity-level P/R/F1 per type (offline seqeval module) + token accuracy."""
    from . import metrics

    def compute(eval_pred):
        logits, labels = eval_pred
        preds = np.argmax(logits, axis=-1)
        true_tags, pred_tags = [], []
        for p_row, l_row in zip(preds, labels):
            keep = l_row != IGNORE
            true_tags.append([id2label[int(l)] for l in l_row[keep]])
            pred_tags.append([id2label[int(p)] for p in p_row[keep]])
        scores = metrics.load("seqeval").compute(predictions=pred_tags, references=true_tags)
        flat = {k: v for k, v in scores.items() if k.startswith("overall_")}
        flat.update({f"{kind}_f1": v["f1"] for kind, v in scores.items() if isinstance(v, dict)})
        return flat

    return compute


def predict_tags(model, tokenizer, sentences, batch_size: int = 32, max_length: int = 128) -> list[list[str]]:
    """Word-level IOB2 tags for a list of pre-split sentences."""
    import torch

    model.eval()
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start:start + batch_size]
        enc = tokenizer(batch, is_split_into_words=True, truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt").to(model.device)
        with torch.no_grad():
            ids = model(**enc).logits.argmax(-1).cpu().numpy()
        for i, words in enumerate(batch):
            out.append(word_tags(ids[i], enc.word_ids(i), model.config.id2label, len(words)))
    return out


# --------------------------------------------------------------------------- looking at predictions
COLOURS = {0: "#fde68a", 1: "#bfdbfe", 2: "#bbf7d0", 3: "#fecaca", 4: "#e9d5ff", 5: "#fed7aa"}


def highlight_html(tokens, tags, title: str = "", types=None) -> str:
    """The sentence with each entity in a coloured box labelled with its type."""
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


def error_kinds(gold_seqs, pred_seqs) -> Counter:
    """Each gold entity is correct, wrong type (same span), wrong boundary (overlaps, same type),
    wrong type and boundary, or missed; each predicted entity that overlaps nothing is spurious."""
    counts: Counter = Counter()
    for gold_tags, pred_tags in zip(gold_seqs, pred_seqs):
        gold, pred = spans(gold_tags), spans(pred_tags)
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
    """Rows: gold type; columns: the type of the overlapping predicted entity, or "missed"."""
    import pandas as pd

    table = pd.DataFrame(0, index=list(types), columns=list(types) + ["missed"])
    for gold_tags, pred_tags in zip(gold_seqs, pred_seqs):
        pred = spans(pred_tags)
        for kind, s, e in spans(gold_tags):
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
                 **arg_overrides):
    """A fresh token classifier, bottom `n_frozen` blocks frozen, trained and scored: (RunResult, model).
    `arg_overrides` go to the TrainingArguments (and `resume_from_checkpoint` to the Trainer)."""
    from transformers import DataCollatorForTokenClassification

    from . import models, train

    model = models.load_token_classifier(label_names, cfg, **(config_overrides or {}))
    train.freeze_bottom(model, n_frozen)
    overrides = dict(arg_overrides, **({"num_train_epochs": epochs} if epochs is not None else {}))
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    result = train.fit(model, encoded["train"], encoded["test"], cfg,
                       name=name or f"{n_frozen} frozen, {epochs or cfg.epochs} ep",
                       data_collator=DataCollatorForTokenClassification(tokenizer),
                       compute_metrics=seqeval_metrics(model.config.id2label), **overrides)
    return result, model


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
                                 name=f"{n_frozen} of {depth} blocks frozen, {epochs} ep, lr {learning_rate:g}")
        table.add(result)
        return result.numbers_only()

    def plot(_panel):
        return table.bar("overall_f1", title="entity-level F1 per run")

    controls = {"n_frozen": widgets.int_slider(0, 0, depth, "frozen blocks"),
                "epochs": widgets.float_slider(float(epochs or cfg.epochs), 0.5, 8.0, "epochs", step=0.5)}
    return widgets.Panel(run, controls, plot=plot, title="Train the tagger")
