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
    """How many pairs step 1 makes: `2 · iterations · k · n_classes`, one positive and one negative pair per sentence
    and iteration. Both `make_pairs` and setfit 1.2's Trainer (`TrainingArguments(num_iterations=...)`) make this
    many; they choose them differently (see `setfit_pairs`)."""
    return 2 * iterations * k * n_classes


def _by_class(labels) -> dict:
    """{label: [row indices]}, refusing data that cannot give both kinds of pair."""
    by_class: dict = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    if len(by_class) < 2:
        raise ValueError(f"pairs need at least two classes; the labels hold only {sorted(by_class, key=str)}")
    single = [label for label, rows in by_class.items() if len(rows) < 2]
    if single:
        raise ValueError(f"class {single[0]!r} has a single example: a positive pair needs two sentences of one "
                         "class, so give at least two examples of every class")
    return by_class


def make_pairs(texts, labels, iterations: int = 20, seed: int = 0) -> list[tuple[str, str, float]]:
    """Step 1, written to be read: for every iteration and every sentence, one random partner of the same class
    (label 1.0, never the sentence itself) and one random partner of another class (label 0.0).

    Returns `pair_count(K, C, iterations)` tuples (sentence, partner, similar), the same number of pairs as setfit
    1.2 makes with `num_iterations`, but not the same pairs: setfit takes them from one fixed shuffled list of every
    unordered pair, a sentence with itself included (`setfit_pairs` returns them). Labels may be ids or strings.
    Random: `random.Random(seed)`, so the same seed gives the same pairs. ValueError for fewer than two classes, a
    class with a single example, or iterations < 1."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels; give one label per text")
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    by_class = _by_class(labels)
    rng = random.Random(seed)
    pairs = []
    for _ in range(iterations):
        for i, (text, label) in enumerate(zip(texts, labels)):
            same = [j for j in by_class[label] if j != i]
            other = [j for other_label, rows in by_class.items() if other_label != label for j in rows]
            pairs.append((text, texts[rng.choice(same)], 1.0))
            pairs.append((text, texts[rng.choice(other)], 0.0))
    return pairs


def setfit_pairs(texts, labels, iterations: int) -> list[tuple[str, str, float]]:
    """The pairs that setfit 1.2's Trainer trains step 2 on with `num_iterations=iterations`, in its order, from
    setfit's own sampler (`setfit.sampler.ContrastiveDataset`, which `Trainer.get_dataset` calls).

    How setfit makes them: it lists every unordered pair of the K·C sentences *with replacement* (i <= j, so each
    sentence is also paired with itself, a positive pair), shuffles that list once with a fixed
    `numpy.random.RandomState(seed=42)` whatever the run's seed, splits it into positive and negative pairs, and
    cycles through each of the two lists until it has `iterations · K·C` of each (alternating positive, negative).
    The run's seed only shuffles the order of the batches afterwards. Returns (sentence, partner, similar) tuples."""
    from setfit.sampler import ContrastiveDataset

    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels; give one label per text")
    _by_class(labels)
    sampler = ContrastiveDataset(list(texts), list(labels), multilabel=False, num_iterations=iterations)
    return [(p["sentence_1"], p["sentence_2"], float(p["label"])) for p in sampler]


def pair_stats(pairs) -> dict:
    """Counts over a list of (sentence, partner, similar) pairs: how many pairs, how many distinct ones (unordered:
    (a, b) and (b, a) are one pair), how many pair a sentence with itself, and the positives and negatives."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no pairs to count; make some with make_pairs or setfit_pairs first")
    distinct = {frozenset((a, b)) if a != b else (a,) for a, b, _ in pairs}
    return {"pairs": len(pairs), "distinct": len(distinct), "with itself": sum(a == b for a, b, _ in pairs),
            "positive": sum(s == 1.0 for *_, s in pairs), "negative": sum(s == 0.0 for *_, s in pairs)}


# --------------------------------------------------------------------------- steps 2 and 3: SetFit
def setfit_model(cfg, name: str | None = None):
    """The sentence model (`models.load_sentence_model`: float32, safetensors, no remote code) with SetFit's default
    head, an untrained logistic regression. `name` is another sentence model (a Hub id or a folder).

    Built from its parts rather than with `SetFitModel.from_pretrained`, whose `**model_kwargs` setfit 1.2 gives to
    the SetFitModel and not to the sentence model (so a `dtype` there is silently ignored, and a checkpoint saved
    in bfloat16 would train in bfloat16), and which unpickles a head file (`model_head.pkl`) when a model has one.
    On a small machine with gradient checkpointing: SetFit's contrastive step has no micro-batches, and a batch of
    32 pairs (64 sentences) took the cpu profile's kernel to 2.6 GB; recomputing each block's activations in the
    backward pass keeps the same updates for about a third more time."""
    from setfit import SetFitModel
    from sklearn.linear_model import LogisticRegression

    body = models.load_sentence_model(cfg, name)
    if getattr(cfg, "small_memory", False):
        body.gradient_checkpointing_enable({"use_reentrant": False})
    return SetFitModel(model_body=body, model_head=LogisticRegression())


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


def train_setfit(cfg, train_k, test, iterations: int = 20, seed: int = 0, epochs: int = 1, progress=None):
    """Contrastive fine-tuning on generated pairs (step 2), then a logistic-regression head (step 3).

    Returns (RunResult, model). The metric is ftkit's offline accuracy module, passed by path. `extra["pairs"]`
    is the number of pairs step 2 trained on (`pair_count`). String labels are kept as they are (setfit's head
    learns them and predicts them); they are checked like every other entry point's (`checked_splits`).
    `progress` receives the fraction of step 2 done (0..1; inside a panel run, the panel's bar by default); the
    Trainer's own bar and printed log lines are off.
    """
    from setfit import Trainer, TrainingArguments

    from . import widgets

    checked_splits(train_k, test)
    model = setfit_model(cfg)
    args = TrainingArguments(batch_size=cfg.batch_size, num_epochs=epochs, num_iterations=iterations,
                             max_length=cfg.max_length, seed=seed, report_to="none", save_strategy="no",
                             show_progress_bar=False, output_dir=_tmp())
    # the sentence-transformers Trainer underneath has no ftkit callbacks: give freed memory back after each step
    trainer = Trainer(model=model, args=args, train_dataset=train_k, metric=metrics.path("accuracy"),
                      callbacks=[train.release_memory_callback()])
    train.report_progress_to(trainer, progress or widgets.panel_progress() or (lambda fraction: None))
    with train.measure(model.model_body, cfg.device) as m:
        trainer.train()
    scores = trainer.evaluate(test)  # setfit loads ftkit's accuracy module by path: no Hub needed
    trainable, total = train.count_params(model.model_body)
    head = int(model.model_head.coef_.size + model.model_head.intercept_.size)
    n_classes = len(set(train_k["label"]))
    result = train.RunResult(f"SetFit K={len(train_k) // n_classes}", scores, trainable + head, total + head,
                             m["seconds"], m["peak_mem_mb"], extra={"pairs": pair_count(len(train_k), 1, iterations)})
    return result, model


def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="ftkit-setfit-")


def encode(sentence_model, texts):
    """Sentence embeddings (n, dim) as a numpy array, without a progress bar. sentence-transformers already sorts
    the texts by length for its batches (less padding) and runs under `torch.inference_mode`."""
    return sentence_model.encode(list(texts), show_progress_bar=False)


def frozen_baseline(cfg, train_k, test, sentence_model=None, seed: int = 0, test_embeddings=None):
    """No step 2: logistic regression on the untouched sentence embeddings of the same K examples.
    Labels are class ids or strings (`checked_splits` maps strings to ids, one mapping for both splits).

    `test_embeddings` (n_test, dim), computed once with the same untouched `sentence_model`, saves encoding the test
    sentences again for every K and seed of a curve (they do not change: the model is frozen)."""
    from sklearn.linear_model import LogisticRegression

    checked = checked_splits(train_k, test)
    train_k, test = checked["train"], checked["test"]
    if test_embeddings is not None and len(test_embeddings) != len(test):
        raise ValueError(f"{len(test_embeddings)} test embeddings for {len(test)} test rows; encode exactly the "
                         "test rows, in their order, with the untouched sentence model")
    sentence_model = sentence_model or models.load_sentence_model(cfg)
    with train.measure() as m:
        X = encode(sentence_model, train_k["text"])
        head = LogisticRegression(max_iter=2000, random_state=seed).fit(X, train_k["label"])
    if test_embeddings is None:
        test_embeddings = encode(sentence_model, test["text"])
    scores = metrics.classification_scores(head.predict(test_embeddings), test["label"])
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
FULL_FINE_TUNING = {"epochs": 10, "batch size": 8}     # K examples make few batches: 10 epochs, 8 a batch


def curve_settings(profile) -> dict:
    """Everything that decides the few-shot curve's rows in `profile` (a Profile, or a cfg): the K values, seeds,
    pair iterations, test sentences (None: the whole test split), the models and the training sizes. A function of
    the profile alone, so a recorded curve can be checked against the code (`results.SWEEPS["fewshot_curve"]`).
    On 2 CPU cores SetFit at K=32 with 20 pair iterations takes ~3 minutes a seed, so the cpu profile uses 10."""
    profile = getattr(profile, "profile", profile)
    name = profile.name if profile.name in ("smoke", "cpu", "gpu") else "gpu"
    return {"K": {"smoke": [4, 8], "cpu": [4, 8, 16, 32], "gpu": [4, 8, 16, 32, 64]}[name],
            "seeds": {"smoke": [0], "cpu": [0, 1, 2], "gpu": [0, 1, 2, 3, 4]}[name],
            "iterations": {"smoke": 5, "cpu": 10, "gpu": 20}[name],
            "test sentences": {"smoke": profile.eval_size, "cpu": 500, "gpu": None}[name],
            "methods": list(METHODS), "sentence model": profile.models["sentence"],
            "encoder": profile.models["encoder"], "batch size": profile.batch_size,
            "max length": profile.max_length,
            "full fine-tuning": {**FULL_FINE_TUNING, "learning rate": profile.learning_rate,
                                 "max steps": profile.max_steps}}


def curve_data(cfg):
    """(train_split, test, label_names) of the curve: rotten_tomatoes' whole training split, which K examples per
    class are drawn from, and the settings' number of test sentences (stratified, always the same ones)."""
    rt = data.load("rotten_tomatoes")
    test = data.take(rt["test"], curve_settings(cfg)["test sentences"], stratify="label")
    return rt["train"], test, rt["train"].features["label"].names


def full_finetune_k(cfg, train_k, test, label_names, seed: int = 0, epochs: float = FULL_FINE_TUNING["epochs"],
                    **fit_overrides):
    """Fine-tune the whole encoder (with a new classification head) on the same K examples per class.
    String labels become their index in `label_names` (`checked_splits`). `fit_overrides` go to `train.fit`
    (e.g. `progress`). The test rows are scored sorted by length: accuracy does not depend on their order, and
    batches of similar lengths pad less."""
    from . import tuning

    encoded, tokenizer = tuning.tokenize(checked_splits(train_k, test, label_names), cfg)
    lengths = [len(ids) for ids in encoded["test"]["input_ids"]]
    encoded["test"] = encoded["test"].select(np.argsort(lengths, kind="stable").tolist())
    return tuning.fine_tune(cfg, encoded, tokenizer, label_names, n_frozen=0, epochs=epochs,
                            name="full fine-tuning", seed=seed,
                            per_device_train_batch_size=FULL_FINE_TUNING["batch size"], **fit_overrides)


def curve_point(cfg, train_split, test, label_names, k: int, iterations: int, seeds, sentence_model=None,
                test_embeddings=None, progress=None) -> list[dict]:
    """All three methods at K shots per class, once per seed: one row each (method, K, seed, iterations, accuracy,
    seconds of training).

    `sentence_model` is an untouched sentence model for the frozen baseline, and `test_embeddings` its embeddings of
    `test` (computed once per curve instead of once per K and seed); both are made here when not given. `progress`
    receives the fraction done (0..1); inside a panel run it is the panel's bar."""
    from . import widgets

    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds given; curve_point needs at least one seed, e.g. seeds=[0]")
    sentence_model = sentence_model or models.load_sentence_model(cfg)
    if test_embeddings is None:
        test_embeddings = encode(sentence_model, test["text"])
    progress = progress or widgets.panel_progress() or (lambda fraction: None)   # no Trainer bars either way
    rows = []
    for i, seed in enumerate(seeds):
        def part(start, end):
            return widgets.scaled(progress, (i + start) / len(seeds), (i + end) / len(seeds))

        train_k = sample_k(train_split, k, seed=seed)
        setfit_run, setfit = train_setfit(cfg, train_k, test, iterations, seed, progress=part(0, 0.45))
        del setfit                                   # a trained body: free it before the next training starts
        frozen = frozen_baseline(cfg, train_k, test, sentence_model, seed, test_embeddings)
        part(0, 0.5)(1.0)
        full = full_finetune_k(cfg, train_k, test, label_names, seed, progress=part(0.5, 1.0)).numbers_only()
        rows += [{"method": method, "K": k, "seed": seed, "iterations": iterations,
                  "accuracy": run.metrics["accuracy"], "seconds": round(run.seconds, 1)}
                 for method, run in zip(METHODS, (setfit_run, frozen, full))]
        train.release_freed_memory()                 # the Trainers' reference cycles still hold the two models
    return rows


def curve_sweep(cfg) -> list[dict]:
    """The whole few-shot curve of `curve_settings`: every K, seed and method (36 trainings in the cpu profile),
    registered as the recorded sweep "fewshot_curve" (`python -m ftkit record fewshot_curve --profile cpu`)."""
    settings = curve_settings(cfg)
    train_split, test, label_names = curve_data(cfg)
    sentence_model = models.load_sentence_model(cfg)
    test_embeddings = encode(sentence_model, test["text"])
    rows = []
    for k in settings["K"]:
        rows += curve_point(cfg, train_split, test, label_names, k, settings["iterations"], settings["seeds"],
                            sentence_model, test_embeddings)
    return rows


def curve_summary(rows):
    """Mean, standard deviation and count of accuracy per method and K (a DataFrame)."""
    import pandas as pd

    if not rows:
        raise ValueError("no curve points yet: run curve_point (or the panel) for at least one K first")
    table = pd.DataFrame(list(rows)).groupby(["method", "K"])["accuracy"].agg(["mean", "std", "count"]).reset_index()
    return table.fillna({"std": 0.0})


def curve_figure(recorded, live=None):
    """The recorded curve (mean line, min..max band over seeds, per method) with `live` rows as stars on top."""
    from . import results

    return results.sweep_figure(recorded, "K", "accuracy", group="method", live=live, log_x=True,
                                title="test accuracy vs K examples per class: recorded (line: mean over seeds, "
                                      "band: min..max), your runs as stars")


def curve_panel(cfg, train_split, test, label_names, recorded, rows: list, ks=(4, 8, 16, 32, 64),
                sentence_model=None, test_embeddings=None):
    """Shots per class, pair iterations, seeds, Run: each run trains the three methods at one K (once per seed),
    adds their rows to `rows` and draws them as stars on the recorded curve `recorded`. An untouched
    `sentence_model` and its `test_embeddings` are reused by every run when given."""
    from . import widgets

    settings = curve_settings(cfg)
    cache = {"model": sentence_model, "embeddings": test_embeddings}

    def run(k, iterations, seeds, progress=None):
        if cache["model"] is None:
            cache["model"] = models.load_sentence_model(cfg)
        if cache["embeddings"] is None:
            cache["embeddings"] = encode(cache["model"], test["text"])
        new = curve_point(cfg, train_split, test, label_names, k, iterations, range(seeds), cache["model"],
                          cache["embeddings"], progress)
        rows.extend(new)
        return new

    controls = {"k": widgets.dropdown(list(ks), 8 if 8 in ks else ks[0], "shots per class K"),
                "iterations": widgets.int_slider(settings["iterations"], 1, 40, "pair iterations"),
                "seeds": widgets.int_slider(1, 1, 5, "seeds")}
    return widgets.Panel(run, controls, plot=lambda _panel: curve_figure(recorded, rows), title="The few-shot curve")
