"""Exercises of session 04 (course/04_ner_bio_tags.ipynb): IOB2 tags by hand, the labels of one sentence's word
pieces, and an experiment of the learner's own with the tagger."""
from __future__ import annotations

import math
from numbers import Integral

from .core import Session, call, expect

check = Session("04_ner_bio_tags")

# --------------------------------------------------------------------------- q1: IOB2 by hand
BANK = ["the", "Bank", "of", "England", "raised", "rates"]
TWO_PEOPLE = ["she", "gave", "Mary", "Anne", "a", "book"]       # Mary and Anne are two people


def _entities(tags, sentence: str):
    """The spans of the learner's tags for one sentence, or a failed check that says what is not IOB2."""
    from ..data import validate_iob2
    from ..ner import spans

    try:
        validate_iob2(tags)
    except ValueError as err:
        stray = next((t for i, t in enumerate(tags) if isinstance(t, str) and t.startswith("I-")
                      and (i == 0 or tags[i - 1][2:] != t[2:])), None)
        expect(stray is None, f"{sentence}: {stray!r} starts an entity; in IOB2 every entity starts with B- (an "
                              f"entity that starts with I- is IOB1). The checker said: {err}")
        expect(False, f"{sentence}: not valid IOB2 ({err}); use 'O', 'B-TYPE' or 'I-TYPE'")
    return spans(tags)


@check.exercise(title="Tag two sentences in IOB2", tier="warm-up",
                hint="One tag per word. An entity's first word gets B-TYPE, each further word of the same entity "
                     "I-TYPE, every other word O. A name of several words is one entity, whatever words it "
                     "contains; two people side by side are two entities, each starting with B-.")
def q1(my_tags):
    """my_tags: [tags of BANK, tags of TWO_PEOPLE], one IOB2 tag per word."""
    expect(isinstance(my_tags, (list, tuple)) and len(my_tags) == 2,
           f"give a list of two tag lists, one per sentence; got {type(my_tags).__name__}"
           + (f" of length {len(my_tags)}" if isinstance(my_tags, (list, tuple)) else ""))
    for words, tags in zip((BANK, TWO_PEOPLE), my_tags):
        sentence = f"'{' '.join(words)}'"
        expect(isinstance(tags, (list, tuple)) and all(isinstance(t, str) for t in tags),
               f"{sentence}: give its tags as a list of strings such as 'B-ORG'")
        expect(len(tags) == len(words), f"{sentence} has {len(words)} words, and you gave {len(tags)} tags: one tag "
                                        f"per word, 'O' included")
    bank, people = _entities(list(my_tags[0]), "the Bank sentence"), _entities(list(my_tags[1]), "the Mary Anne "
                                                                                                   "sentence")
    expect(bank, "the Bank sentence: you tagged no entity; 'Bank of England' is the name of an organisation")
    expect(len(bank) == 1, f"the Bank sentence: your tags give {len(bank)} entities {bank}; 'Bank of England' is one "
                           "name, so one entity: B- on its first word, I- on each of the others ('of' too)")
    kind, start, end = bank[0]
    expect((start, end) == (1, 4), f"the Bank sentence: your entity covers words {start}-{end - 1} "
                                   f"({' '.join(BANK[start:end])!r}); it should be exactly 'Bank of England'")
    expect(kind == "ORG", f"the Bank sentence: 'Bank of England' is an organisation, type ORG, not {kind}")
    expect(people != [("PER", 2, 4)], "the Mary Anne sentence: B-PER I-PER reads as one person called Mary Anne; "
                                      "two people side by side need two entities, each starting with B-PER")
    expect(people == [("PER", 2, 3), ("PER", 3, 4)],
           f"the Mary Anne sentence: your tags give {people}; Mary and Anne are two people, (PER, 2, 3) and "
           "(PER, 3, 4)")
    return "one ORG of three words (B-ORG I-ORG I-ORG), and two people side by side (B-PER B-PER)"


# --------------------------------------------------------------------------- q2: the labels of word pieces
IGNORE = -100
LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "kil", "##iman", "##jar", "##o", "is", "in", "tan", "##zan", "##ia",
         ".", "ada", "love", "##lace", "visited", "ou", "##aga", "##dou", "##gou", "the", "bank", "of", "england",
         "new", "york", "un", "##es", "##co"]


def tiny_wordpiece():
    """A BERT-style WordPiece tokenizer over a 31-piece vocabulary, built in memory (lower-cases, adds [CLS] and
    [SEP]): "Kilimanjaro" -> kil ##iman ##jar ##o. Fresh on every call."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]")


def _expected_labels(word_ids, tags, label2id, mode):
    """The rule, written out for the check (the same rule as ftkit.ner.align_labels)."""
    out, previous = [], None
    for word in word_ids:
        if word is None:
            out.append(IGNORE)
        elif word != previous:
            out.append(label2id[tags[word]])
        elif mode == "first":
            out.append(IGNORE)
        else:
            tag = tags[word]
            out.append(label2id["I-" + tag[2:] if tag.startswith("B-") else tag])
        previous = word
    return out


def _cases():
    """(what, word_ids, tags): hand-written piece layouts, then real ones from a tokenizer (one cut by truncation)."""
    cases = [("a hand-written sentence", [None, 0, 0, 0, 1, 2, 3, 3, None], ["B-LOC", "O", "O", "B-LOC"]),
             ("a person whose second name splits", [None, 0, 1, 1, 1, 2, None], ["B-PER", "I-PER", "O"]),
             ("an O word that splits", [None, 0, 0, 1, None], ["O", "B-ORG"])]
    tokenizer = tiny_wordpiece()
    for words, tags, max_length in (
            (["Kilimanjaro", "is", "in", "Tanzania", "."], ["B-LOC", "O", "O", "B-LOC", "O"], None),
            (["Ada", "Lovelace", "visited", "the", "Bank", "of", "England"],
             ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG"], None),
            (["UNESCO", "is", "in", "Ouagadougou"], ["B-ORG", "O", "O", "B-LOC"], 8)):
        enc = tokenizer(words, is_split_into_words=True, truncation=max_length is not None, max_length=max_length)
        shown = " ".join(tokenizer.convert_ids_to_tokens(enc["input_ids"]))
        cases.append((f"the tokenizer's pieces {shown}", enc.word_ids(), tags))
    return cases


def _describe(labels, id2label):
    return [id2label.get(l, "-100") if l != IGNORE else -100 for l in labels]


@check.exercise(title="The labels of one sentence's word pieces", tier="core",
                hint="Walk through `word_ids` with the previous word id in hand. None (a special token) -> -100. A "
                     "word id different from the previous one is a word's first piece: its word's label id. "
                     "Otherwise it is a continuation piece: -100 with mode='first'; with mode='all' the word's tag, "
                     "with B-X turned into I-X (I-X and O stay as they are).")
def q2(align):
    """align(word_ids, word_tags, label2id, mode) -> one label id per piece."""
    label2id = {t: i for i, t in enumerate(LABELS)}
    id2label = {i: t for t, i in label2id.items()}
    for what, word_ids, tags in _cases():
        for mode in ("first", "all"):
            shown = f"align({word_ids}, {tags}, label2id, mode={mode!r})"
            got = call(align, list(word_ids), list(tags), dict(label2id), mode, shown=shown)
            want = _expected_labels(word_ids, tags, label2id, mode)
            expect(isinstance(got, (list, tuple)), f"{shown} returned {type(got).__name__}; return a list of ints")
            got = list(got)
            expect(all(isinstance(l, Integral) and not isinstance(l, bool) for l in got),
                   f"{shown} returned {got[:6]}...: return label ids (ints from label2id, -100 to ignore), not tags")
            expect(len(got) == len(word_ids), f"on {what}: {len(word_ids)} pieces but {len(got)} labels; give every "
                                              f"piece a label, -100 for the ones the loss must skip")
            specials = [i for i, w in enumerate(word_ids) if w is None]
            expect(all(got[i] == IGNORE for i in specials),
                   f"on {what}: a special token ([CLS], [SEP]: word id None) got a label; it belongs to no word, "
                   f"so give it -100")
            for i, (g, w) in enumerate(zip(got, want)):
                if g == w:
                    continue
                first_piece = word_ids[i] is not None and (i == 0 or word_ids[i - 1] != word_ids[i])
                where = f"on {what}, mode={mode!r}, piece {i} (word {word_ids[i]}, tag {tags[word_ids[i]]})"
                expect(not first_piece, f"{where}: a word's first piece carries the word's own label, "
                                        f"{tags[word_ids[i]]} (id {w}); you gave {_describe([g], id2label)[0]}")
                expect(not (mode == "first" and g != IGNORE),
                       f"{where}: with mode='first' only a word's first piece is trained; its other pieces get -100")
                expect(not (mode == "all" and g == IGNORE),
                       f"{where}: with mode='all' every piece of a word is labelled; -100 is only for special tokens")
                expect(not (mode == "all" and id2label.get(g, "").startswith("B-")),
                       f"{where}: a continuation piece labelled {id2label.get(g)} would start a second entity in the "
                       f"middle of the word; turn B-X into I-X after the first piece")
                expect(False, f"{where}: expected {_describe([w], id2label)[0]}, got {_describe([g], id2label)[0]} "
                              f"(all labels: expected {_describe(want, id2label)}, got {_describe(got, id2label)})")
    # a tag the model has no label for: silently labelled, the loss would learn something else
    shown = "align([None, 0, None], ['B-GPE'], label2id, 'first')"
    try:
        returned = align([None, 0, None], ["B-GPE"], dict(label2id), "first")
    except ValueError as err:  # the task asks for a ValueError that names the tag; its wording is the learner's
        expect("B-GPE" in str(err), f"{shown} raised ValueError({str(err)!r}); name the tag in the message "
                                    "('B-GPE'), so that the reader knows which tag the model has no label for")
    except Exception as err:  # noqa: BLE001 (the learner's error, reported)
        expect(False, f"{shown} raised {type(err).__name__}: {err}; 'B-GPE' is not in label2id: check the tag "
                      "yourself and raise a ValueError that names it")
    else:
        expect(False, f"{shown} returned {returned}; 'B-GPE' is not in label2id, so raise a ValueError naming the "
                      "tag instead of returning labels")
    return "special tokens -100; first pieces labelled; continuation pieces -100 ('first') or I- ('all')"


# --------------------------------------------------------------------------- q3: an experiment of your own
def _scores(run, i):
    from ..train import RunResult

    expect(not (isinstance(run, tuple) and any(isinstance(x, RunResult) for x in run)),
           f"run {i} is a tuple: ner.train_tagger returns (result, model); keep the result, e.g. "
           "`my_run = ner.train_tagger(...)[0]`")
    expect(isinstance(run, RunResult), f"run {i} is {type(run).__name__}; give the RunResult of a training run "
                                       "(ner.train_tagger's first value, or what the panel's click returns)")
    expect(run.steps > 0 and run.seconds > 0, f"run {i} ({run.name!r}) took no training step")
    missing = [k for k in ("overall_f1", "overall_precision", "overall_recall") if k not in run.metrics]
    expect(not missing, f"run {i} ({run.name!r}) has no {', '.join(missing)}: train it with a test split so that "
                        "it is scored (encoded['test'])")
    p, r, f1 = (run.metrics[k] for k in ("overall_precision", "overall_recall", "overall_f1"))
    expect(all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in (p, r, f1)),
           f"run {i} ({run.name!r}): precision, recall and F1 must be between 0 and 1, got {p}, {r}, {f1}")
    harmonic = 0.0 if p + r == 0 else 2 * p * r / (p + r)
    expect(math.isclose(f1, harmonic, abs_tol=1e-6),
           f"run {i} ({run.name!r}): F1 {f1:.4f} is not the harmonic mean of its precision {p:.4f} and recall "
           f"{r:.4f} ({harmonic:.4f}); report the numbers the run computed, unchanged")
    return f1


@check.exercise(title="An experiment of your own", tier="stretch",
                hint="Copy the main run's call `ner.train_tagger(cfg, encoded, tokenizer, label_names, ...)` and change "
                     "one thing: fewer training sentences (`encoded['train'].select(range(n))` in a DatasetDict with "
                     "the same 'test' split), more or fewer epochs, frozen blocks, or the learning rate. Then "
                     "`my_runs = [result, my_run]`.")
def q3(my_runs):
    """my_runs: [the run you compare with (the main run), your run, ...], RunResults of the tagger."""
    expect(isinstance(my_runs, (list, tuple)) and len(my_runs) >= 2,
           "give a list of at least two runs: the one you compare with (the main run, `result`), then yours")
    f1s = [_scores(run, i) for i, run in enumerate(my_runs)]
    base, mine = my_runs[0], my_runs[-1]
    expect(mine is not base, "your run is the main run itself: train a run of your own and put it second")
    same = (base.steps, base.trainable_params, base.metrics) == (mine.steps, mine.trainable_params, mine.metrics)
    expect(not same, "the two runs have the same steps, trainable parameters and test scores: change one setting "
                     "between them")
    return (f"entity F1 {f1s[0]:.3f} -> {f1s[-1]:.3f} ({f1s[-1] - f1s[0]:+.3f}); {base.steps} -> {mine.steps} steps, "
            f"{base.seconds:.0f} s -> {mine.seconds:.0f} s")
