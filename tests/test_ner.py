import pytest

from ftkit import models, ner

LABELS = ner.label_list(["PER", "LOC"])
L2I = {l: i for i, l in enumerate(LABELS)}
I2L = dict(enumerate(LABELS))


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("encoder")


def test_label_list_order():
    assert LABELS == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_spans_of_new_york_and_two_adjacent_entities():
    assert ner.spans(["O", "B-LOC", "I-LOC", "O"]) == [("LOC", 1, 3)]
    # two people next to each other: only IOB2's B- tells them apart
    assert ner.spans(["B-PER", "B-PER", "I-PER"]) == [("PER", 0, 1), ("PER", 1, 3)]


def test_iob1_iob2_round_trip():
    iob1 = ["I-PER", "B-PER", "I-PER", "O", "I-LOC", "I-LOC"]
    iob2 = ner.iob1_to_iob2(iob1)
    assert iob2 == ["B-PER", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    assert ner.iob2_to_iob1(iob2) == iob1


@pytest.mark.parametrize("tags, message", [
    (["B-PER"], "invalid IOB1 at position 0: 'B-PER' does not follow an entity of type PER"),
    (["I-LOC", "B-PER"], "position 1"),
    (["X-PER"], "is not O, B-TYPE or I-TYPE"),
])
def test_iob1_validator_errors(tags, message):
    with pytest.raises(ValueError, match=message):
        ner.iob1_to_iob2(tags)


def test_iob2_to_iob1_rejects_invalid_iob2():
    with pytest.raises(ValueError, match="invalid IOB2 at position 1"):
        ner.iob2_to_iob1(["O", "I-PER"])


def test_align_first_and_all(tok):
    words, tags = ["Kilimanjaro", "rises"], ["B-LOC", "O"]
    enc = tok(words, is_split_into_words=True)
    word_ids = enc.word_ids()
    pieces = sum(1 for w in word_ids if w == 0)
    assert pieces > 1, "the test needs a word that splits into sub-tokens"
    first = ner.align_labels(word_ids, tags, L2I, "first")
    every = ner.align_labels(word_ids, tags, L2I, "all")
    assert first[0] == every[0] == first[-1] == every[-1] == ner.IGNORE  # [CLS] and [SEP]
    assert first[1:1 + pieces] == [L2I["B-LOC"]] + [ner.IGNORE] * (pieces - 1)
    assert every[1:1 + pieces] == [L2I["B-LOC"]] + [L2I["I-LOC"]] * (pieces - 1)
    assert first[1 + pieces] == every[1 + pieces] == L2I["O"]
    with pytest.raises(ValueError, match="mode must be 'first' or 'all'"):
        ner.align_labels(word_ids, tags, L2I, "last")


@pytest.mark.parametrize("mode", ["first", "all"])
def test_round_trip_from_token_labels_back_to_words(tok, mode):
    words = ["Barack", "Obama", "visited", "Ouagadougou", "and", "New", "York"]
    tags = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-LOC", "I-LOC"]
    enc = tok(words, is_split_into_words=True)
    labels = ner.align_labels(enc.word_ids(), tags, L2I, mode)
    as_predictions = [l if l != ner.IGNORE else 0 for l in labels]  # a perfect model's argmax
    assert ner.word_tags(as_predictions, enc.word_ids(), I2L, len(words)) == tags
    assert ner.spans(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 5, 7)]


def test_unknown_tag_in_data_is_a_clear_error(tok):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict({"train": Dataset.from_dict({"tokens": [["Paris"]], "tags": [["B-GPE"]]})})
    with pytest.raises(ValueError, match=r"tags \['B-GPE'\] are not in the label list"):
        ner.tokenize_and_align(ds, tok, L2I)


def test_alignment_table_shows_ignored_tokens(tok):
    table = ner.alignment_table(["New", "York"], ["B-LOC", "I-LOC"], tok, LABELS)
    assert list(table["label"]) == ["(ignored)", "B-LOC", "I-LOC", "(ignored)"]
    assert list(table.columns) == ["token", "word_id", "word", "label id", "label"]


def test_error_kinds_and_confusion():
    gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-PER", "O", "B-LOC"]]
    pred = [["B-PER", "I-PER", "O", "B-PER", "O", "B-PER", "I-PER", "O"]]
    kinds = ner.error_kinds(gold, pred)
    assert kinds == {"correct": 1, "wrong type": 1, "wrong boundary": 1, "missed": 1, "spurious": 0}
    conf = ner.type_confusion(gold, pred, ["PER", "LOC"])
    assert conf.loc["LOC", "PER"] == 1 and conf.loc["LOC", "missed"] == 1 and conf.loc["PER", "PER"] == 2


def test_highlight_html_marks_entities_and_escapes():
    out = ner.highlight_html(["<b>", "New", "York"], ["O", "B-LOC", "I-LOC"])
    assert "&lt;b&gt;" in out and "New York <sub" in out and "LOC</sub>" in out


def test_the_training_panel_trains_at_the_main_runs_learning_rate(cfg, monkeypatch):
    """Like with like: a panel row differs from the main run only in the knobs moved, never in the lr."""
    from ftkit.results import ResultsTable
    from ftkit.train import RunResult

    seen = []

    def fake_train_tagger(cfg, encoded, tokenizer, label_names, n_frozen, epochs, learning_rate=None, name=None):
        seen.append((n_frozen, epochs, learning_rate))
        return RunResult(name, {"overall_f1": 0.5}, 1, 1, 0.0, 0.0, model=object()), None

    monkeypatch.setattr(ner, "train_tagger", fake_train_tagger)
    table = ResultsTable()
    panel = ner.training_panel(cfg, None, None, ["O"], table, depth=6, learning_rate=1e-4, epochs=4)
    assert panel.controls["epochs"].value == 4.0
    kept = panel.click(n_frozen=2, epochs=4.0)
    assert seen == [(2, 4.0, 1e-4)] and "lr 0.0001" in table.to_pandas()["setup"][0]
    assert kept.model is None and kept.metrics["overall_f1"] == 0.5      # a click keeps numbers, not a model
