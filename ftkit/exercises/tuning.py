"""Exercises of session 01 (course/01_feature_vs_parameter_tuning.ipynb): the size of a logistic-regression head,
freezing the bottom blocks of any encoder by name, and an overfitting experiment of the learner's own."""
from __future__ import annotations

import math
import re
from numbers import Integral, Real

from .core import Session, call, expect
from .fixtures import tiny_classifier

check = Session("01_feature_vs_parameter_tuning")


# --------------------------------------------------------------------------- q1: the size of a head
def _sklearn_params(d: int, n_classes: int) -> int:
    """What scikit-learn's LogisticRegression really stores for d features and n_classes classes (fitted here on a
    few random vectors: the library decides, not a formula of ours)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(3 * n_classes, d)), np.arange(3 * n_classes) % n_classes
    head = LogisticRegression(max_iter=100).fit(X, y)
    return int(head.coef_.size + head.intercept_.size)


@check.exercise(title="The size of a logistic-regression head", tier="warm-up",
                hint="A logistic regression has one weight per input feature and one bias for each row of weights. "
                     "How many rows? With two classes scikit-learn keeps a single row (the evidence for class 1; "
                     "class 0 is the rest); with three or more, one row per class.")
def q1(lr_params):
    """lr_params(d, n_classes) -> int: the parameters of scikit-learn's LogisticRegression on d-dimensional vectors."""
    for d, n_classes in ((384, 2), (10, 3), (384, 3), (7, 5)):
        shown = f"lr_params({d}, {n_classes})"
        got = call(lr_params, d, n_classes, shown=shown)
        expect(isinstance(got, Integral) and not isinstance(got, bool),
               f"{shown} returned {type(got).__name__} {got!r}; return a whole number (an int)")
        want = _sklearn_params(d, n_classes)
        if got == want:
            continue
        if n_classes == 2:
            expect(got != 2 * (d + 1), f"{shown} returned {got} = 2 × {d + 1}: one row per class. With two classes "
                                       f"scikit-learn keeps one row of {d} weights and one bias: {want}")
            expect(got != d, f"{shown} returned {d}, the weights alone: add the bias")
        else:
            expect(got != d + 1, f"{shown} returned {d + 1}, a single row: with {n_classes} classes there is one row "
                                 f"of {d} weights and one bias per class, {n_classes} × {d + 1} = {want}")
            expect(got != n_classes * d, f"{shown} returned {got}: the weights alone; add one bias per class")
        expect(False, f"{shown} returned {got}; scikit-learn's LogisticRegression stores {want} numbers there")
    return "385 for the sentiment head on 384-dimensional vectors; C × (d + 1) from three classes on"


# --------------------------------------------------------------------------- q2: freeze the bottom blocks by name
def _blocks(model):
    """(prefix of the block list, number of blocks) of a fixture, found the way ftkit does it."""
    from ..train import find_blocks

    name, blocks = find_blocks(model)
    return name, len(blocks)


def _expected_frozen(name: str, prefix: str, n: int) -> bool:
    """Frozen after freezing the bottom n blocks: the embeddings and blocks 0..n-1 (n = 0: nothing)."""
    from ..train import is_embedding

    if n == 0:
        return False
    if is_embedding(name):
        return True
    if name.startswith(prefix + "."):
        return int(name[len(prefix) + 1:].split(".")[0]) < n
    return False


def _one_case(freeze_bottom, architecture: str, layers: int, n: int) -> None:
    model = tiny_classifier(architecture, layers=layers)
    prefix, depth = _blocks(model)
    shown = f"freeze_bottom({architecture} model with {depth} blocks, {n})"
    call(freeze_bottom, model, n, shown=shown)
    wrong = [(name, p.requires_grad) for name, p in model.named_parameters()
             if p.requires_grad == _expected_frozen(name, prefix, n)]
    if not wrong:
        return
    frozen_by_you = {name for name, p in model.named_parameters() if not p.requires_grad}
    expect(frozen_by_you or n == 0,
           f"{shown} froze nothing. This model's blocks are `{prefix}.0` ... `{prefix}.{depth - 1}`"
           + (": not `bert.encoder.layer.N`. Find the blocks by name (the numbered part after `layer`, `layers`, "
              "`h` or `block`), not by one architecture's prefix" if architecture != "bert" else ""))
    name, trainable = wrong[0]
    if n == 0:
        expect(False, f"{shown}: `{name}` is frozen; n = 0 freezes nothing (full fine-tuning)")
    if trainable:
        if "embeddings" in name:
            expect(False, f"{shown}: `{name}` is still trainable. The embeddings sit below block 0, so freezing "
                          f"the bottom blocks freezes them too")
        expect(False, f"{shown}: `{name}` is still trainable, but it belongs to a block below {n}")
    block = name[len(prefix) + 1:].split(".")[0] if name.startswith(prefix + ".") else None
    if block is not None:
        expect(not any(block.startswith(str(i)) for i in range(n)),
               f"{shown}: `{name}` (block {block}) is frozen, but only blocks 0..{n - 1} should be. A prefix such "
               f"as `layer.1` also matches `layer.10` and `layer.11`: compare the block number, or end the prefix "
               f"with a dot")
        expect(False, f"{shown}: `{name}` (block {block}) is frozen, but only blocks 0..{n - 1} should be")
    expect(False, f"{shown}: `{name}` is frozen; the layers above the blocks (pooler, classifier: the new head) "
                  f"must stay trainable")


def _names_range(message: str, depth: int) -> bool:
    """The message names the valid range 0..depth: both ends appear as whole numbers."""
    numbers = set(re.findall(r"(?<!\d)(?<!\d\.)\d+(?!\d|\.\d)", message))      # whole numbers, not 1.5's parts
    return {"0", str(depth)} <= numbers


@check.exercise(title="Freeze the bottom blocks by name", tier="core",
                hint="Loop over `model.named_parameters()`. A block's parameters have names such as "
                     "`bert.encoder.layer.3.attention...` (BERT) or `distilbert.transformer.layer.3.ffn...` "
                     "(DistilBERT): take the number after `.layer.` and freeze (`p.requires_grad = False`) when it is "
                     "below n, and freeze every name that contains `embeddings`, unless n is 0. Count the blocks first "
                     "and raise a ValueError when n is outside 0..depth.")
def q2(freeze_bottom):
    """freeze_bottom(model, n): the embeddings and blocks 0..n-1 frozen, the rest trainable; ValueError outside
    0..depth. On BERT (`bert.encoder.layer.N`) and DistilBERT (`distilbert.transformer.layer.N`)."""
    for architecture, layers in (("bert", 12), ("distilbert", 4)):
        for n in (2, 0, layers):
            _one_case(freeze_bottom, architecture, layers, n)
        for bad in (-1, layers + 1):
            shown = f"freeze_bottom({architecture} model with {layers} blocks, {bad})"
            try:
                freeze_bottom(tiny_classifier(architecture, layers=layers), bad)
            except ValueError as err:
                expect(_names_range(str(err), layers),
                       f"{shown} raised ValueError({str(err)!r}), which does not name the valid range: say it, e.g. "
                       f"\"n must be in 0..{layers}\", so that the caller knows what to pass")
                continue
            except Exception as exc:  # the learner's code: any other error is the wrong kind of refusal
                expect(False, f"{shown} raised {type(exc).__name__}; raise a ValueError that names the valid range "
                              f"0..{layers}")
            expect(False, f"{shown} returned without an error; n must be in 0..{layers}: raise a ValueError that "
                          f"says so")
    return "embeddings and the bottom blocks frozen by name, on BERT (12 blocks) and DistilBERT; n out of range refused"


# --------------------------------------------------------------------------- q3: an overfitting experiment
def _wrong_epoch(run, best_epoch, best) -> None:
    """Say why `best_epoch` is not the epoch of the lowest validation loss `best` (an entry of run.eval_history)."""
    history = run.eval_history
    index = history.index(best)
    expect(not (math.isclose(best_epoch, index, abs_tol=0.01) or math.isclose(best_epoch, best["epoch"] - 1,
                                                                              abs_tol=0.01)),
           f"my_best_epoch is {best_epoch:g}: the position of the lowest validation loss in my_run.eval_history "
           f"(counted from 0), one less than its epoch. Epochs are counted from 1: give that entry's 'epoch', "
           f"{best['epoch']:g}")
    expect(not math.isclose(best_epoch, history[-1]["epoch"], abs_tol=0.01),
           f"epoch {best_epoch:g} is the last one; the validation loss was lowest at epoch {best['epoch']:g}. "
           "The last weights are not the best ones when the model overfits")
    training = _epoch_of_lowest_training_loss(run)
    expect(training is None or not math.isclose(best_epoch, training, abs_tol=0.01),
           f"my_best_epoch is {best_epoch:g}, where the training loss was lowest; the validation loss was lowest at "
           f"epoch {best['epoch']:g} ({best['loss']:.3f}): read 'loss' in my_run.eval_history (the validation loss)")
    expect(False, f"my_best_epoch is {best_epoch:g}, but the validation loss was lowest at epoch {best['epoch']:g} "
                  f"({best['loss']:.3f}): take the 'epoch' of the entry of my_run.eval_history with the lowest 'loss'")


def _epoch_of_lowest_training_loss(run):
    """The epoch (a whole number) in which the logged training loss was lowest, or None without a training log."""
    first = run.eval_history[0]
    steps_per_epoch = run.steps_per_epoch or (first.get("step", 0) / first["epoch"] if first["epoch"] else 0)
    if not run.loss_history or not steps_per_epoch:
        return None
    step, _ = min(run.loss_history, key=lambda s: s[1])
    return math.ceil(step / steps_per_epoch - 1e-9)


@check.exercise(title="Overfit on purpose, and find the best epoch", tier="stretch",
                hint="Train on few sentences for several epochs with `validation=validation` (scored every epoch): "
                     "`few = {**encoded, 'train': data.take(encoded['train'], 100, stratify='label')}`, then "
                     "`tuning.fine_tune(cfg, few, tokenizer, label_names, 0, epochs=6, learning_rate=2e-4, "
                     "validation=validation, eval_every='epoch', score_on=None, max_steps=-1, warmup_steps=WARMUP)`. "
                     "The best epoch is the 'epoch' of the entry of `my_run.eval_history` with the lowest 'loss'.")
def q3(my_experiment):
    """my_experiment = (my_run, my_best_epoch): a RunResult validated every epoch for at least 3 epochs, and the epoch
    of its lowest validation loss."""
    from ..train import RunResult

    expect(isinstance(my_experiment, (tuple, list)) and len(my_experiment) == 2,
           "give a pair: `my_experiment = (my_run, my_best_epoch)`")
    run, best_epoch = my_experiment
    expect(isinstance(run, RunResult), f"the first item is {type(run).__name__}; give the RunResult that "
                                       "tuning.fine_tune returned")
    expect(run.steps > 0, f"run {run.name!r} took no training step")
    history = run.eval_history
    expect(history, f"run {run.name!r} was not validated during training: pass `validation=validation` to "
                    "tuning.fine_tune")
    expect(all(math.isfinite(h.get("loss", math.nan)) and h.get("epoch") is not None for h in history),
           f"run {run.name!r}: every validation entry needs a finite 'loss' and its 'epoch'")
    expect(len(history) >= 3 and history[-1]["epoch"] >= 2.99,
           f"run {run.name!r} has {len(history)} validation points over {history[-1]['epoch']:g} epochs; train at "
           "least 3 epochs, validated every epoch (the main runs had 2), so that a turn can show (max_steps=-1 "
           "lets the epochs decide)")
    expect(isinstance(best_epoch, Real) and not isinstance(best_epoch, bool),
           f"my_best_epoch is {type(best_epoch).__name__} {best_epoch!r}; give the epoch as a number")
    best = min(history, key=lambda h: h["loss"])
    if not math.isclose(best_epoch, best["epoch"], abs_tol=0.01):
        _wrong_epoch(run, best_epoch, best)
    if run.best_step is not None:
        expect(run.best_step == best["step"], f"run {run.name!r} says it kept step {run.best_step}, but its lowest "
                                              f"validation loss is at step {best['step']}")
    rise = history[-1]["loss"] - best["loss"]
    verdict = (f"then it rose by {rise:.3f}: it overfits after epoch {best['epoch']:g}" if rise > 0.005 else
               "and it did not rise after: train longer, or on fewer sentences, to see it turn")
    return f"validation loss lowest at epoch {best['epoch']:g} ({best['loss']:.3f}), {verdict}"
