"""ftkit.exercises: the check machinery, and a right and a wrong answer for every exercise of every session.

To add your session's exercises' answers, append a block to CASES below (see "Right and wrong answers"):
`right(module, "qN", answer)` must pass and `wrong(module, "qN", answer, "part of the message")` must fail with
that message. test_every_exercise_has_a_right_and_a_wrong_answer fails until each exercise has both.
"""
from __future__ import annotations

import dataclasses
import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from torch import nn

from ftkit import exercises
from ftkit.exercises import FAILED, NOT_ATTEMPTED, PASSED, Fail, Session, call, expect, unattempted
from ftkit.exercises import fixtures, notebooks

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------------
# Right and wrong answers of every exercise. One block per session; an answer is a value, a function or a class, as
# the notebook's check call receives it. `wrong(...)`'s last argument is a fragment of the message the learner sees,
# so a check that fails for the wrong reason (or says only "wrong") is caught.
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    module: str
    exercise: str
    answer: object
    message: str | None         # None: the answer must pass

    def __str__(self):
        kind = "right" if self.message is None else f"wrong:{self.message[:30]}"
        return f"{self.module}.{self.exercise}:{kind}:{getattr(self.answer, '__name__', repr(self.answer)[:20])}"


def right(module, exercise, answer):
    return Case(module, exercise, answer, None)


def wrong(module, exercise, answer, message):
    return Case(module, exercise, answer, message)


# --- 00 start: q1 count_trainable(model) -> int -------------------------------------------------------------------
def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_trainable_numpy_int(model):
    import numpy as np

    return np.int64(sum(p.numel() for p in model.parameters() if p.requires_grad))


def count_all(model):
    return sum(p.numel() for p in model.parameters())


def count_weights_only(model):
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias"))


def count_state_dict(model):
    return sum(t.numel() for t in model.state_dict().values())


def count_as_float(model):
    return float(count_trainable(model))


def count_and_unfreeze(model):
    model.requires_grad_(True)
    return count_trainable(model)


def count_with_a_typo(model):
    return sum(p.numel() for p in model.parameter())


CASES = [
    right("start", "q1", count_trainable),
    right("start", "q1", count_trainable_numpy_int),
    wrong("start", "q1", count_all, "counts the frozen layer too"),
    wrong("start", "q1", count_weights_only, "the weight matrix alone"),
    wrong("start", "q1", count_state_dict, "every tensor of `state_dict()`"),
    wrong("start", "q1", count_as_float, "return a Python int"),
    wrong("start", "q1", count_and_unfreeze, "do not freeze or unfreeze"),
    wrong("start", "q1", count_with_a_typo, "raised AttributeError"),
    wrong("start", "q1", 770, "pass the function itself"),
]
# --- 01 tuning ... 07 choose: add a block per session here -----------------------------------------------------


# --- 01 tuning: q1 lr_params(d, n_classes), q2 freeze_bottom(model, n), q3 my_experiment = (run, best epoch) ------
def lr_params_right(d, n_classes):
    return d + 1 if n_classes == 2 else n_classes * (d + 1)


def lr_params_one_row_per_class(d, n_classes):
    """The notebook's old "385 x 2" mistake."""
    return n_classes * (d + 1)


def lr_params_always_one_row(d, n_classes):
    return d + 1


def lr_params_no_bias(d, n_classes):
    return d if n_classes == 2 else n_classes * d


def lr_params_float(d, n_classes):
    return float(lr_params_right(d, n_classes))


def freeze_bottom_right(model, n):
    import re

    blocks = {int(m.group(1)) for name, _ in model.named_parameters()
              if (m := re.search(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.", name))}
    if not 0 <= n <= len(blocks):
        raise ValueError(f"n must be in 0..{len(blocks)}")
    for name, p in model.named_parameters():
        block = re.search(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.", name)
        p.requires_grad = not (n > 0 and ("embeddings" in name or (block and int(block.group(1)) < n)))


def freeze_bottom_with_ftkit(model, n):
    from ftkit import train

    train.freeze_bottom(model, n)


def freeze_bottom_bert_only(model, n):
    if not 0 <= n <= model.config.num_hidden_layers:
        raise ValueError(f"n must be in 0..{model.config.num_hidden_layers}")
    for name, p in model.named_parameters():
        if n and (name.startswith("bert.embeddings") or any(name.startswith(f"bert.encoder.layer.{i}.")
                                                           for i in range(n))):
            p.requires_grad = False


def freeze_bottom_prefix_without_dot(model, n):
    from ftkit import train

    prefix, blocks = train.find_blocks(model)
    if not 0 <= n <= len(blocks):
        raise ValueError("out of range")
    for name, p in model.named_parameters():
        if n and ("embeddings" in name or any(name.startswith(f"{prefix}.{i}") for i in range(n))):
            p.requires_grad = False


def freeze_bottom_keeps_embeddings(model, n):
    from ftkit import train

    train.freeze_bottom(model, n)
    for name, p in model.named_parameters():
        if "embeddings" in name:
            p.requires_grad = True


def freeze_bottom_no_range_check(model, n):
    freeze_bottom_right(model, max(0, min(n, 4 if "distilbert" in type(model).__name__.lower() else 12)))


def freeze_bottom_freezes_the_head(model, n):
    freeze_bottom_right(model, n)
    if n:
        for name, p in model.named_parameters():
            if name.startswith("classifier"):
                p.requires_grad = False


def overfit_run(losses, best_step=None, steps_per_epoch=7):
    from ftkit.train import RunResult

    history = [{"step": steps_per_epoch * (i + 1), "epoch": float(i + 1), "loss": loss, "accuracy": 0.7}
               for i, loss in enumerate(losses)]
    return RunResult("full, 200 sentences, 4 epochs", {}, 22_713_986, 22_713_986, 40.0, 600.0,
                     [(s, 0.6 / s) for s in range(1, 29)], history, steps=steps_per_epoch * max(len(losses), 1),
                     best_step=best_step)


OVERFIT = overfit_run([0.55, 0.48, 0.52, 0.61])

CASES += [
    right("tuning", "q1", lr_params_right),
    wrong("tuning", "q1", lr_params_one_row_per_class, "one row per class. With two classes"),
    wrong("tuning", "q1", lr_params_always_one_row, "a single row: with 3 classes"),
    wrong("tuning", "q1", lr_params_no_bias, "the weights alone: add the bias"),
    wrong("tuning", "q1", lr_params_float, "return a whole number"),
    wrong("tuning", "q1", 385, "pass the function itself"),
    right("tuning", "q2", freeze_bottom_right),
    right("tuning", "q2", freeze_bottom_with_ftkit),
    wrong("tuning", "q2", freeze_bottom_bert_only, "not `bert.encoder.layer.N`"),
    wrong("tuning", "q2", freeze_bottom_prefix_without_dot, "also matches `layer.10`"),
    wrong("tuning", "q2", freeze_bottom_keeps_embeddings, "The embeddings sit below block 0"),
    wrong("tuning", "q2", freeze_bottom_no_range_check, "returned without an error; n must be in 0..12"),
    wrong("tuning", "q2", freeze_bottom_freezes_the_head, "must stay trainable"),
    right("tuning", "q3", (OVERFIT, 2.0)),
    right("tuning", "q3", [overfit_run([0.55, 0.48, 0.52], best_step=14), 2]),
    wrong("tuning", "q3", (OVERFIT, 4.0), "is the last one; the validation loss was lowest at epoch 2"),
    wrong("tuning", "q3", (OVERFIT, 1.0), "(counted from 0), one less than its epoch"),
    wrong("tuning", "q3", (overfit_run([0.55, 0.48]), 2.0), "train at least 3 epochs"),
    wrong("tuning", "q3", (overfit_run([]), 2.0), "was not validated during training"),
    wrong("tuning", "q3", (overfit_run([0.55, 0.48, 0.52], best_step=21), 2.0), "says it kept step 21"),
    wrong("tuning", "q3", OVERFIT, "give a pair"),
    wrong("tuning", "q3", (OVERFIT.metrics, 2.0), "give the RunResult"),
]


# --- 02 fewshot: q1 pair_counts(k, n_classes, iterations), q2 make_pairs(texts, labels, iterations, seed), q3 my_runs
def pair_counts_right(k, n_classes, iterations):
    return 2 * iterations * k * n_classes, n_classes * k * (k - 1) // 2, k * k * n_classes * (n_classes - 1) // 2


def pair_counts_brute_force(k, n_classes, iterations):
    import itertools

    labels = [c for c in range(n_classes) for _ in range(k)]
    pairs = list(itertools.combinations(range(len(labels)), 2))
    return (2 * iterations * len(labels), sum(labels[a] == labels[b] for a, b in pairs),
            sum(labels[a] != labels[b] for a, b in pairs))


def pair_counts_one_partner(k, n_classes, iterations):
    return iterations * k * n_classes, n_classes * k * (k - 1) // 2, k * k * n_classes * (n_classes - 1) // 2


def pair_counts_ordered(k, n_classes, iterations):
    return 2 * iterations * k * n_classes, n_classes * k * (k - 1), k * k * n_classes * (n_classes - 1) // 2


def pair_counts_with_itself(k, n_classes, iterations):
    return 2 * iterations * k * n_classes, n_classes * k * (k + 1) // 2, k * k * n_classes * (n_classes - 1) // 2


def pair_counts_one_class_pair(k, n_classes, iterations):
    return 2 * iterations * k * n_classes, n_classes * k * (k - 1) // 2, k * k


def pair_counts_floats(k, n_classes, iterations):
    return 2 * iterations * k * n_classes, n_classes * k * (k - 1) / 2, k * k * n_classes * (n_classes - 1) / 2


def make_pairs_right(texts, labels, iterations, seed):
    rng = random.Random(seed)
    by_class = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    if len(by_class) < 2 or min(len(rows) for rows in by_class.values()) < 2:
        raise ValueError("need two classes of two examples or more")
    pairs = []
    for _ in range(iterations):
        for i, label in enumerate(labels):
            same = [j for j in by_class[label] if j != i]
            other = [j for other_label, rows in by_class.items() if other_label != label for j in rows]
            pairs += [(texts[i], texts[rng.choice(same)], 1.0), (texts[i], texts[rng.choice(other)], 0.0)]
    return pairs


def make_pairs_with_ftkit(texts, labels, iterations, seed):
    from ftkit import fewshot

    return fewshot.make_pairs(texts, labels, iterations, seed)


def make_pairs_may_pick_itself(texts, labels, iterations, seed):
    rng = random.Random(seed)
    pairs = []
    for _ in range(iterations):
        for i, label in enumerate(labels):
            same = [j for j, other in enumerate(labels) if other == label]          # i itself stays in
            other = [j for j, other in enumerate(labels) if other != label]
            pairs += [(texts[i], texts[rng.choice(same)], 1.0), (texts[i], texts[rng.choice(other)], 0.0)]
    return pairs


def make_pairs_labels_swapped(texts, labels, iterations, seed):
    return [(a, b, 1.0 - s) for a, b, s in make_pairs_right(texts, labels, iterations, seed)]


def make_pairs_positives_only(texts, labels, iterations, seed):
    return [p for p in make_pairs_right(texts, labels, 2 * iterations, seed) if p[2] == 1.0]


def make_pairs_ignores_the_seed(texts, labels, iterations, seed):
    return make_pairs_right(texts, labels, iterations, 0)


def make_pairs_unseeded(texts, labels, iterations, seed):
    return make_pairs_right(texts, labels, iterations, random.random())


def make_pairs_first_partner(texts, labels, iterations, seed):
    pairs = []
    for _ in range(iterations):
        for i, label in enumerate(labels):
            same = [j for j, other in enumerate(labels) if other == label and j != i]
            other = [j for j, other in enumerate(labels) if other != label]
            pairs += [(texts[i], texts[same[0]], 1.0), (texts[i], texts[other[(i + seed) % len(other)]], 0.0)]
    return pairs


def make_pairs_no_error(texts, labels, iterations, seed):
    try:
        return make_pairs_right(texts, labels, iterations, seed)
    except ValueError:
        return []


def make_pairs_index_error(texts, labels, iterations, seed):
    if len(set(labels)) < 2 or min(labels.count(label) for label in labels) < 2:
        raise IndexError("cannot choose from an empty sequence")
    return make_pairs_right(texts, labels, iterations, seed)


def make_pairs_pair_objects(texts, labels, iterations, seed):
    return [{"sentence_1": a, "sentence_2": b, "label": s} for a, b, s in make_pairs_right(texts, labels, iterations, seed)]


def setfit_run(iterations, sentences=16, accuracy=0.6):
    from ftkit.train import RunResult

    return RunResult("SetFit K=8", {"accuracy": accuracy}, 100, 100, 1.0, 0.0,
                     extra={"pairs": 2 * iterations * sentences})


CASES += [
    right("fewshot", "q1", pair_counts_right),
    right("fewshot", "q1", pair_counts_brute_force),
    wrong("fewshot", "q1", pair_counts_one_partner, "a positive AND a negative partner"),
    wrong("fewshot", "q1", pair_counts_ordered, "counts (a, b) and (b, a) as two pairs"),
    wrong("fewshot", "q1", pair_counts_with_itself, "includes each sentence paired with itself"),
    wrong("fewshot", "q1", pair_counts_one_class_pair, "counts one pair of classes"),
    wrong("fewshot", "q1", pair_counts_floats, "`//` divides without a float"),
    wrong("fewshot", "q1", (640, 56, 64), "pass the function itself"),
    right("fewshot", "q2", make_pairs_right),
    right("fewshot", "q2", make_pairs_with_ftkit),
    wrong("fewshot", "q2", make_pairs_may_pick_itself, "pairs a sentence with itself"),
    wrong("fewshot", "q2", make_pairs_labels_swapped, "is marked dissimilar, but both are of class"),
    wrong("fewshot", "q2", make_pairs_positives_only, "comes first in 8 similar and 0 dissimilar pairs"),
    wrong("fewshot", "q2", make_pairs_ignores_the_seed, "gave the same pairs for seed=1"),
    wrong("fewshot", "q2", make_pairs_unseeded, "gave other pairs when called again with the same seed"),
    wrong("fewshot", "q2", make_pairs_first_partner, "always gets the same dissimilar partner"),
    wrong("fewshot", "q2", make_pairs_no_error, "returned pairs when class 'neg' has a single example"),
    wrong("fewshot", "q2", make_pairs_index_error, "raised IndexError when class 'neg' has a single example"),
    wrong("fewshot", "q2", make_pairs_pair_objects, "a (sentence, partner, similar) tuple of three items"),
    right("fewshot", "q3", {1: setfit_run(1), 10: setfit_run(10, accuracy=0.63)}),
    right("fewshot", "q3", {1: [setfit_run(1), setfit_run(1, accuracy=0.58)], 20: [setfit_run(20)] * 2}),
    wrong("fewshot", "q3", {10: setfit_run(10)}, "compare at least two numbers of iterations"),
    wrong("fewshot", "q3", {1: setfit_run(1), 5: setfit_run(10)}, "train each run with the iterations of its key"),
    wrong("fewshot", "q3", {1: setfit_run(1), 3: setfit_run(2)}, "it was not trained with 3 iterations"),
    wrong("fewshot", "q3", {1: setfit_run(1), 10: setfit_run(10, accuracy=1.5)}, "expected a number in 0..1"),
    wrong("fewshot", "q3", {1: setfit_run(1), 10: {"accuracy": 0.6}}, "give the RunResult of fewshot.train_setfit"),
    wrong("fewshot", "q3", {"1": setfit_run(1), "10": setfit_run(10)}, "the keys are the numbers of pair iterations"),
    wrong("fewshot", "q3", [setfit_run(1), setfit_run(10)], "give a dict"),
]


# --- 03 mlm: q1 word_ids(offsets, special), q2 whole_word_mask(word_ids, probability, rng), q3 split_word_top1 -------
def word_ids_right(offsets, special):
    ids, current, previous_end = [], -1, None
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            ids.append(-1)
            previous_end = None
            continue
        if previous_end is None or start != previous_end:
            current += 1
        ids.append(current)
        previous_end = end
    return ids


def word_ids_from_one(offsets, special):
    """Numbered from 1, as transformers' collator does internally: the same words, but the task numbers them from 0."""
    return [w + 1 if w >= 0 else -1 for w in word_ids_right(offsets, special)]


def word_ids_no_reset_after_special(offsets, special):
    """Compares a piece with the [CLS] before it: 'h' (0, 1) touches [CLS] (0, 0)."""
    ids, current, previous_end = [], -1, None
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            ids.append(-1)
            previous_end = end
            continue
        if previous_end is None or start != previous_end:
            current += 1
        ids.append(current)
        previous_end = end
    return ids


def word_ids_every_piece_a_word(offsets, special):
    return [-1 if s else i for i, s in enumerate(special)]


def word_ids_special_zero(offsets, special):
    return [0 if s else w for w, s in zip(word_ids_right(offsets, special), special)]


def word_ids_punctuation_apart(offsets, special):
    """Starts a new word at every one-character piece (punctuation), so 'hypothyroidism,' loses its comma."""
    ids, current, previous_end = [], -1, None
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            ids.append(-1)
            previous_end = None
            continue
        if previous_end is None or start != previous_end or end - start == 1:
            current += 1
        ids.append(current)
        previous_end = end
    return ids


def word_ids_counter_per_segment(offsets, special):
    """Restarts the numbering after every special token: the second sentence of a pair reuses the first's ids."""
    ids, current, previous_end = [], -1, None
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            ids.append(-1)
            previous_end, current = None, -1
            continue
        if previous_end is None or start != previous_end:
            current += 1
        ids.append(current)
        previous_end = end
    return ids


def whole_word_mask_right(word_ids, probability, rng):
    chosen = {w for w in dict.fromkeys(word_ids) if w >= 0 and rng.random() < probability}
    return [w in chosen for w in word_ids]


def whole_word_mask_numpy(word_ids, probability, rng):
    import numpy as np

    ids = np.array(word_ids)
    draws = {w: rng.random() < probability for w in dict.fromkeys(word_ids) if w >= 0}
    return np.array([draws.get(w, False) for w in ids])


def whole_word_mask_draw_per_piece(word_ids, probability, rng):
    """A draw at every piece, then the whole word of any chosen piece: long words are chosen more often."""
    chosen = {w for w in word_ids if w >= 0 and rng.random() < probability}
    return [w in chosen for w in word_ids]


def whole_word_mask_token_masking(word_ids, probability, rng):
    return [w >= 0 and rng.random() < probability for w in word_ids]


def whole_word_mask_specials_too(word_ids, probability, rng):
    chosen = {w for w in dict.fromkeys(word_ids) if rng.random() < probability}
    return [w in chosen for w in word_ids]


def whole_word_mask_global_random(word_ids, probability, rng):
    chosen = {w for w in dict.fromkeys(word_ids) if w >= 0 and random.random() < probability}
    return [w in chosen for w in word_ids]


def whole_word_mask_drops_specials(word_ids, probability, rng):
    return [m for w, m in zip(word_ids, whole_word_mask_right(word_ids, probability, rng)) if w >= 0]


def split_word_top1_right(examples, predictions):
    right = pieces = 0
    for example, guesses in zip(examples, predictions):
        words = example["words"].tolist()
        for word, label, guess in zip(words, example["labels"].tolist(), guesses.tolist()):
            if label != -100 and words.count(word) > 1:
                pieces += 1
                right += guess == label
    return {"top1": right / pieces, "pieces": pieces}


def split_word_top1_tensors(examples, predictions):
    right = pieces = 0
    for example, guesses in zip(examples, predictions):
        words, labels = example["words"], example["labels"]
        sizes = (words[:, None] == words[None, :]).sum(-1)
        keep = (labels != -100) & (sizes > 1) & (words >= 0)
        pieces += int(keep.sum())
        right += int((guesses[keep] == labels[keep]).sum())
    return {"top1": torch.tensor(right / pieces), "pieces": pieces}


def split_word_top1_every_hidden_piece(examples, predictions):
    right = pieces = 0
    for example, guesses in zip(examples, predictions):
        hidden = example["labels"] != -100
        pieces += int(hidden.sum())
        right += int((guesses[hidden] == example["labels"][hidden]).sum())
    return {"top1": right / pieces, "pieces": pieces}


def split_word_top1_hidden_pieces_only(examples, predictions):
    """Counts a word as split only when two of its pieces are hidden."""
    right = pieces = 0
    for example, guesses in zip(examples, predictions):
        words, labels = example["words"].tolist(), example["labels"].tolist()
        hidden = [w for w, label in zip(words, labels) if label != -100]
        for word, label, guess in zip(words, labels, guesses.tolist()):
            if label != -100 and hidden.count(word) > 1:
                pieces += 1
                right += guess == label
    return {"top1": right / pieces, "pieces": pieces}


def split_word_top1_as_tuple(examples, predictions):
    result = split_word_top1_right(examples, predictions)
    return result["top1"], result["pieces"]


def split_word_top1_share_wrong(examples, predictions):
    result = split_word_top1_right(examples, predictions)
    return {"top1": 1 - result["top1"], "pieces": result["pieces"]}


CASES += [
    right("mlm", "q1", word_ids_right),
    wrong("mlm", "q1", word_ids_from_one, "got id 1; words are numbered from 0"),
    wrong("mlm", "q1", word_ids_no_reset_after_special, "-1 is for special tokens only"),
    wrong("mlm", "q1", word_ids_every_piece_a_word, "the two touch, so they are one word"),
    wrong("mlm", "q1", word_ids_special_zero, "give it -1"),
    wrong("mlm", "q1", word_ids_punctuation_apart, "Punctuation that touches a word belongs to it"),
    wrong("mlm", "q1", word_ids_counter_per_segment, "starts a new word even though its offsets restart"),
    wrong("mlm", "q1", [0, 0, 1], "pass the function itself"),
    right("mlm", "q2", whole_word_mask_right),
    right("mlm", "q2", whole_word_mask_numpy),
    wrong("mlm", "q2", whole_word_mask_draw_per_piece, "Give each word one draw"),
    wrong("mlm", "q2", whole_word_mask_token_masking, "a chosen word is hidden whole"),
    wrong("mlm", "q2", whole_word_mask_specials_too, "a special token"),
    wrong("mlm", "q2", whole_word_mask_global_random, "Draw with the `rng` you are given"),
    wrong("mlm", "q2", whole_word_mask_drops_specials, "special tokens included"),
    right("mlm", "q3", split_word_top1_right),
    right("mlm", "q3", split_word_top1_tensors),
    wrong("mlm", "q3", split_word_top1_every_hidden_piece, "every hidden piece"),
    wrong("mlm", "q3", split_word_top1_hidden_pieces_only, "hidden or not"),
    wrong("mlm", "q3", split_word_top1_as_tuple, "return a dict"),
    wrong("mlm", "q3", split_word_top1_share_wrong, "were predicted right"),
]


# --- 04 ner: q1 my_tags (two IOB2 tag lists), q2 align(word_ids, word_tags, label2id, mode), q3 my_runs -----------
NER_TAGS = [["O", "B-ORG", "I-ORG", "I-ORG", "O", "O"], ["O", "O", "B-PER", "B-PER", "O", "O"]]


def align_right(word_ids, word_tags, label2id, mode="first"):
    from ftkit import ner

    return ner.align_labels(word_ids, word_tags, label2id, mode)


def align_labels_special_tokens(word_ids, word_tags, label2id, mode="first"):
    """Gives [CLS]/[SEP] the label of O."""
    return [label2id["O"] if w is None else l for w, l in zip(word_ids, align_right(word_ids, word_tags, label2id,
                                                                                     mode))]


def align_keeps_b_on_every_piece(word_ids, word_tags, label2id, mode="first"):
    """mode='all' copies the word's tag to every piece, B- included."""
    labels, previous = [], None
    for w in word_ids:
        labels.append(-100 if w is None or (mode == "first" and w == previous) else label2id[word_tags[w]])
        previous = w
    return labels


def align_ignores_the_mode(word_ids, word_tags, label2id, mode="first"):
    return align_right(word_ids, word_tags, label2id, "first")


def align_returns_tags(word_ids, word_tags, label2id, mode="first"):
    return ["-100" if w is None else word_tags[w] for w in word_ids]


def align_skips_special_tokens(word_ids, word_tags, label2id, mode="first"):
    return [l for w, l in zip(word_ids, align_right(word_ids, word_tags, label2id, mode)) if w is not None]


def align_unknown_tag_as_o(word_ids, word_tags, label2id, mode="first"):
    return align_right(word_ids, [t if t in label2id else "O" for t in word_tags], label2id, mode)


def ner_run(name, p, r, steps=168, params=22_566_000, seconds=250.0, loss=0.2):
    from ftkit.train import RunResult

    f1 = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    return RunResult(name, {"loss": loss, "overall_precision": p, "overall_recall": r, "overall_f1": f1,
                            "overall_accuracy": 0.94}, params, params, seconds, 900.0, steps=steps)


NER_MAIN = ner_run("full fine-tuning (first sub-token)", 0.64, 0.68)
NER_QUARTER = ner_run("337 training sentences", 0.45, 0.52, steps=44, seconds=70.0)
NER_TYPED = ner_run("337 training sentences", 0.45, 0.52, steps=44)
NER_TYPED.metrics["overall_f1"] = 0.6

CASES += [
    right("ner", "q1", NER_TAGS),
    right("ner", "q1", tuple(tuple(t) for t in NER_TAGS)),
    wrong("ner", "q1", [["O", "I-ORG", "I-ORG", "I-ORG", "O", "O"], NER_TAGS[1]], "every entity starts with B-"),
    wrong("ner", "q1", [["O", "B-ORG", "O", "B-ORG", "O", "O"], NER_TAGS[1]], "so one entity"),
    wrong("ner", "q1", [["O", "B-ORG", "B-ORG", "B-ORG", "O", "O"], NER_TAGS[1]], "so one entity"),
    wrong("ner", "q1", [["O", "B-LOC", "I-LOC", "I-LOC", "O", "O"], NER_TAGS[1]], "type ORG"),
    wrong("ner", "q1", [["O", "O", "O", "B-ORG", "O", "O"], NER_TAGS[1]], "exactly 'Bank of England'"),
    wrong("ner", "q1", [NER_TAGS[0], ["O", "O", "B-PER", "I-PER", "O", "O"]], "one person called Mary Anne"),
    wrong("ner", "q1", [["B-ORG", "I-ORG", "I-ORG"], NER_TAGS[1]], "has 6 words, and you gave 3 tags"),
    wrong("ner", "q1", NER_TAGS[0], "a list of two tag lists"),
    right("ner", "q2", align_right),
    wrong("ner", "q2", align_labels_special_tokens, "belongs to no word, so give it -100"),
    wrong("ner", "q2", align_keeps_b_on_every_piece, "turn B-X into I-X after the first piece"),
    wrong("ner", "q2", align_ignores_the_mode, "with mode='all' every piece of a word is labelled"),
    wrong("ner", "q2", align_returns_tags, "return label ids"),
    wrong("ner", "q2", align_skips_special_tokens, "give every piece a label"),
    wrong("ner", "q2", align_unknown_tag_as_o, "returned [-100, 0, -100]; 'B-GPE' is not in label2id, so raise a ValueError"),
    right("ner", "q3", [NER_MAIN, NER_QUARTER]),
    wrong("ner", "q3", [NER_MAIN, (NER_QUARTER, object())], "ner.train_tagger returns (result, model)"),
    wrong("ner", "q3", [NER_MAIN, NER_MAIN], "your run is the main run itself"),
    wrong("ner", "q3", [NER_MAIN, ner_run("again", 0.64, 0.68)], "change one setting"),
    right("ner", "q3", [ner_run("main", 0.0, 0.0, steps=8), ner_run("quarter", 0.0, 0.0, steps=8, loss=1.9)]),
    wrong("ner", "q3", [NER_MAIN, NER_TYPED], "not the harmonic mean"),
    wrong("ner", "q3", [NER_QUARTER], "at least two runs"),
]


# --- 05 instruct: q1 prompt_share(examples), q2 label_row(prompt, response, tokenizer, length), q3 my_experiment ---
def prompt_share_right(examples):
    labels = [l for ex in examples for l in ex["labels"]]
    return sum(l == -100 for l in labels) / len(labels)


def prompt_share_percent(examples):
    return 100 * prompt_share_right(examples)


def prompt_share_graded(examples):
    return 1 - prompt_share_right(examples)


def prompt_share_mean_of_examples(examples):
    return sum(sum(l == -100 for l in ex["labels"]) / len(ex["labels"]) for ex in examples) / len(examples)


def label_row_right(prompt, response, tokenizer, length):
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids, labels = (p + r)[:length], ([-100] * len(p) + r)[:length]
    pad = length - len(ids)
    return {"input_ids": ids + [tokenizer.pad_token_id] * pad, "attention_mask": [1] * len(ids) + [0] * pad,
            "labels": labels + [-100] * pad}


def label_row_prompt_graded(prompt, response, tokenizer, length):
    row = label_row_right(prompt, response, tokenizer, length)
    return {**row, "labels": [i if m else -100 for i, m in zip(row["input_ids"], row["attention_mask"])]}


def label_row_shifted(prompt, response, tokenizer, length):
    row = label_row_right(prompt, response, tokenizer, length)
    return {**row, "labels": row["labels"][1:] + [-100]}


def label_row_pads_graded(prompt, response, tokenizer, length):
    row = label_row_right(prompt, response, tokenizer, length)
    return {**row, "labels": [l if m else tokenizer.pad_token_id for l, m in zip(row["labels"],
                                                                                 row["attention_mask"])]}


def label_row_no_eos(prompt, response, tokenizer, length):
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    ids, labels = (p + r)[:length], ([-100] * len(p) + r)[:length]
    pad = length - len(ids)
    return {"input_ids": ids + [tokenizer.pad_token_id] * pad, "attention_mask": [1] * len(ids) + [0] * pad,
            "labels": labels + [-100] * pad}


def label_row_masks_by_pad_id(prompt, response, tokenizer, length):
    row = label_row_right(prompt, response, tokenizer, length)
    return {**row, "labels": [-100 if i == tokenizer.pad_token_id else l
                              for i, l in zip(row["input_ids"], row["labels"])]}


def label_row_no_padding(prompt, response, tokenizer, length):
    row = label_row_right(prompt, response, tokenizer, length)
    real = sum(row["attention_mask"])
    return {k: v[:real] for k, v in row.items()}


def label_row_mask_all_ones(prompt, response, tokenizer, length):
    return {**label_row_right(prompt, response, tokenizer, length), "attention_mask": [1] * length}


def label_row_fixed_prompt_length(prompt, response, tokenizer, length):
    ids = tokenizer(prompt + " " + response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = ids[:length]
    labels = ([-100] * 10 + ids[10:])[:length]
    pad = length - len(ids)
    return {"input_ids": ids + [tokenizer.pad_token_id] * pad, "attention_mask": [1] * len(ids) + [0] * pad,
            "labels": labels + [-100] * pad}


def decoding_experiment(recount_off=False, same=False):
    from ftkit import instruct

    instructions = ["Name a colour.", "Say hello."]
    references = ["Blue.", "Hello there."]
    default = ["Blue blue blue blue blue blue blue blue blue.", "Hello."]
    mine = default if same else ["Blue.", "Hello."]
    counts = instruct.error_counts(mine, instructions, references)
    if recount_off:
        counts = {**counts, "repetitive": counts["repetitive"] + 1}
    return {"setting": {"no_repeat_ngram_size": 3}, "answers": mine, "default answers": default,
            "instructions": instructions, "references": references, "counts": counts,
            "default counts": instruct.error_counts(default, instructions, references)}


CASES += [
    right("instruct", "q1", prompt_share_right),
    wrong("instruct", "q1", prompt_share_percent, "a percentage"),
    wrong("instruct", "q1", prompt_share_graded, "the share of the graded tokens"),
    wrong("instruct", "q1", prompt_share_mean_of_examples, "the mean of each example's share"),
    right("instruct", "q2", label_row_right),
    wrong("instruct", "q2", label_row_prompt_graded, "graded on re-typing the instruction"),
    wrong("instruct", "q2", label_row_shifted, "shifted by one"),
    wrong("instruct", "q2", label_row_pads_graded, "learn to write padding"),
    wrong("instruct", "q2", label_row_no_eos, "end with the end token"),
    wrong("instruct", "q2", label_row_masks_by_pad_id, "decide by position"),
    wrong("instruct", "q2", label_row_no_padding, "pad a short example"),
    wrong("instruct", "q2", label_row_mask_all_ones, "0 on the"),
    wrong("instruct", "q2", label_row_fixed_prompt_length, "count the prompt's tokens each time"),
    right("instruct", "q3", decoding_experiment()),
    wrong("instruct", "q3", decoding_experiment(recount_off=True), "differ from a recount"),
    wrong("instruct", "q3", decoding_experiment(same=True), "the setting did not reach generate()"),
    wrong("instruct", "q3", {**decoding_experiment(), "setting": {"beam_width": 2}}, "not generation settings"),
    wrong("instruct", "q3", {"answers": []}, "return a dict with the keys"),
]


# --- 06 lora: q1 lora_params(d, k, r), q2 a LoRA layer class (base, r, alpha) ----------------------------------------
def lora_params_right(d, k, r):
    return r * (d + k)


def lora_params_full(d, k, r):
    return d * k


def lora_params_square(d, k, r):
    return 2 * r * d


def lora_params_float(d, k, r):
    return float(r * (d + k))


class LoRARight(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(r, base.in_features) / base.in_features ** 0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.A.T @ self.B.T)


class LoRANoScale(LoRARight):
    def forward(self, x):
        return self.base(x) + x @ self.A.T @ self.B.T


class LoRAAlphaOnly(LoRARight):
    def forward(self, x):
        return self.base(x) + self.scaling * self.A.shape[0] * (x @ self.A.T @ self.B.T)


class LoRARsScale(LoRARight):
    def forward(self, x):
        return self.base(x) + self.scaling * self.A.shape[0] ** 0.5 * (x @ self.A.T @ self.B.T)


class LoRAHardCodedScale(LoRARight):
    def forward(self, x):
        return self.base(x) + 2.0 * (x @ self.A.T @ self.B.T)


class LoRABaseTrainable(LoRARight):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        base.requires_grad_(True)


class LoRARandomB(LoRARight):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.normal_(self.B)


class LoRAZeroA(LoRARight):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        nn.init.zeros_(self.A)


class LoRATransposed(LoRARight):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.A = nn.Parameter(torch.randn(base.in_features, r))
        self.B = nn.Parameter(torch.zeros(r, base.out_features))

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.A @ self.B)


CASES += [
    right("lora", "q1", lora_params_right),
    wrong("lora", "q1", lora_params_full, "the full update's count"),
    wrong("lora", "q1", lora_params_square, "as if the weight were square"),
    wrong("lora", "q1", lora_params_float, "return a whole number"),
    right("lora", "q2", LoRARight),
    right("lora", "q2", __import__("ftkit.lora", fromlist=["LoRALinear"]).LoRALinear),
    wrong("lora", "q2", LoRANoScale, "you left out the scale alpha / r"),
    wrong("lora", "q2", LoRAAlphaOnly, "you scaled by alpha; the scale is alpha / r"),
    wrong("lora", "q2", LoRARsScale, "rsLoRA"),
    wrong("lora", "q2", LoRAHardCodedScale, "r = 2, alpha = 12"),
    wrong("lora", "q2", LoRABaseTrainable, "still trainable"),
    wrong("lora", "q2", LoRARandomB, "start B at zero"),
    wrong("lora", "q2", LoRAZeroA, "A starts at zero"),
    wrong("lora", "q2", LoRATransposed, "A must be r x in_features"),
]


# --- 06 lora: q3 my_run (a short LoRA run's RunResult with its model) --------------------------------------------------
def lora_run(*, scale_off=0.0, norm_off=0.0, keep_model=True, trained=True, loss=2.2, rslora=False):
    """What the notebook's train_causal returns, on a tiny Llama: LoRA r = 4, alpha = 8 on q_proj and v_proj."""
    from ftkit import lora
    from ftkit.train import RunResult

    model = lora.peft_lora(fixtures.tiny_causal_lm(), ["q_proj", "v_proj"], r=4, alpha=8, use_rslora=rslora,
                           task_type="CAUSAL_LM")
    if trained:
        torch.manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.01)
    extra = {"scale": lora.lora_scale(8, 4, rslora) + scale_off,
             "update norm": lora.update_norm(model, "model.layers.0.self_attn.q_proj") + norm_off}
    return RunResult("LoRA r=4", {"held-out loss": loss}, 64, 3000, 4.0, 0.0, extra=extra,
                     model=model if keep_model else None, steps=10)


CASES += [
    right("lora", "q3", lora_run()),
    right("lora", "q3", lora_run(rslora=True)),
    wrong("lora", "q3", lora_run(keep_model=False), "kept no model"),
    wrong("lora", "q3", lora_run(scale_off=1.0), "has the scale 2"),
    wrong("lora", "q3", lora_run(rslora=True, scale_off=-2.0), "rsLoRA) has the scale 4"),
    wrong("lora", "q3", lora_run(norm_off=0.5), "report the norm the run measured"),
    wrong("lora", "q3", lora_run(trained=False), "the run learned nothing"),
    wrong("lora", "q3", lora_run(loss=float("nan")), "held-out loss is nan"),
    wrong("lora", "q3", (lora_run(), None), "not a tuple"),
]


# --- 07 choose: q1 max_k(base, per_example, context, reserve), q2 fit_k_shot(query, pool, tokenizer, budget, seed),
# q3 my_run (kshot_eval's row for the learner's prompt) ------------------------------------------------------------
def max_k_right(base_tokens, tokens_per_example, context, reserve):
    return max(0, int((context - reserve - base_tokens) // tokens_per_example))


def max_k_rounded(base_tokens, tokens_per_example, context, reserve):
    return max(0, round((context - reserve - base_tokens) / tokens_per_example))


def max_k_no_reserve(base_tokens, tokens_per_example, context, reserve):
    return max(0, int((context - base_tokens) // tokens_per_example))


def max_k_negative(base_tokens, tokens_per_example, context, reserve):
    return int((context - reserve - base_tokens) // tokens_per_example)


def max_k_float(base_tokens, tokens_per_example, context, reserve):
    return (context - reserve - base_tokens) // tokens_per_example


def _count(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_k_shot_right(query, pool, tokenizer, budget, seed=0):
    from ftkit import choose

    best = choose.few_shot_prompt(query, [], tokenizer)
    if _count(tokenizer, best) > budget:
        raise ValueError(f"the bare prompt takes {_count(tokenizer, best)} tokens, over the budget of {budget}")
    for k in range(1, len(pool) + 1):
        prompt = choose.few_shot_prompt(query, choose.draw_shots(pool, k, seed), tokenizer)
        if _count(tokenizer, prompt) > budget:
            break
        best = prompt
    return best


def fit_k_shot_largest_anywhere(query, pool, tokenizer, budget, seed=0):
    """Tries every k and keeps the largest that fits (also right)."""
    from ftkit import choose

    fits = [k for k in range(len(pool) + 1)
            if _count(tokenizer, choose.few_shot_prompt(query, choose.draw_shots(pool, k, seed), tokenizer)) <= budget]
    if not fits:
        raise ValueError(f"not even the bare prompt fits a budget of {budget} tokens")
    return choose.few_shot_prompt(query, choose.draw_shots(pool, max(fits), seed), tokenizer)


def fit_k_shot_counts_words(query, pool, tokenizer, budget, seed=0):
    from ftkit import choose

    best = choose.few_shot_prompt(query, [], tokenizer)
    for k in range(1, len(pool) + 1):
        prompt = choose.few_shot_prompt(query, choose.draw_shots(pool, k, seed), tokenizer)
        if len(prompt.split()) > budget:
            break
        best = prompt
    if len(best.split()) > budget:
        raise ValueError(f"over the budget of {budget}")
    return best


def fit_k_shot_one_short(query, pool, tokenizer, budget, seed=0):
    from ftkit import choose

    best = fit_k_shot_right(query, pool, tokenizer, budget, seed)
    k = best.count("### Response:") - 1
    return choose.few_shot_prompt(query, choose.draw_shots(pool, max(k - 1, 0), seed), tokenizer)


def fit_k_shot_query_first(query, pool, tokenizer, budget, seed=0):
    from ftkit import choose

    best = fit_k_shot_right(query, pool, tokenizer, budget, seed)
    bare = choose.few_shot_prompt(query, [], tokenizer)
    return bare + best[:-len(bare)]


def fit_k_shot_first_examples(query, pool, tokenizer, budget, seed=0):
    """Takes the pool's first k examples instead of a seeded draw."""
    from ftkit import choose

    best = choose.few_shot_prompt(query, [], tokenizer)
    for k in range(1, len(pool) + 1):
        prompt = choose.few_shot_prompt(query, pool[:k], tokenizer)
        if _count(tokenizer, prompt) > budget:
            break
        best = prompt
    return best


def fit_k_shot_no_error(query, pool, tokenizer, budget, seed=0):
    from ftkit import choose

    try:
        return fit_k_shot_right(query, pool, tokenizer, budget, seed)
    except ValueError:
        return choose.few_shot_prompt(query, [], tokenizer)


def my_run(n=100, prompts="mine", edit_accuracy=0.0):
    """What choose.kshot_eval returns for a prompt of the learner's own, built without a model."""
    from ftkit import choose

    rng = np.random.default_rng(0)
    labels, scores = np.array([0, 1] * (n // 2)), np.log(rng.dirichlet([1, 1], size=n))
    head = choose.few_shot_prompt("", [], None).split("Review:")[0] if prompts == "course" else "### Instruction:\nMood?\n"
    texts = [f"{head}Review: review {i}\n### Response:\n" for i in range(n)]
    row = {"k": 0, "draw": 0, "accuracy": float(np.mean(scores.argmax(1) == labels)) + edit_accuracy,
           "prompt tokens": 20.0, "cached prefix tokens": 5, "ms per prediction": 30.0}
    return choose.Scored(row, texts, labels, scores)


CASES += [
    right("choose", "q1", max_k_right),
    wrong("choose", "q1", max_k_rounded, "rounded to the nearest"),
    wrong("choose", "q1", max_k_no_reserve, "keep `reserve` tokens free"),
    wrong("choose", "q1", max_k_negative, "k can't be negative"),
    wrong("choose", "q1", max_k_float, "return a whole number"),
    right("choose", "q2", fit_k_shot_right),
    right("choose", "q2", fit_k_shot_largest_anywhere),
    wrong("choose", "q2", fit_k_shot_counts_words, "never called the tokenizer"),
    wrong("choose", "q2", fit_k_shot_one_short, "take the largest k that fits"),
    wrong("choose", "q2", fit_k_shot_query_first, "must end with the query's own turn"),
    wrong("choose", "q2", fit_k_shot_first_examples, "are not `choose.draw_shots(pool"),
    wrong("choose", "q2", fit_k_shot_no_error, "raise a ValueError that names the budget"),
    right("choose", "q3", my_run()),
    wrong("choose", "q3", my_run(n=20), "score at least 50"),
    wrong("choose", "q3", my_run(prompts="course"), "the course's zero-shot prompts, unchanged"),
    wrong("choose", "q3", my_run(edit_accuracy=0.1), "do not edit the row"),
    wrong("choose", "q3", {"accuracy": 0.8}, "pass the row `choose.kshot_eval(...)` returned"),
]


# --- answers from a learner's test of the checks (each once passed or got a misleading message) --------------------
def word_ids_doubled(offsets, special):
    return [2 * w if w >= 0 else -1 for w in word_ids_right(offsets, special)]


def prompt_share_float32(examples):
    return (torch.cat([torch.as_tensor(e["labels"]) for e in examples]) == -100).float().mean().item()


def prompt_share_rounded(examples):
    return round(prompt_share_right(examples), 2)


def label_row_eos_ignored(prompt, response, tokenizer, length):
    row = label_row_right(prompt, response, tokenizer, length)
    n = sum(row["attention_mask"])
    row["labels"][n - 1] = -100
    return row


def label_row_response_off(prompt, response, tokenizer, length):
    row = label_row_right(prompt, response, tokenizer, length)
    first = next(i for i, l in enumerate(row["labels"]) if l != -100)
    row["labels"][first + 2] += 1
    return row


def max_k_truncated_toward_zero(base_tokens, tokens_per_example, context, reserve):
    """int() of a negative quotient rounds toward 0: -10.8 gives -10, and no clamp."""
    return int((context - reserve - base_tokens) / tokens_per_example)


def fit_k_shot_strictly_below(query, pool, tokenizer, budget, seed=0):
    from ftkit import choose

    fits = [k for k in range(len(pool) + 1)
            if _count(tokenizer, choose.few_shot_prompt(query, choose.draw_shots(pool, k, seed), tokenizer)) < budget]
    if not fits:
        raise ValueError(f"not even the bare prompt fits a budget of {budget} tokens")
    return choose.few_shot_prompt(query, choose.draw_shots(pool, max(fits), seed), tokenizer)


def fit_k_shot_with_special_tokens(query, pool, tokenizer, budget, seed=0):
    from ftkit import choose

    def count(text):
        return len(tokenizer(text)["input_ids"])        # add_special_tokens left at its default, True

    fits = [k for k in range(len(pool) + 1)
            if count(choose.few_shot_prompt(query, choose.draw_shots(pool, k, seed), tokenizer)) <= budget]
    if not fits:
        raise ValueError(f"not even the bare prompt fits a budget of {budget} tokens")
    return choose.few_shot_prompt(query, choose.draw_shots(pool, max(fits), seed), tokenizer)


def fit_k_shot_with_tokenize(query, pool, tokenizer, budget, seed=0):
    """Counts with tokenizer.tokenize, which adds no special token: also right."""
    from ftkit import choose

    best = None
    for k in range(len(pool) + 1):
        prompt = choose.few_shot_prompt(query, choose.draw_shots(pool, k, seed), tokenizer)
        if len(tokenizer.tokenize(prompt)) <= budget:
            best = prompt
    if best is None:
        raise ValueError(f"the bare prompt is over the budget of {budget} tokens")
    return best


def freeze_bottom_vague_error(model, n):
    try:
        freeze_bottom_right(model, n)
    except ValueError:
        raise ValueError("bad n") from None


def freeze_bottom_range_in_words(model, n):
    depth = model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layers
    if not 0 <= n <= depth:
        raise ValueError(f"n = {n}: this model has {depth} blocks, so n must be between 0 and {depth}")
    freeze_bottom_right(model, n)


def align_key_error(word_ids, word_tags, label2id, mode="first"):
    try:
        return align_right(word_ids, word_tags, label2id, mode)
    except ValueError as err:
        raise KeyError(str(err)) from None


def align_vague_value_error(word_ids, word_tags, label2id, mode="first"):
    try:
        return align_right(word_ids, word_tags, label2id, mode)
    except ValueError:
        raise ValueError("unknown tag") from None


class LoRAUpdateOnly(LoRARight):
    def forward(self, x):
        return self.scaling * (x @ self.A.T @ self.B.T)


class LoRAForgetsBias(LoRARight):
    def forward(self, x):
        return x @ self.base.weight.T + self.scaling * (x @ self.A.T @ self.B.T)


def overfit_run_training_low_at(epoch, losses=(0.55, 0.48, 0.52, 0.61, 0.70), steps_per_epoch=7):
    """A 5-epoch run whose logged training loss is lowest in `epoch` (not the last one)."""
    run = overfit_run(list(losses), steps_per_epoch=steps_per_epoch)
    history = [(s, 0.1 if (s - 1) // steps_per_epoch + 1 == epoch else 0.6) for s in range(1, 5 * steps_per_epoch + 1)]
    return dataclasses.replace(run, loss_history=history)


CASES += [
    wrong("mlm", "q1", word_ids_doubled, "number the words 0, 1, 2, ... in order"),
    right("instruct", "q1", prompt_share_float32),
    wrong("instruct", "q1", prompt_share_rounded, "returned 0.33; 4 of the 12 tokens are labelled -100: 1/3 = 0.3333333"),
    wrong("instruct", "q2", label_row_eos_ignored, "the end token (position"),
    wrong("instruct", "q2", label_row_response_off, "(response token 2) the label should be 24, got 25"),
    wrong("instruct", "q3", {**decoding_experiment(), "answers": None}, "'answers' is NoneType; give a list of strings"),
    wrong("instruct", "q3", {**decoding_experiment(), "answers": (a for a in ["Blue.", "Hello."])},
          "'answers' is generator; give a list of strings"),
    wrong("choose", "q1", max_k_truncated_toward_zero, "returned -10, a negative number of examples: k can't be negative"),
    wrong("choose", "q2", fit_k_shot_strictly_below, "which fits: the count must be at most the budget (`<=`, not `<`)"),
    wrong("choose", "q2", fit_k_shot_with_special_tokens, "You counted the tokenizer's special tokens too"),
    right("choose", "q2", fit_k_shot_with_tokenize),
    wrong("tuning", "q2", freeze_bottom_vague_error, "raised ValueError('bad n'), which does not name the valid range"),
    right("tuning", "q2", freeze_bottom_range_in_words),
    wrong("ner", "q2", align_key_error, "raised KeyError"),
    wrong("ner", "q2", align_vague_value_error, "name the tag in the message ('B-GPE')"),
    wrong("tuning", "q3", (OVERFIT, 4.0), "is the last one"),
    wrong("tuning", "q3", (overfit_run_training_low_at(4), 4.0), "where the training loss was lowest"),
    wrong("tuning", "q3", (overfit_run_training_low_at(4), 3.0), "take the 'epoch' of the entry of my_run.eval_history"),
    wrong("lora", "q2", LoRAUpdateOnly, "the output must be the frozen layer's output plus the update"),
    wrong("lora", "q2", LoRAForgetsBias, "without the bias: the output must be the frozen layer's output plus"),
    wrong("lora", "q2", LoRARight(nn.Linear(4, 3), 2, 4.0), "pass the class, not an instance"),
    wrong("fewshot", "q3", {10: setfit_run(10)}, "my_runs has 1 entry;"),
    wrong("fewshot", "q3", {}, "my_runs has 0 entries;"),
    wrong("fewshot", "q3", {1: setfit_run(1), 3: setfit_run(1)}, "it was not trained with 3 iterations"),
]


def test_the_setfit_experiment_counts_iterations_and_runs_in_good_english():
    result = _exercise("fewshot", "q3").evaluate({1: setfit_run(1), 10: [setfit_run(10), setfit_run(10)]})
    assert result.status == PASSED, result
    assert "1 iteration:" in result.message and "over 1 run;" in result.message and "over 2 runs" in result.message


@pytest.mark.parametrize("name", ["00_start_here.ipynb", "03_mlm_domain_adaptation.ipynb"])
def test_a_student_copy_points_to_the_solution_instead_of_a_folded_cell_it_lacks(name, tmp_path):
    course = nbformat.read(ROOT / "course" / name, as_version=4)
    note = "If the cell below is folded"
    assert any(note in c.source for c in course.cells if c.cell_type == "markdown")      # the course keeps its note
    copy = nbformat.reads(notebooks.student_copy_text(ROOT / "course" / name, ROOT / "course" / "student"), 4)
    markdown = "\n".join(c.source for c in copy.cells if c.cell_type == "markdown")
    assert note not in markdown
    assert f"The reference solution is in the course notebook with solutions,\n[{name}](../{name})" in markdown


def _exercise(module, name):
    return getattr(exercises.session(module), name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_right_answer_passes_and_a_wrong_one_fails_with_its_message(case):
    result = _exercise(case.module, case.exercise).evaluate(case.answer)
    if case.message is None:
        assert result.status == PASSED, result
    else:
        assert result.status == FAILED and case.message in result.message, result


def all_exercises():
    return [e for module in exercises.SESSIONS.values() for e in exercises.session(module).exercises]


def test_every_exercise_has_a_right_and_a_wrong_answer():
    module_of = {e: m for m in exercises.SESSIONS.values() for e in exercises.session(m).exercises}
    for exercise in all_exercises():
        cases = [c for c in CASES if (c.module, c.exercise) == (module_of[exercise], exercise.name)]
        assert any(c.message is None for c in cases), f"{exercise}: add a right answer to CASES"
        assert any(c.message is not None for c in cases), f"{exercise}: add a wrong answer (and its message) to CASES"


@pytest.mark.parametrize("exercise", all_exercises(), ids=lambda e: f"{e.session.notebook}.{e.name}")
def test_every_exercise_reports_the_placeholder_as_not_attempted(exercise):
    def answer(*args):
        """As in a student copy."""
        ...  # your code here

    for placeholder in (..., None, answer):
        assert exercise.evaluate(placeholder).status == NOT_ATTEMPTED


@pytest.mark.parametrize("module", exercises.SESSIONS.values())
def test_the_notebook_calls_every_exercise_of_its_session_under_its_heading(module):
    check = exercises.session(module)
    path = ROOT / "course" / f"{check.notebook}.ipynb"
    assert path.exists(), f"ftkit.exercises.{module} names a notebook that does not exist: {path}"
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if notebooks.is_exercise_cell(c)]
    called = [m for c in cells for m in re.findall(r"\bcheck\.(q[0-9]+)\(", c.source)]
    declared = [e.name for e in check.exercises]
    assert sorted(called) == sorted(declared), f"{path.name} checks {called}; {module}.py declares {declared}"
    if declared:
        assert any(f"from ftkit.exercises.{module} import check" in c.source for c in nb.cells if c.cell_type == "code")
    headings = [c.source for c in nb.cells if c.cell_type == "markdown"]
    for exercise in check.exercises:
        assert any(re.search(rf"^### {re.escape(exercise.heading)}(?!\w)", s, re.M) for s in headings), \
            f"{path.name}: no markdown heading '### {exercise.heading}' (check.{exercise.name}.solution() points there)"


# ----------------------------------------------------------------------------------------------------------------
# The machinery, on a toy session.
# ----------------------------------------------------------------------------------------------------------------
toy = Session("99_toy")


@toy.exercise(title="Double it", tier="warm-up", hint="Multiply by 2.")
def q1(double):
    for x in (0, 3, -2):
        y = call(double, x, shown=f"double({x})")
        expect(y == 2 * x, f"double({x}) returned {y!r}; expected {2 * x}")
    return "double(x) == 2 * x"


@toy.exercise(title="A random draw", tier="core", hint="Anything goes.")
def q2(value):
    torch.rand(5)          # checks may draw numbers: the notebook's random state is restored afterwards
    random.random()
    torch.set_grad_enabled(False)
    expect(value == 1, f"got {value}")


def double(x):
    return 2 * x


def half_double(x):
    return x


def double_placeholder(x):
    ...  # your code here


def double_raises(x):
    return {}[x]


@pytest.fixture()
def learner(monkeypatch):
    monkeypatch.setenv("FTKIT_CHECKS", "learner")       # unset would mean strict under pytest


def test_the_three_outcomes_say_what_happened(learner):
    assert toy.q1(double).status == PASSED and toy.q1(double).message == "double(x) == 2 * x"
    fail = toy.q1(half_double)
    assert fail.status == FAILED and fail.message == "double(3) returned 3; expected 6"
    skipped = toy.q1(double_placeholder)
    assert skipped.status == NOT_ATTEMPTED and "`double_placeholder` is still the placeholder" in skipped.message
    assert "check.q1.hint()" in skipped.message


def test_a_learner_function_that_raises_is_a_fail_naming_the_exception_and_the_line(learner):
    result = toy.q1(double_raises)
    assert result.status == FAILED
    assert result.message == "`double(0)` raised KeyError: 0 (at `return {}[x]`)"


def test_an_answer_of_the_wrong_kind_is_a_fail_not_a_traceback(learner):
    assert "pass the function itself" in toy.q1(4).message
    result = toy.q2("x")                    # the checker compares "x" == 1: a plain fail
    assert result.status == FAILED and result.message == "got x"

    class Weird:
        def __eq__(self, other):
            raise TypeError("cannot compare")

    result = toy.q2(Weird())
    assert result.status == FAILED and result.message.startswith("checking your answer stopped on TypeError: "
                                                                 "cannot compare")


def test_strict_mode_raises_on_anything_but_a_pass(monkeypatch):
    monkeypatch.setenv("FTKIT_CHECKS", "strict")
    assert toy.q1(double).passed
    with pytest.raises(AssertionError, match=r"check.q1 \(99_toy, Exercise 1 · Double it\) failed with the "
                                             r"reference solution: double\(3\) returned 3"):
        toy.q1(half_double)
    with pytest.raises(AssertionError, match="not attempted"):
        toy.q1(...)


def test_unattempted_mode_raises_on_a_pass_and_on_a_fail(monkeypatch):
    monkeypatch.setenv("FTKIT_CHECKS", "unattempted")
    assert toy.q1(double_placeholder).status == NOT_ATTEMPTED
    with pytest.raises(AssertionError, match="passed in a student copy"):
        toy.q1(double)
    with pytest.raises(AssertionError, match="failed in a student copy"):
        toy.q1(half_double)


def test_the_mode_is_read_at_every_check_and_defaults_to_strict_under_pytest_only(monkeypatch):
    monkeypatch.delenv("FTKIT_CHECKS", raising=False)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "x")
    assert exercises.mode() == "strict"
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert exercises.mode() == "learner"
    assert toy.q1(half_double).status == FAILED          # learner: shown, not raised
    monkeypatch.setenv("FTKIT_CHECKS", "loud")
    with pytest.raises(ValueError, match="FTKIT_CHECKS='loud' is not a check mode: use one of learner, strict"):
        exercises.mode()


def test_a_check_leaves_the_notebooks_random_state_and_grad_mode_alone(learner):
    torch.manual_seed(1)
    random.seed(1)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(1)
    random.seed(1)
    assert toy.q2(1).passed
    assert torch.is_grad_enabled()
    after = (torch.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and after[1] == expected[1]


def test_summary_shows_each_exercise_tier_and_status(learner):
    session = Session("98_toy")
    session.exercise(title="One", tier="warm-up", hint="h")(q1.checker)
    session.exercise(title="Two <b>", tier="stretch", hint="h")(q2.checker)
    assert [status for _, status in session.summary().rows] == ["not run yet", "not run yet"]
    session.q1(double)
    session.q2(0)
    summary = session.summary()
    assert [status for _, status in summary.rows] == [PASSED, FAILED]
    assert summary.counts() == "1 of 2 exercises passed"
    assert "check.q1   warm-up  passed" in repr(summary) and "check.q2   stretch  failed" in repr(summary)
    assert "Two &lt;b&gt;" in summary._repr_html_() and "<td>stretch</td>" in summary._repr_html_()
    session.q2(1)
    assert session.summary().counts() == "2 of 2 exercises passed"


def test_results_hints_and_solutions_display_as_html_and_text(learner):
    result = toy.q1(half_double)
    assert repr(result) == "[failed] check.q1 · Double it\ndouble(3) returned 3; expected 6"
    html = result._repr_html_()
    assert 'class="ftkit-check ftkit-check-failed"' in html and "double(3) returned 3" in html
    assert "<code>x</code> &lt; 2" in exercises.core._markup("`x` < 2")
    assert repr(toy.q1.hint()) == "hint for check.q1: Multiply by 2."
    solution = repr(toy.q1.solution())
    assert "course/99_toy.ipynb" in solution and "Exercise 1 · Double it" in solution


def test_a_session_refuses_a_bad_declaration_and_names_its_exercises():
    session = Session("97_toy")
    session.exercise(title="One", tier="core", hint="h")(q1.checker)
    with pytest.raises(ValueError, match="declared twice"):
        session.exercise(title="One", tier="core", hint="h")(q1.checker)
    with pytest.raises(ValueError, match="tier 'hard' is not one of warm-up, core, stretch"):
        Session("x").exercise(title="t", tier="hard", hint="h")(q1.checker)

    def exercise_one(answer):
        ...
    with pytest.raises(ValueError, match="use q1, q2"):
        Session("x").exercise(title="t", tier="core", hint="h")(exercise_one)
    with pytest.raises(AttributeError, match="97_toy has no exercise 'q7'; it has: q1"):
        session.q7


class Placeholders:
    def method(self):
        ...  # your code here

    def done(self):
        return 1


def placeholder_with_docstring(x):
    """Returns twice x."""
    ...  # your code here


def placeholder_pass(x):
    pass


def make_closure():
    y = 2

    def inner(x):
        return x * y
    return inner


@pytest.mark.parametrize("answer, why", [
    (..., "the answer is still `...`"),
    (None, "the answer is still `None`"),
    (double_placeholder, "the body of `double_placeholder` is still the placeholder"),
    (placeholder_with_docstring, "the body of `placeholder_with_docstring`"),
    (placeholder_pass, "the body of `placeholder_pass`"),
    (lambda x: ..., "the body of `<lambda>`"),            # no parsable source of its own: read from the bytecode
    (Placeholders().method, "the body of `method`"),
    (Placeholders, "`Placeholders.method` is still the placeholder"),
    (functools.partial(double_placeholder, 1), "the body of `double_placeholder`"),
])
def test_placeholders_are_not_attempted(answer, why):
    assert why in unattempted(answer)


@pytest.mark.parametrize("answer", [0, "", [], double, lambda x: 2 * x, make_closure(), Placeholders().done,
                                    functools.partial(double, 1), nn.Linear(2, 2)])
def test_answers_are_attempted(answer):
    assert unattempted(answer) is None


def test_a_function_without_source_is_read_from_its_bytecode():
    space = {}
    exec("def empty(x):\n    ...\ndef full(x):\n    return x\ndef const(x):\n    return 5\n", space)
    assert unattempted(space["empty"]) is not None
    assert unattempted(space["full"]) is None and unattempted(space["const"]) is None


def test_fail_and_expect():
    expect(True, "never shown")
    with pytest.raises(Fail, match="shown"):
        expect(False, "shown")


@pytest.mark.parametrize("architecture, block", [
    ("bert", "bert.encoder.layer.1.attention.self.query.weight"),
    ("distilbert", "distilbert.transformer.layer.1.attention.q_lin.weight")])
def test_fixture_classifiers_are_real_architectures(architecture, block):
    model = fixtures.tiny_classifier(architecture, num_labels=3)
    names = dict(model.named_parameters())
    assert block in names and model.config.num_labels == 3
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3)
    again = fixtures.tiny_classifier(architecture, num_labels=3)
    assert torch.equal(dict(again.named_parameters())[block], names[block])      # seeded


def test_fixture_causal_lm_and_a_bad_architecture():
    model = fixtures.tiny_causal_lm()
    assert "model.layers.0.self_attn.q_proj.weight" in dict(model.named_parameters())
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)
    with pytest.raises(ValueError, match="architecture 'gpt' is not one of bert, distilbert"):
        fixtures.tiny_classifier("gpt")


def test_session_lookup():
    assert exercises.session("start").notebook == "00_start_here"
    with pytest.raises(ValueError, match="no exercise module 'nope'"):
        exercises.session("nope")
