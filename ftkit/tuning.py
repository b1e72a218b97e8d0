"""Session 01: feature-based vs parameter-based fine-tuning.

Feature-based: the pretrained encoder stays frozen and turns each sentence into a vector once
(`embed`, mean pooling, cached on disk); a separate small classifier learns from the vectors.
Parameter-based: the encoder's own weights are updated: head only, the last N blocks, or all
(`fine_tune`, which freezes by module name with `ftkit.train.freeze_bottom`).
"""
from __future__ import annotations

import hashlib

import numpy as np

from . import data, metrics, models, train
from .env import is_small
from .models import cache_dir


# --------------------------------------------------------------------------- feature-based
def mean_pool(last_hidden, attention_mask):
    """Average the token vectors of each sentence, ignoring padding."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def embed(texts, cfg, batch_size: int = 64, model_name: str | None = None) -> np.ndarray:
    """Mean-pooled sentence vectors from the frozen encoder, cached on disk.

    The cache key is the model, the max length and the exact texts, so the same sentences are
    embedded once however many heads (tasks) we train on them afterwards.
    """
    import torch

    texts = data.check_texts(texts, "texts to embed")
    path = models.resolve("encoder", cfg, model_name)
    key = hashlib.sha256("\x00".join([path, str(cfg.max_length), *texts]).encode()).hexdigest()[:20]
    cached = cache_dir() / "embeddings" / f"{key}.npy"
    if cached.is_file():
        return np.load(cached, allow_pickle=False)
    tokenizer = models.load_tokenizer("encoder", cfg, model_name)
    encoder = models.load_encoder(cfg, model_name).to(cfg.device).eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                              max_length=cfg.max_length, return_tensors="pt").to(cfg.device)
            chunks.append(mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"]).cpu().numpy())
    vectors = np.concatenate(chunks).astype(np.float32)
    del encoder, batch
    if is_small():      # the encoder and its activations, back to the OS (glibc keeps freed memory)
        train.release_freed_memory()
    cached.parent.mkdir(parents=True, exist_ok=True)
    np.save(cached, vectors, allow_pickle=False)
    return vectors


def _check_xy(X, y):
    if len(X) != len(y):
        raise ValueError(f"{len(X)} embeddings but {len(y)} labels; they must match")
    if len(set(np.asarray(y).tolist())) < 2:
        raise ValueError("the labels hold a single class; a classifier needs at least two")


def fit_logistic_regression(X, y, seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    _check_xy(X, y)
    return LogisticRegression(max_iter=2000, random_state=seed).fit(X, y)


class MLPHead:
    """A small torch classifier on fixed vectors: Linear -> ReLU -> Dropout -> Linear.

    Same `fit` / `predict` interface as scikit-learn, so both heads plug into one function.
    """

    def __init__(self, hidden: int = 256, epochs: int = 30, lr: float = 1e-3, seed: int = 0):
        self.hidden, self.epochs, self.lr, self.seed = hidden, epochs, lr, seed

    def fit(self, X, y):
        import torch
        import torch.nn as nn

        _check_xy(X, y)
        torch.manual_seed(self.seed)
        X, y = torch.as_tensor(X), torch.as_tensor(np.asarray(y), dtype=torch.long)
        self.net = nn.Sequential(nn.Linear(X.shape[1], self.hidden), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(self.hidden, int(y.max()) + 1))
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=0.01)
        order = torch.Generator().manual_seed(self.seed)
        self.net.train()
        for _ in range(self.epochs):
            for idx in torch.randperm(len(X), generator=order).split(64):
                opt.zero_grad()
                nn.functional.cross_entropy(self.net(X[idx]), y[idx]).backward()
                opt.step()
        return self

    def predict(self, X):
        import torch

        self.net.eval()
        with torch.no_grad():
            return self.net(torch.as_tensor(X)).argmax(-1).numpy()

    def n_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())


def head_params(head) -> int:
    if hasattr(head, "n_params"):
        return head.n_params()
    return int(head.coef_.size + head.intercept_.size)  # logistic regression


def feature_based(name: str, head, X_train, y_train, X_test, y_test, encoder_params: int) -> train.RunResult:
    """Train a head on stored vectors and report it like any other run (the encoder counts as frozen)."""
    with train.measure() as m:
        head.fit(X_train, y_train)
    scores = metrics.classification_scores(head.predict(X_test), y_test)
    trainable = head_params(head)
    return train.RunResult(name, scores, trainable, trainable + encoder_params, m["seconds"], m["peak_mem_mb"])


# --------------------------------------------------------------------------- parameter-based
def tokenize(ds, cfg, text_column: str = "text", label_column: str = "label"):
    """Tokenize every split of `ds`, a DatasetDict with a "train" split (one Dataset alone is a ValueError that says
    how to make the splits). No padding: the collator pads each batch to its longest sentence."""
    data.require_splits(ds, "ds", splits=("train",))
    for split in ds:
        data.check_classification(ds[split], text_column, label_column,
                                  "training data" if split == "train" else f"split {split!r}")
    tokenizer = models.load_tokenizer("encoder", cfg)
    keep = {text_column, label_column}
    encoded = ds.map(lambda b: tokenizer(b[text_column], truncation=True, max_length=cfg.max_length),
                     batched=True, remove_columns=[c for c in ds["train"].column_names if c not in keep])
    if label_column != "label":
        encoded = encoded.rename_column(label_column, "label")
    return encoded.remove_columns(text_column), tokenizer


def setup_name(n_frozen: int, depth: int) -> str:
    if n_frozen == 0:
        return "full"
    if n_frozen == depth:
        return "head only"
    return f"last {depth - n_frozen}"


def fine_tune(cfg, encoded, tokenizer, label_names, n_frozen: int, epochs: float | None = None,
              learning_rate: float | None = None, name: str | None = None, encoder_state: dict | None = None,
              config_overrides: dict | None = None, *, validation=None, eval_every: int | str = "epoch",
              keep_best: bool = False, score_on: str | None = "test", **arg_overrides) -> train.RunResult:
    """A fresh classifier with the embeddings and the first `n_frozen` blocks frozen, trained and evaluated.

    `encoder_state` replaces the pretrained encoder weights (e.g. a domain-adapted encoder from session
    03); the pooler and the new head are the same as without it, so only the encoder differs.
    `config_overrides` change the model config (e.g. dropout); `arg_overrides` go to the TrainingArguments
    (e.g. seed, per_device_train_batch_size, warmup_steps).

    `validation` (a tokenized split, e.g. `validation_subset(encoded, 500)`) is scored during training, every epoch
    or every `eval_every` steps; with `keep_best` the run ends with the weights of its lowest validation loss
    (`train.fit`). Its accuracy there goes to `extra["validation accuracy"]`. `score_on` names the split of
    `encoded` scored once at the end ("test"; None: none): choosing settings, score on "validation"."""
    import torch

    data.require_splits(encoded, "encoded", splits=("train",))
    if score_on is not None and score_on not in encoded:
        raise ValueError(f"score_on={score_on!r} is not a split of the data; splits: {list(encoded)}")
    torch.manual_seed(arg_overrides.get("seed", getattr(cfg, "seed", 42)))  # the new head's initial weights
    model = models.load_classifier(label_names, cfg, **(config_overrides or {}))
    if encoder_state is not None:
        missing, unexpected = model.base_model.load_state_dict(encoder_state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("pooler.")]:
            raise ValueError(f"encoder_state does not fit this encoder: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    frozen = train.freeze_bottom(model, n_frozen)
    depth = len(train.find_blocks(model)[1])
    overrides = dict(arg_overrides)
    if epochs is not None:
        overrides["num_train_epochs"] = epochs
    if learning_rate is not None:
        overrides["learning_rate"] = learning_rate
    result = train.fit(model, encoded["train"], encoded[score_on] if score_on else None, cfg,
                       name=name or setup_name(n_frozen, depth), tokenizer=tokenizer,
                       compute_metrics=metrics.compute_classification, validation_ds=validation,
                       eval_every=eval_every, keep_best=keep_best, **overrides)
    result.extra["frozen blocks"] = len(frozen)
    if result.eval_history:
        result.extra["validation accuracy"] = kept_validation(result)["accuracy"]
    return result


def validation_subset(encoded, size: int | None, seed: int = 0):
    """`size` sentences of the validation split, the same share of each class (all of it when size is None or
    larger): scored during training and by the ablation, so that the test split is read once, at the end."""
    data.require_splits(encoded, "encoded", splits=())
    if "validation" not in encoded:
        raise ValueError(f"the data has no 'validation' split (splits: {list(encoded)}); hold out part of the "
                         "training data, e.g. ds['train'].train_test_split(test_size=0.2, seed=0)")
    return data.take(encoded["validation"], size, seed=seed, stratify="label")


def kept_validation(result) -> dict:
    """The validation scores of the weights the run ended with: at its best step when it kept the best checkpoint,
    else at its last evaluation."""
    if not result.eval_history:
        raise ValueError(f"run {result.name!r} was not validated during training (pass validation=...)")
    if result.best_step is None:
        return result.eval_history[-1]
    return next(h for h in result.eval_history if h["step"] == result.best_step)


# --------------------------------------------------------------------------- Part 2's three runs, recorded
# Head only, the last 2 blocks and every block, each scored on VALIDATION_SENTENCES validation sentences every half
# epoch and ending on its best checkpoint, the learning rate warming up over the first WARMUP of the steps. Recorded
# (`python -m ftkit record tuning_freezing`: about 9 minutes on 2 cores); the notebook trains the full run live (Part 3
# draws its curves), checks it against the recording, and draws the other two from it.
VALIDATION_SENTENCES = 500
WARMUP = 0.1


def watched_run(cfg, encoded, tokenizer, label_names, n_frozen: int, validation, warmup: float = WARMUP,
                **arg_overrides) -> train.RunResult:
    """One of Part 2's runs: `fine_tune` with `n_frozen` blocks frozen, scored on `validation` every half epoch,
    ending on the checkpoint of its lowest validation loss, warming up over the first `warmup` of the steps."""
    steps_per_epoch = -(-len(encoded["train"]) // cfg.batch_size)
    return fine_tune(cfg, encoded, tokenizer, label_names, n_frozen, validation=validation,
                     eval_every=max(1, steps_per_epoch // 2), keep_best=True, warmup_steps=warmup, **arg_overrides)


def freezing_settings(profile) -> dict:
    """What decides Part 2's recorded runs (`ftkit.results.SWEEPS["tuning_freezing"]`), from the profile alone."""
    p = getattr(profile, "profile", profile)
    return {"data": "rotten_tomatoes (data.for_profile)", "encoder": p.models["encoder"], "train_size": p.train_size,
            "eval_size": p.eval_size, "epochs": p.epochs, "max_steps": p.max_steps, "batch_size": p.batch_size,
            "max_length": p.max_length, "learning_rate": p.learning_rate, "frozen blocks": "depth, depth - 2, 0",
            "validation sentences": VALIDATION_SENTENCES, "eval every": "half an epoch", "warm-up": WARMUP,
            "keep best": True}


def freezing_sweep(cfg) -> list[dict]:
    """Part 2 in full: head only, last 2 and full, one row each: the run's table row (`RunResult.row`) and, under
    "run", the whole run without its model (`RunResult.to_record`: histories, best step) to draw its curves."""
    rt = data.for_profile(data.load("rotten_tomatoes"), cfg)
    label_names = rt["train"].features["label"].names
    encoded, tokenizer = tokenize(rt, cfg)
    validation = validation_subset(encoded, VALIDATION_SENTENCES)
    depth = len(train.find_blocks(models.load_classifier(label_names, cfg))[1])
    rows = []
    for n_frozen in (depth, depth - 2, 0):
        run = watched_run(cfg, encoded, tokenizer, label_names, n_frozen, validation).numbers_only()
        rows.append({**run.row(), "validation sentences": len(validation), "run": run.to_record()})
    return rows


def freezing_runs(cfg, encoded, tokenizer, label_names, validation, depth: int, warmup: float, recorded) -> dict:
    """Part 2's runs by name ("head only", "last 2", "full"): the full run trained now, the other two read from
    `recorded` (`results.sweep_rows("tuning_freezing", cfg)`) when it was made with the same warm-up and number of
    validation sentences, else trained now too (said in a printed line). When `recorded` was itself trained now
    (`ftkit.setup(live=True)`, or no recording for the profile), all three are its runs: none is trained twice.
    Each run's `extra["run"]` says "recorded" or "trained now"."""
    live = bool(getattr(recorded, "provenance", {}).get("live"))
    runs = {}
    for n_frozen in (depth, depth - 2, 0):
        name = setup_name(n_frozen, depth)
        row = next((r for r in recorded if r["setup"] == name), None)
        same = row is not None and warmup == WARMUP and row["validation sentences"] == len(validation)
        if n_frozen and not same:
            print(f"{name}: the recording used warm-up {WARMUP} and {row['validation sentences'] if row else '?'} "
                  f"validation sentences; training it now with yours")
        if same and (n_frozen or live):
            run = train.RunResult.from_record(row["run"])
        else:
            run = watched_run(cfg, encoded, tokenizer, label_names, n_frozen, validation, warmup)
        run.extra["run"] = "recorded" if same and n_frozen and not live else "trained now"
        runs[name] = run
    return runs


def ablation_panel(cfg, encoded, tokenizer, label_names, table, depth: int, validation=None, **arg_overrides):
    """Widgets for the frozen-layers ablation: every Run adds a row to `table` and redraws the chart.

    Each run is scored on `validation` (default: the whole validation split), never on the test split: these runs
    choose settings, and a test score that chose them would no longer be a fair estimate. `arg_overrides` go to
    every run's TrainingArguments (e.g. the notebook's warm-up)."""
    from . import widgets

    data.require_splits(encoded, "encoded", splits=("train",))
    scored = {"validation": validation if validation is not None else validation_subset(encoded, None)}

    def run(n_frozen, epochs, learning_rate):
        result = fine_tune(cfg, {**encoded, **scored}, tokenizer, label_names, n_frozen, epochs, learning_rate,
                           name=f"{setup_name(n_frozen, depth)} ({epochs} ep, lr {learning_rate:.0e})",
                           score_on="validation", **arg_overrides)
        table.add({"setup": result.name, "validation accuracy": result.metrics["accuracy"],
                   "trainable params": result.trainable_params, "seconds": round(result.seconds, 1)})
        return result.numbers_only()

    def plot(_panel):
        return table.scatter("trainable params", "validation accuracy", log_x=True,
                             title="validation accuracy vs trainable parameters")

    controls = {"n_frozen": widgets.int_slider(depth // 2, 0, depth, "frozen blocks"),
                "epochs": widgets.float_slider(float(cfg.epochs), 0.5, 5.0, "epochs", step=0.5),
                "learning_rate": widgets.log_slider(cfg.learning_rate, -6, -2, "learning rate")}
    return widgets.Panel(run, controls, plot=plot, title="Frozen-layers ablation")
