"""Exercises of session 03 (course/03_mlm_domain_adaptation.ipynb).

q1 (warm-up): which word each word piece belongs to, from the tokenizer's character offsets.
q2 (core): the whole-word mask of a sentence from its word ids (every piece of a chosen word hidden together, words
chosen at the requested rate, special tokens never).
q3 (stretch): the learner's own measurement of how easy token masking makes the pieces of split words.

Fixtures are real WordPiece output of the course tokenizer (offsets of "Hypothyroidism, or an underactive thyroid
(TSH high)." and of a sentence pair), typed in here so that a check loads no tokenizer.
"""
from __future__ import annotations

import random

from ..mlm import word_ids
from .core import Session, call, expect

check = Session("03_mlm_domain_adaptation")

# (piece, (start, end), special) as the course tokenizer gives them
HYPO = [("[CLS]", (0, 0), 1), ("h", (0, 1), 0), ("##yp", (1, 3), 0), ("##oth", (3, 6), 0), ("##yr", (6, 8), 0),
        ("##oid", (8, 11), 0), ("##ism", (11, 14), 0), (",", (14, 15), 0), ("or", (16, 18), 0), ("an", (19, 21), 0),
        ("under", (22, 27), 0), ("##active", (27, 33), 0), ("thyroid", (34, 41), 0), ("(", (42, 43), 0),
        ("ts", (43, 45), 0), ("##h", (45, 46), 0), ("high", (47, 51), 0), (")", (51, 52), 0), (".", (52, 53), 0),
        ("[SEP]", (0, 0), 1), ("[PAD]", (0, 0), 1), ("[PAD]", (0, 0), 1)]
PAIR = [("[CLS]", (0, 0), 1), ("lev", (0, 3), 0), ("##oth", (3, 6), 0), ("##yr", (6, 8), 0), ("##ox", (8, 10), 0),
        ("##ine", (10, 13), 0), ("daily", (14, 19), 0), (".", (19, 20), 0), ("[SEP]", (0, 0), 1), ("it", (0, 2), 0),
        ("replaces", (3, 11), 0), ("thy", (12, 15), 0), ("##ro", (15, 17), 0), ("##xin", (17, 20), 0),
        ("##e", (20, 21), 0), (".", (21, 22), 0), ("[SEP]", (0, 0), 1)]


# the rule the course's collator uses (ftkit.mlm.word_ids) is the reference the learner's answer is checked against
reference_word_ids = word_ids


def _int_list(value, n: int, shown: str) -> list[int]:
    """`value` as a list of n ints (a list, tuple, NumPy array or tensor of integers)."""
    try:
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    except TypeError:
        items = None
    expect(items is not None, f"{shown} returned {type(value).__name__}; return a list with one word id per piece")
    expect(all(isinstance(v, int) or (hasattr(v, "is_integer") and float(v).is_integer()) for v in items)
           and not any(isinstance(v, bool) for v in items),
           f"{shown} returned {items[:6]}...: give each piece an integer word id (-1 for special tokens)")
    expect(len(items) == n, f"{shown} returned {len(items)} ids for {n} pieces: one id per piece, special tokens "
                            "included (they get -1)")
    return [int(v) for v in items]


def _word_ids_fixture(word_ids, fixture, name: str) -> None:
    pieces = [p for p, _, _ in fixture]
    offsets, special = [o for _, o, _ in fixture], [s for _, _, s in fixture]
    shown = f"word_ids(offsets, special) for {name}"
    got = _int_list(call(word_ids, [tuple(o) for o in offsets], list(special), shown=shown), len(fixture), shown)
    want = reference_word_ids(offsets, special)
    for i, (piece, g, w) in enumerate(zip(pieces, got, want)):
        if w == -1:
            expect(g == -1, f"{shown}: piece {i} {piece!r} is a special token, so it belongs to no word: give it -1 "
                            f"(you gave {g})")
        else:
            expect(g >= 0, f"{shown}: piece {i} {piece!r} is part of a word, yet got {g}; -1 is for special "
                           "tokens only, words are numbered from 0")
    for i in range(1, len(fixture)):
        if want[i] == -1 or want[i - 1] == -1:
            continue
        (prev, (_, prev_end), _), (piece, (start, _), _) = fixture[i - 1], fixture[i]
        if want[i] == want[i - 1]:
            expect(got[i] == got[i - 1], f"{shown}: {piece!r} starts at {start}, where {prev!r} ends: the two touch, "
                                         f"so they are one word and share an id (got {got[i - 1]} and {got[i]})"
                   + (". Punctuation that touches a word belongs to it, as the collator sees it"
                      if not piece.startswith("##") else ""))
        else:
            expect(got[i] != got[i - 1], f"{shown}: {piece!r} starts at {start}, after a space ({prev!r} ends at "
                                         f"{prev_end}): a new word starts there, with a new id (both got {got[i]})")
    after_special = [i for i in range(1, len(fixture)) if want[i] >= 0 and want[i - 1] == -1 and i > 1]
    for i in after_special:
        earlier = [j for j in range(i) if want[j] >= 0]
        expect(got[i] not in {got[j] for j in earlier},
               f"{shown}: {pieces[i]!r} follows {pieces[i - 1]!r}, a special token: it starts a new word even "
               f"though its offsets restart at {offsets[i][0]} (it got the id of an earlier word, {got[i]})")
    groups = {}
    for g, w in zip(got, want):
        if w >= 0:
            groups.setdefault(g, set()).add(w)
    joined = [g for g, words in groups.items() if len(words) > 1]
    expect(not joined, f"{shown}: id {joined[0] if joined else ''} is given to pieces of different words; every word "
                       "needs its own id (count up as you go)")
    _numbered_from_zero(got, want, pieces, shown)


def _numbered_from_zero(got: list[int], want: list[int], pieces: list[str], shown: str) -> None:
    """The exact ids: the words numbered 0, 1, 2, ... in order (the grouping is already right)."""
    if got == want:
        return
    i = next(i for i, (g, w) in enumerate(zip(got, want)) if g != w)
    first = want.index(0)
    expect(got[first] == 0, f"{shown}: the first word ({pieces[first]!r}, piece {first}) got id {got[first]}; words "
                            "are numbered from 0: the first word is 0, the next 1, and so on")
    expect(False, f"{shown}: piece {i} {pieces[i]!r} starts word {want[i]} but got id {got[i]}; number the words 0, 1, "
                  "2, ... in order, one more for each new word (ids so far: "
                  f"{got[:i + 1]})")


@check.exercise(title="Which word each piece belongs to", tier="warm-up",
                hint="Walk through the pieces with the end of the previous piece in hand. A special token gets -1 "
                     "and resets it; a piece whose start differs from the previous end (a space) starts the next "
                     "word (`current += 1`); otherwise it continues the word before it.")
def q1(word_ids):
    """word_ids(offsets, special) -> one word id per piece, -1 for special tokens, words numbered from 0."""
    _word_ids_fixture(word_ids, HYPO, '"[CLS] Hypothyroidism, or an underactive thyroid (TSH high). [SEP] [PAD] [PAD]"')
    _word_ids_fixture(word_ids, PAIR, 'the pair "[CLS] Levothyroxine daily. [SEP] It replaces thyroxine. [SEP]"')
    return "the comma stays with hypothyroidism, a space starts a word, special tokens are -1"


# --------------------------------------------------------------------------- q2: the whole-word mask
WORDS_OF = [reference_word_ids([o for _, o, _ in HYPO], [s for _, _, s in HYPO]),
            reference_word_ids([o for _, o, _ in PAIR], [s for _, _, s in PAIR])]


def _long_fixture(seed: int = 0) -> list[int]:
    """[CLS], 120 words of 1 to 5 pieces, [SEP], 3 padding: word ids as the collator numbers them."""
    rng = random.Random(seed)
    ids = [-1]
    for w in range(120):
        ids += [w] * rng.choice([1, 1, 1, 2, 3, 5])
    return ids + [-1] * 4


def _bool_list(value, n: int, shown: str) -> list[bool]:
    try:
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    except TypeError:
        items = None
    expect(items is not None, f"{shown} returned {type(value).__name__}; return a list with True or False per piece")
    expect(len(items) == n, f"{shown} returned {len(items)} values for {n} pieces: one True/False per piece, special "
                            "tokens included")
    expect(all(v in (0, 1) for v in items), f"{shown} returned {items[:6]}...: give each piece True (hidden) or "
                                            "False")
    return [bool(v) for v in items]


def _draw(whole_word_mask, ids, probability, seed, shown):
    return _bool_list(call(whole_word_mask, list(ids), probability, random.Random(seed), shown=shown), len(ids), shown)


@check.exercise(title="The whole-word mask", tier="core",
                hint="Give every word (every id >= 0) one draw, `rng.random() < probability`, and keep the chosen "
                     "ids in a set; then a piece is hidden exactly when its word id is in that set. Special tokens "
                     "(-1) are never chosen.")
def q2(whole_word_mask):
    """whole_word_mask(word_ids, probability, rng) -> a True/False per piece: the pieces to hide."""
    for ids in WORDS_OF:
        shown = f"whole_word_mask({ids[:9]}..., 0.5, rng)"
        for seed in range(60):
            mask = _draw(whole_word_mask, ids, 0.5, seed, shown)
            special = [i for i, w in enumerate(ids) if w == -1 and mask[i]]
            expect(not special, f"{shown} hid piece {special[0] if special else ''}, a special token (word id -1): "
                                "[CLS], [SEP] and padding are never masked")
            for w in set(ids) - {-1}:
                pieces = [m for i, m in zip(ids, mask) if i == w]
                expect(all(pieces) or not any(pieces),
                       f"{shown} hid {sum(pieces)} of the {len(pieces)} pieces of word {w}: a chosen word is hidden "
                       "whole, every piece of it, and an unchosen one not at all")

    long = _long_fixture()
    shown = "whole_word_mask(120 words of 1 to 5 pieces, p, rng)"
    again = [_draw(whole_word_mask, long, 0.3, 7, shown) for _ in range(2)]
    expect(again[0] == again[1], f"{shown}: two calls with random.Random(7) gave different masks. Draw with the `rng` "
                                 "you are given (`rng.random()`), so that a seed gives the same mask")
    expect(any(_draw(whole_word_mask, long, 0.3, s, shown) != again[0] for s in (8, 9)),
           f"{shown}: other seeds give the same mask; draw each word's choice from `rng`")
    first_piece = {}
    for i, w in enumerate(long):
        if w >= 0:
            first_piece.setdefault(w, (i, long.count(w) == 1))
    for probability in (0.15, 0.4):
        chosen = {True: [0, 0], False: [0, 0]}          # one-piece word? -> [chosen, words]
        for seed in range(40):
            mask = _draw(whole_word_mask, long, probability, 100 + seed, shown)
            for i, single in first_piece.values():
                chosen[single][0] += mask[i]
                chosen[single][1] += 1
        one, more = (chosen[k][0] / chosen[k][1] for k in (True, False))
        rate = (chosen[True][0] + chosen[False][0]) / (chosen[True][1] + chosen[False][1])
        expect(not (more > probability + 0.06 and abs(one - probability) <= 0.05),
               f"with p = {probability}, words of one piece were chosen {one:.0%} of the time but longer words "
               f"{more:.0%}: you gave every piece a draw, so a word of five pieces gets five chances. Give each "
               "word one draw")
        expect(abs(rate - probability) <= 0.04,
               f"with p = {probability}, {rate:.1%} of the words were chosen over 40 masks of 120 words; each word "
               f"should be chosen with probability p (within a few points)")
    return "whole words hidden at the rate you asked, special tokens never"


# --------------------------------------------------------------------------- q3: an experiment of your own
def reference_split_word_top1(examples, predictions) -> dict:
    right = pieces = 0
    for e, predicted in zip(examples, predictions):
        words, labels = e["words"].tolist(), e["labels"].tolist()
        size = {w: words.count(w) for w in set(words) if w >= 0}
        for w, label, guess in zip(words, labels, predicted.tolist()):
            if label != -100 and w >= 0 and size[w] > 1:
                pieces += 1
                right += guess == label
    return {"top1": right / pieces if pieces else float("nan"), "pieces": pieces}


def _split_by_hidden_pieces(examples) -> int:
    """The likely mistake: a word counted as split only when two or more of its pieces are hidden."""
    n = 0
    for e in examples:
        hidden = [w for w, label in zip(e["words"].tolist(), e["labels"].tolist()) if label != -100 and w >= 0]
        n += sum(1 for w in hidden if hidden.count(w) > 1)
    return n


def _split_fixture():
    """Two sentences, 10 hidden pieces: 3 one-piece words (guessed right) and 7 pieces of split words (4 right), one
    of them the only hidden piece of its three-piece word (the rest visible, as token masking leaves it)."""
    import torch

    words = [[-1, 0, 0, 0, 1, 2, 2, 3, -1, -1], [-1, 0, 1, 1, 1, 1, 2, -1]]
    labels = [[-100, 11, -100, -100, 14, 15, 16, -100, -100, -100], [-100, 21, 22, 23, 24, 25, 26, -100]]
    guess = [[0, 11, 5, 5, 14, 15, 99, 17, 0, 0], [0, 21, 22, 23, 99, 99, 26, 0]]
    examples = [{"input_ids": torch.full((len(w),), 103), "words": torch.tensor(w), "labels": torch.tensor(l)}
                for w, l in zip(words, labels)]
    return examples, [torch.tensor(g) for g in guess]


@check.exercise(title="How easy a split word is when its other pieces show", tier="stretch",
                hint="For each example, count how many pieces each word id has (`words.tolist().count(w)`); keep the "
                     "hidden positions (`labels != -100`) whose word has two or more pieces, and compare the "
                     "prediction with the label there. Return {'top1': right / pieces, 'pieces': pieces}.")
def q3(split_word_top1):
    """split_word_top1(examples, predictions) -> {"top1": share right, "pieces": hidden pieces of split words}."""
    examples, predictions = _split_fixture()
    shown = "split_word_top1(two sentences, their predictions)"
    got = call(split_word_top1, examples, predictions, shown=shown)
    expect(isinstance(got, dict) and {"top1", "pieces"} <= set(got),
           f"{shown} returned {type(got).__name__}; return a dict with 'top1' and 'pieces'")
    want = reference_split_word_top1(examples, predictions)
    every_hidden = sum(int((e["labels"] != -100).sum()) for e in examples)
    expect(got["pieces"] != every_hidden,
           f"{shown} counted {every_hidden} pieces, every hidden piece: count only the pieces of words that have two "
           "or more pieces (a one-piece word has no other piece to copy from)")
    expect(got["pieces"] != _split_by_hidden_pieces(examples),
           f"{shown} counted {got['pieces']} pieces and missed the first word of the first sentence: it has three "
           "pieces, of which only one is hidden. A word is split when it has two or more pieces in the sentence, "
           "hidden or not: that is token masking's easy case")
    expect(got["pieces"] == want["pieces"], f"{shown} counted {got['pieces']} pieces; the two sentences hide "
                                            f"{want['pieces']} pieces of split words")
    top1 = got["top1"]
    expect(isinstance(top1, (int, float)) or hasattr(top1, "item"), f"{shown} returned top1 = {top1!r}; give a number")
    expect(abs(float(top1) - want["top1"]) < 1e-6,
           f"{shown} gave top-1 {float(top1):.3f}; {want['top1']:.3f} of those pieces were predicted right "
           "(compare the prediction with the label at each of them)")
    return "pieces of split words only, hidden or not"
