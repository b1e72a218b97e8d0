"""Session 02: SetFit few-shot classification, its three steps made visible.

1. `make_pairs`: positive (same class) and negative (different class) sentence pairs from K examples per class.
2. Contrastive fine-tuning of the sentence model on those pairs (the `setfit` library's Trainer).
3. A classification head (logistic regression) on the new embeddings.
Baselines on the same K examples: logistic regression on frozen embeddings, and full fine-tuning.

Labels may be class ids or strings ("positive"/"negative") in every function here, the same in the training and
the test rows: strings get one mapping for both (`data.encode_label_column`), and a test label that the training
rows lack is a ValueError, since no method could predict it.
"""
from __future__ import annotations

import random

import numpy as np

from . import data, metrics, models, train


# --------------------------------------------------------------------------- step 1: pairs
def sample_k(ds, k: int, seed: int = 0, label_column: str = "label"):
    """K examples of every class, drawn reproducibly; K above a class's size is a clear error."""
    data.require_columns(ds, [label_column])
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"K (shots per class) must be a positive integer, got {k!r}")
    by_class: dict = {}
    for i, label in enumerate(ds[label_column]):
        by_class.setdefault(label, []).append(i)
    if len(by_class) < 2:
        raise ValueError(f"{label_column!r} holds a single class; few-shot classification needs two or more")
    rng = random.Random(seed)
    picked = []
    for label, rows in sorted(by_class.items()):
        if k > len(rows):
            raise ValueError(f"K={k} but class {label!r} has only {len(rows)} examples; choose K <= {len(rows)}")
        picked += rng.sample(rows, k)
    return ds.select(sorted(picked))


def pair_count(k: int, n_classes: int, iterations: int) -> int:
    """Each iteration gives every sentence one positive and one negative partner."""
    return 2 * iterations * k * n_classes


def make_pairs(texts, labels, iterations: int = 20, seed: int = 0) -> list[tuple[str, str, float]]:
    """(sentence, partner, 1.0) for a same-class partner and (sentence, partner, 0.0) for another class,
    once per sentence and iteration: the sampling that `setfit` uses when `num_iterations` is set."""
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    rng = random.Random(seed)
    by_class: dict = {}
    for text, label in zip(texts, labels):
        by_class.setdefault(label, []).append(text)
    if any(len(v) < 2 for v in by_class.values()) or len(by_class) < 2:
        raise ValueError("pairs need at least two classes with at least two examples each")
    pairs = []
    for _ in range(iterations):
        for text, label in zip(texts, labels):
            same = [t for t in by_class[label] if t is not text]
            other = [t for l, ts in by_class.items() if l != label for t in ts]
            pairs.append((text, rng.choice(same), 1.0))
            pairs.append((text, rng.choice(other), 0.0))
    return pairs


# --------------------------------------------------------------------------- steps 2 and 3: SetFit
def setfit_model(cfg):
    """The sentence model with a SetFit head. On a small machine with gradient checkpointing: SetFit's contrastive
    step has no micro-batches, and a batch of 32 pairs (64 sentences) took the cpu profile's kernel to 2.6 GB;
    recomputing each block's activations in the backward pass keeps the same updates for about a third more time."""
    from setfit import SetFitModel

    model = SetFitModel.from_pretrained(models.resolve("sentence", cfg), trust_remote_code=False)
    if getattr(cfg, "small_memory", False):
        model.model_body.gradient_checkpointing_enable({"use_reentrant": False})
    return model


def checked_splits(train_k, test, label_names=None):
    """The K training rows and the test rows as one DatasetDict, checked: rows, texts, and labels as class ids under
    one mapping for both (`data.encode_label_column`; string labels map to their index in `label_names`, or in the
    sorted training labels). A label of the test rows that the mapping lacks is a ValueError naming it."""
    from datasets import DatasetDict

    for what, part in (("training rows", train_k), ("test rows", test)):
        data.require_columns(part, ["text", "label"], what)
        data.require_rows(part, what)
        data.check_texts(part["text"], f"{what}' text")
    return data.encode_label_column(DatasetDict({"train": train_k, "test": test}), names=label_names)


def train_setfit(cfg, train_k, test, iterations: int = 20, seed: int = 0, epochs: int = 1):
    """Contrastive fine-tuning on generated pairs (step 2), then a logistic-regression head (step 3).

    Returns (RunResult, model). The metric is ftkit's offline accuracy module, passed by path.
    String labels are kept as they are (setfit's head learns them and predicts them); they are checked like every
    other entry point's (`checked_splits`).
    """
    from setfit import Trainer, TrainingArguments

    checked_splits(train_k, test)
    model = setfit_model(cfg)
    args = TrainingArguments(batch_size=cfg.batch_size, num_epochs=epochs, num_iterations=iterations,
                             max_length=cfg.max_length, seed=seed, report_to="none", save_strategy="no",
                             show_progress_bar=False, output_dir=_tmp())
    trainer = Trainer(model=model, args=args, train_dataset=train_k, metric=metrics.path("accuracy"))
    with train.measure(model.model_body, cfg.device) as m:
        trainer.train()
    scores = trainer.evaluate(test)  # setfit loads ftkit's accuracy module by path: no Hub needed
    trainable, total = train.count_params(model.model_body)
    head = int(model.model_head.coef_.size + model.model_head.intercept_.size)
    result = train.RunResult(f"SetFit K={len(train_k) // len(set(train_k['label']))}", scores, trainable + head,
                             total + head, m["seconds"], m["peak_mem_mb"],
                             extra={"pairs": pair_count(len(train_k), 1, iterations)})
    return result, model


def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="ftkit-setfit-")


def frozen_baseline(cfg, train_k, test, sentence_model=None, seed: int = 0):
    """No step 2: logistic regression on the untouched sentence embeddings of the same K examples.
    Labels are class ids or strings (`checked_splits` maps strings to ids, one mapping for both splits)."""
    from sklearn.linear_model import LogisticRegression

    checked = checked_splits(train_k, test)
    train_k, test = checked["train"], checked["test"]
    sentence_model = sentence_model or models.load_sentence_model(cfg)
    with train.measure() as m:
        X = sentence_model.encode(train_k["text"], show_progress_bar=False)
        head = LogisticRegression(max_iter=2000, random_state=seed).fit(X, train_k["label"])
    preds = head.predict(sentence_model.encode(test["text"], show_progress_bar=False))
    scores = metrics.classification_scores(preds, test["label"])
    n = int(head.coef_.size + head.intercept_.size)
    return train.RunResult("frozen embeddings + logistic regression", scores, n, n, m["seconds"], m["peak_mem_mb"])


def project_2d(before, after, labels, label_names, title_before="before step 2", title_after="after step 2"):
    """PCA of test embeddings before and after contrastive fine-tuning, side by side, coloured by label."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    from sklearn.decomposition import PCA

    fig = make_subplots(rows=1, cols=2, subplot_titles=(title_before, title_after))
    names = list(label_names)
    if not len(before) == len(after) == len(labels):
        raise ValueError(f"{len(before)} and {len(after)} embeddings for {len(labels)} labels; they must match")
    data.check_labels(labels, names if any(isinstance(l, str) for l in labels) else range(len(names)))
    labels = np.asarray([names.index(l) if isinstance(l, str) else l for l in labels])  # string labels: by name
    for col, emb in ((1, before), (2, after)):
        xy = PCA(n_components=2, random_state=0).fit_transform(emb)
        for label, name in enumerate(label_names):
            keep = labels == label
            fig.add_trace(go.Scatter(x=xy[keep, 0], y=xy[keep, 1], mode="markers", name=name,
                                     marker={"size": 5, "opacity": 0.6, "color": ["#dc2626", "#2563eb"][label % 2]},
                                     showlegend=col == 1), row=1, col=col)
    fig.update_layout(height=380, margin={"t": 60, "b": 30})
    return fig


def separation(emb, labels) -> float:
    """How far apart the classes sit: distance between class means over the mean within-class spread."""
    emb, labels = np.asarray(emb), np.asarray(labels)
    if len(emb) != len(labels) or len(np.unique(labels)) != 2:
        raise ValueError(f"separation needs one label per embedding ({len(emb)} embeddings, {len(labels)} labels) "
                         f"and exactly two classes (got {len(np.unique(labels))})")
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    centres = [emb[labels == c].mean(0) for c in np.unique(labels)]
    spread = np.mean([np.linalg.norm(emb[labels == c] - centres[i], axis=1).mean()
                      for i, c in enumerate(np.unique(labels))])
    return float(np.linalg.norm(centres[0] - centres[1]) / spread)


# --------------------------------------------------------------------------- the few-shot curve
METHODS = ("SetFit", "frozen embeddings + LR", "full fine-tuning")


def full_finetune_k(cfg, train_k, test, label_names, seed: int = 0, epochs: float = 10):
    """Fine-tune the whole encoder (with a new classification head) on the same K examples per class.
    String labels become their index in `label_names` (`checked_splits`)."""
    from . import tuning

    encoded, tokenizer = tuning.tokenize(checked_splits(train_k, test, label_names), cfg)
    return tuning.fine_tune(cfg, encoded, tokenizer, label_names, n_frozen=0, epochs=epochs,
                            name="full fine-tuning", seed=seed, per_device_train_batch_size=8)


def curve_point(cfg, train, test, label_names, k: int, iterations: int, seeds) -> list[dict]:
    """All three methods at K shots per class, once per seed: one row each (method, K, seed, accuracy, seconds)."""
    rows, frozen_model = [], models.load_sentence_model(cfg)  # untouched by SetFit: load it once
    for seed in seeds:
        train_k = sample_k(train, k, seed=seed)
        runs = [("SetFit", train_setfit(cfg, train_k, test, iterations, seed)[0]),
                ("frozen embeddings + LR", frozen_baseline(cfg, train_k, test, frozen_model, seed=seed)),
                ("full fine-tuning", full_finetune_k(cfg, train_k, test, label_names, seed))]
        rows += [{"method": m, "K": k, "seed": seed, "accuracy": r.metrics["accuracy"], "seconds": r.seconds}
                 for m, r in runs]
    return rows


def curve_summary(rows):
    """Mean and standard deviation of accuracy per method and K."""
    import pandas as pd

    if not rows:
        raise ValueError("no curve points yet: run curve_point (or the panel) for at least one K first")

    table = pd.DataFrame(rows).groupby(["method", "K"])["accuracy"].agg(["mean", "std", "count"]).reset_index()
    return table.fillna({"std": 0.0})


def curve_figure(rows):
    import plotly.graph_objects as go

    summary = curve_summary(rows)
    fig = go.Figure()
    for method in METHODS:
        part = summary[summary["method"] == method].sort_values("K")
        fig.add_trace(go.Scatter(x=part["K"], y=part["mean"], error_y={"type": "data", "array": part["std"]},
                                 mode="lines+markers", name=method))
    fig.update_layout(title="accuracy vs shots per class (mean ± std over seeds)", xaxis_title="K (log scale)",
                      yaxis_title="test accuracy", xaxis_type="log", height=400)
    return fig


def curve_panel(cfg, train, test, label_names, rows: list, seeds, ks=(4, 8, 16, 32, 64)):
    """Shots per class, iterations, Run: each run adds one K to `rows` and redraws the curve."""
    from . import widgets

    def run(k, iterations):
        new = curve_point(cfg, train, test, label_names, k, iterations, seeds)
        rows.extend(new)
        return new

    controls = {"k": widgets.dropdown(list(ks), ks[1], "shots per class K"),
                "iterations": widgets.int_slider(20, 1, 40, "pair iterations")}
    return widgets.Panel(run, controls, plot=lambda _p: curve_figure(rows), title="The few-shot curve")
