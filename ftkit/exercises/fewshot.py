"""Exercises of session 02 (course/02_setfit_few_shot.ipynb): how many pairs K examples give, writing step 1 of SetFit
(the positive and negative pairs), and an experiment of the learner's own on the number of pair iterations."""
from __future__ import annotations

import math
from collections import Counter
from numbers import Integral, Real

from .core import Fail, Session, call, expect

check = Session("02_setfit_few_shot")


# --------------------------------------------------------------------------- q1: counting pairs
@check.exercise(title="Count the pairs", tier="warm-up",
                hint="With K examples in each of C classes there are N = K·C sentences. Each iteration gives every "
                     "sentence one same-class and one other-class partner. Two different sentences of one class: "
                     "K·(K-1)/2 unordered pairs per class. Two sentences of different classes: K·K for each of the "
                     "C·(C-1)/2 pairs of classes. Use `//` so the counts stay whole numbers.")
def q1(pair_counts):
    """pair_counts(k, n_classes, iterations) -> (pairs trained on, distinct positive pairs, distinct negative pairs),
    distinct meaning unordered pairs of two different sentences."""
    for k, c, i in ((8, 2, 20), (4, 3, 5), (2, 2, 1), (5, 4, 3)):
        shown = f"pair_counts({k}, {c}, {i})"
        got = call(pair_counts, k, c, i, shown=shown)
        expect(isinstance(got, (tuple, list)) and len(got) == 3,
               f"{shown} returned {got!r}; return three numbers: (pairs trained on, distinct positive pairs, "
               "distinct negative pairs)")
        expect(all(isinstance(x, Integral) and not isinstance(x, bool) for x in got),
               f"{shown} returned {tuple(got)!r}; give whole numbers (ints): `//` divides without a float")
        trained, positive, negative = (int(x) for x in got)
        n = k * c
        want = (2 * i * n, c * k * (k - 1) // 2, k * k * c * (c - 1) // 2)
        expect(trained != i * n, f"{shown}: {trained} pairs trained on is one pair per sentence and iteration; "
                                 f"each sentence gets a positive AND a negative partner: 2 · {i} · {n}")
        expect(trained != 2 * i * k or c == 1, f"{shown}: {trained} pairs trained on counts K sentences, but K is "
                                               f"per class: there are K · C = {n} sentences")
        expect(trained == want[0], f"{shown}: {trained} pairs trained on; expected 2 · iterations · K · C = {want[0]}")
        expect(positive != k * (k - 1) // 2 or c == 1,
               f"{shown}: {positive} distinct positive pairs is one class's K·(K-1)/2; each of the {c} classes has them")
        expect(positive != c * k * (k - 1), f"{shown}: {positive} distinct positive pairs counts (a, b) and (b, a) "
                                            "as two pairs; count unordered pairs (divide by 2)")
        expect(positive != c * k * (k + 1) // 2,
               f"{shown}: {positive} distinct positive pairs includes each sentence paired with itself (setfit's "
               "sampler does make those); count pairs of two different sentences: K·(K-1)/2 per class")
        expect(positive == want[1], f"{shown}: {positive} distinct positive pairs; expected C · K·(K-1)/2 = {want[1]}")
        expect(negative != 2 * want[2], f"{shown}: {negative} distinct negative pairs counts (a, b) and (b, a) as two "
                                        "pairs; count unordered pairs")
        expect(negative != k * k or c == 2, f"{shown}: {negative} distinct negative pairs counts one pair of classes; "
                                            f"{c} classes make C·(C-1)/2 = {c * (c - 1) // 2} pairs of classes")
        expect(negative == want[2],
               f"{shown}: {negative} distinct negative pairs; expected K·K · C·(C-1)/2 = {want[2]}")
    return ("K=8, 2 classes, 20 iterations: 640 pairs trained on, out of only 56 + 64 = 120 distinct pairs of two "
            "different sentences: each is seen about 5 times")


# --------------------------------------------------------------------------- q2: step 1, the pairs
TEXTS = ["a gem", "pure joy", "loved it", "a bore", "dull mess", "so flat", "it exists", "a film", "ninety minutes"]
LABELS = ["pos", "pos", "pos", "neg", "neg", "neg", "meh", "meh", "meh"]


def _pairs(make_pairs, texts, labels, iterations, seed):
    shown = f"make_pairs({len(texts)} sentences of {len(set(labels))} classes, iterations={iterations}, seed={seed})"
    pairs = call(make_pairs, list(texts), list(labels), iterations, seed, shown=shown)
    expect(isinstance(pairs, (list, tuple)), f"{shown} returned {type(pairs).__name__}; return a list of "
                                             "(sentence, partner, similar) tuples")
    expect(all(isinstance(p, (tuple, list)) and len(p) == 3 for p in pairs),
           f"{shown}: every pair must be a (sentence, partner, similar) tuple of three items")
    return shown, [tuple(p) for p in pairs]


def _check_pairs(shown, pairs, texts, labels, iterations):
    label = dict(zip(texts, labels))
    n = len(texts)
    expect(len(pairs) == 2 * iterations * n,
           f"{shown} returned {len(pairs)} pairs; expected 2 · iterations · sentences = {2 * iterations * n} "
           "(one same-class and one other-class partner per sentence and iteration)")
    strange = [x for p in pairs for x in p[:2] if x not in label]
    if strange:
        raise Fail(f"{shown}: {strange[0]!r} is not one of the sentences given; pair the sentences themselves")
    expect(all(isinstance(s, Real) and not isinstance(s, bool) and s in (0.0, 1.0) for *_, s in pairs),
           f"{shown}: the third item must be 1.0 (similar: same class) or 0.0 (different classes), got "
           f"{sorted({repr(s) for *_, s in pairs})[:4]}")
    for a, b, similar in pairs:
        expect(a != b, f"{shown}: ({a!r}, {b!r}) pairs a sentence with itself; a partner must be another sentence")
        if similar == 1.0:
            expect(label[a] == label[b], f"{shown}: ({a!r}, {b!r}, 1.0) is marked similar, but their classes are "
                                         f"{label[a]!r} and {label[b]!r}: 1.0 is for two sentences of one class")
        else:
            expect(label[a] != label[b], f"{shown}: ({a!r}, {b!r}, 0.0) is marked dissimilar, but both are of class "
                                         f"{label[a]!r}: 0.0 is for two sentences of different classes")
    per_sentence = Counter((a, s) for a, _, s in pairs)
    for text in texts:
        expect(per_sentence[(text, 1.0)] == iterations and per_sentence[(text, 0.0)] == iterations,
               f"{shown}: {text!r} comes first in {per_sentence[(text, 1.0)]} similar and {per_sentence[(text, 0.0)]} "
               f"dissimilar pairs; every sentence needs one of each per iteration ({iterations} each)")


@check.exercise(title="Make the pairs", tier="core",
                hint="Group the row indices by label first. Then, for every iteration and every sentence i, pick one "
                     "partner from the other indices of its class (`rng.choice(same)`, with i left out) and one "
                     "from the indices of all other classes, with `rng = random.Random(seed)`. Raise a ValueError "
                     "when a class has fewer than two examples.")
def q2(make_pairs):
    """make_pairs(texts, labels, iterations, seed) -> [(sentence, partner, similar)], checked for its properties."""
    shown, pairs = _pairs(make_pairs, TEXTS, LABELS, 4, 0)
    _check_pairs(shown, pairs, TEXTS, LABELS, 4)
    texts, labels = TEXTS[:2] + TEXTS[3:5], [1, 1, 0, 0]      # class ids too, and the smallest legal input
    small_shown, small = _pairs(make_pairs, texts, labels, 1, 0)
    _check_pairs(small_shown, small, texts, labels, 1)

    again = _pairs(make_pairs, TEXTS, LABELS, 4, 0)[1]
    expect(again == pairs, f"{shown} gave other pairs when called again with the same seed; draw from "
                           "`random.Random(seed)` so that a seed always gives the same pairs")
    other = _pairs(make_pairs, TEXTS, LABELS, 4, 1)[1]
    expect(other != pairs, f"{shown} gave the same pairs for seed=1 as for seed=0; the seed must decide the draws")
    many_shown, many = _pairs(make_pairs, TEXTS, LABELS, 20, 0)
    partners = {(a, s): {b for x, b, t in many if (x, t) == (a, s)} for a in TEXTS for s in (0.0, 1.0)}
    stuck = [(a, s) for (a, s), found in partners.items() if len(found) < 2]
    if stuck:
        (text, similar), = stuck[:1]
        raise Fail(f"{many_shown}: {text!r} always gets the same {'similar' if similar else 'dissimilar'} partner; "
                   "pick a random one each time")

    for bad_texts, bad_labels, what in ((TEXTS[:4], LABELS[:4], "class 'neg' has a single example"),
                                        (TEXTS[:3], LABELS[:3], "there is a single class")):
        try:
            make_pairs(list(bad_texts), list(bad_labels), 1, 0)
        except ValueError:
            continue
        except Exception as exc:  # the learner's code: any other exception is a failed check
            raise Fail(f"make_pairs raised {type(exc).__name__} when {what}; raise a ValueError that says so") from exc
        raise Fail(f"make_pairs returned pairs when {what}; raise a ValueError (a positive pair needs two sentences "
                   "of one class, a negative pair two classes)")
    return "right counts, right labels, no sentence with itself, reproducible by seed, and clear errors"


# --------------------------------------------------------------------------- q3: an experiment on iterations
def _plural(n: int, word: str, plural: str | None = None) -> str:
    """`1 iteration`, `2 iterations`, `0 entries`."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _runs(value, key):
    from ..train import RunResult

    runs = value if isinstance(value, (list, tuple)) else [value]
    expect(runs and all(isinstance(r, RunResult) for r in runs),
           f"my_runs[{key!r}] holds {type(value).__name__}; give the RunResult of fewshot.train_setfit (its first "
           "item), or a list of them for several seeds")
    return runs


@check.exercise(title="Do more pairs help? An experiment", tier="stretch",
                hint="Train SetFit on the same `few` examples with two or more numbers of pair iterations, e.g. "
                     "`{i: fewshot.train_setfit(cfg, few, test, iterations=i, seed=0)[0] for i in (1, 20)}`, "
                     "then compare `run.metrics['accuracy']`. One seed is one draw: a difference smaller than the "
                     "curve's spread over seeds says little.")
def q3(my_runs):
    """my_runs = {iterations: RunResult or [RunResult, ...]} from fewshot.train_setfit on the same K examples."""
    expect(isinstance(my_runs, dict), f"my_runs is {type(my_runs).__name__}; give a dict {{iterations: RunResult}}")
    expect(len(my_runs) >= 2, f"my_runs has {_plural(len(my_runs), 'entry', 'entries')}; compare at least two numbers "
                              "of iterations")
    sentences, lines = set(), []
    for iterations, value in sorted(my_runs.items(), key=lambda kv: str(kv[0])):
        expect(isinstance(iterations, Integral) and not isinstance(iterations, bool) and iterations >= 1,
               f"key {iterations!r}: the keys are the numbers of pair iterations (whole numbers >= 1)")
        accuracies = []
        for run in _runs(value, iterations):
            pairs = run.extra.get("pairs")
            expect(isinstance(pairs, Integral), f"my_runs[{iterations}]: {run.name!r} has no pair count; give the "
                                                "RunResult of fewshot.train_setfit")
            expect(pairs % (2 * iterations) == 0,
                   f"my_runs[{iterations}]: {run.name!r} trained on {pairs} pairs, which is not 2 · {iterations} · "
                   f"sentences: it was not trained with {_plural(iterations, 'iteration')}")
            sentences.add(pairs // (2 * iterations))
            accuracy = run.metrics.get("accuracy")
            expect(isinstance(accuracy, Real) and math.isfinite(accuracy) and 0 <= accuracy <= 1,
                   f"my_runs[{iterations}]: {run.name!r} has accuracy {accuracy!r}; expected a number in 0..1")
            accuracies.append(accuracy)
        lines.append(f"{_plural(iterations, 'iteration')}: {sum(accuracies) / len(accuracies):.3f} over "
                     f"{_plural(len(accuracies), 'run')}")
    expect(len(sentences) == 1, f"the runs' pair counts fit their keys only with different numbers of sentences "
                                f"({', '.join(map(str, sorted(sentences)))}): train each run with the iterations of its "
                                "key, on the same K examples")
    return "; ".join(lines)
