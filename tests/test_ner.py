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
    with pytest.raises(ValueError, match="found 2 words but there are 1 tags"):
        ner.align_labels(word_ids, tags[:1], L2I, "first")


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
    with pytest.raises(ValueError, match=r"tag 'B-GPE' in split 'train' \(row 0\) is not in the model's tag set"):
        ner.tokenize_and_align(ds, tok, L2I)
    with pytest.raises(ValueError, match=r"tag 'B-GPE' is not in the label set"):
        ner.align_labels([None, 0, None], ["B-GPE"], L2I)


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


def test_a_tag_only_in_the_test_split_names_the_tag_the_split_and_the_tag_set(tok):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict({"train": Dataset.from_dict({"tokens": [["Ada", "Lovelace"]], "tags": [["B-PER", "I-PER"]]}),
                      "test": Dataset.from_dict({"tokens": [["Paris", "wins"], ["Acme", "Corp"]],
                                                 "tags": [["B-LOC", "O"], ["B-ORG", "I-ORG"]]})})
    with pytest.raises(ValueError, match=r"tag 'B-ORG' in split 'test' \(row 1\) is not in the model's tag set "
                                         r"\['O', 'B-PER', 'I-PER', 'B-LOC', 'I-LOC'\]"):
        ner.tokenize_and_align(ds, tok, L2I)
    ds["test"] = Dataset.from_dict({"tokens": [["Paris", "wins"]], "tags": [["B-LOC"]]})
    with pytest.raises(ValueError, match=r"split 'test' row 0: 2 words but 1 tags"):
        ner.tokenize_and_align(ds, tok, L2I)


def scores(gold_rows, pred_rows, labels=("O", "B-PHONE", "I-PHONE")):
    """seqeval_metrics on label-id rows (-100 = not scored), as the Trainer calls it, with one-hot logits."""
    import numpy as np

    id2label, label2id = dict(enumerate(labels)), {l: i for i, l in enumerate(labels)}
    gold = np.array([[label2id.get(t, ner.IGNORE) for t in row] for row in gold_rows])
    logits = np.zeros(gold.shape + (len(labels),))
    for i, row in enumerate(pred_rows):
        for j, t in enumerate(row):
            logits[i, j, label2id[t]] = 1.0
    return ner.seqeval_metrics(id2label)((logits, gold))


def test_iob2_data_are_scored_as_iob2():
    """A predicted I-PHONE I-PHONE is no entity in IOB2 (validate_iob2 rejects it): F1 0, not CoNLL-style 1.0."""
    wrong = scores([["B-PHONE", "I-PHONE"]], [["I-PHONE", "I-PHONE"]])
    assert wrong["overall_f1"] == 0.0 and wrong["overall_recall"] == 0.0 and wrong["overall_accuracy"] == 0.5
    assert scores([["B-PHONE", "I-PHONE"]], [["B-PHONE", "I-PHONE"]])["overall_f1"] == 1.0
    # error analysis counts entities the same way: the stray I- run is no entity, so the gold one is missed
    assert ner.error_kinds([["B-PHONE", "I-PHONE"]], [["I-PHONE", "I-PHONE"]]) == {"missed": 1, "spurious": 0}
    assert ner.spans(["I-PHONE", "I-PHONE", "O", "B-PHONE"], strict=True) == [("PHONE", 3, 4)]
    assert ner.spans(["I-PHONE", "I-PHONE"]) == [("PHONE", 0, 2)]        # shown as the model said it
    with pytest.raises(ValueError, match="no labelled word"):
        scores([["x", "x"]], [["O", "O"]])
    with pytest.raises(ValueError, match="no entity"):               # was F1 0.0 over zero gold entities
        scores([["O", "O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="iob1_to_iob2"):            # IOB1 gold: strict IOB2 finds no entity in it
        scores([["I-PHONE", "I-PHONE"]], [["I-PHONE", "I-PHONE"]])
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted tags"):
        ner.error_kinds([["B-PHONE", "I-PHONE"]], [["O"]])


@pytest.mark.parametrize("mode", ["first", "all"])
def test_both_alignment_modes_are_scored_per_word(tok, mode):
    """A sentence whose first pieces are all predicted right is word-level F1 1.0 in both modes: evaluation splits
    are labelled at each word's first piece, whatever the mode the training split is aligned with."""
    import numpy as np
    from datasets import Dataset, DatasetDict

    words = ["Ouagadougou", "welcomed", "Kilimanjaro", "Ntaganda", "and", "Washington"]
    tags = ["B-LOC", "O", "B-LOC", "B-PER", "O", "B-LOC"]
    sentence = Dataset.from_dict({"tokens": [words], "tags": [tags]})
    encoded = ner.tokenize_and_align(DatasetDict({"train": sentence, "test": sentence}), tok, L2I, mode=mode)
    word_ids = tok(words, is_split_into_words=True).word_ids()
    assert len(word_ids) > len(words) + 4, "the test needs words that split into pieces"
    train_labels, test_labels = encoded["train"]["labels"][0], encoded["test"]["labels"][0]
    assert test_labels == ner.align_labels(word_ids, tags, L2I, "first")
    assert train_labels == ner.align_labels(word_ids, tags, L2I, mode)   # the mode still decides what is trained
    predicted = [l if l != ner.IGNORE else L2I["O"] for l in test_labels]   # first pieces right, other pieces "O"
    logits = np.eye(len(LABELS))[predicted][None]
    result = ner.seqeval_metrics(I2L)((logits, np.array([test_labels])))
    assert result["overall_f1"] == 1.0 and result["overall_accuracy"] == 1.0


def test_the_tagger_refuses_labels_that_do_not_fit_its_label_names(cfg):
    from datasets import Dataset, DatasetDict

    split = Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[-100, 4]]})
    encoded = DatasetDict({"train": split, "test": split})
    with pytest.raises(ValueError, match=r"split 'train' holds label id 4, but label_names has 3 labels"):
        ner.train_tagger(cfg, encoded, None, ["O", "B-PER", "I-PER"])


def test_the_tagger_box_tags_a_typed_sentence(cfg, tok):
    """What a learner does with the box in section 5 (a test here, not a click in the notebook's Run All)."""
    names = ner.label_list(["PER", "LOC", "ORG", "MISC"])
    model = models.load_token_classifier(names, cfg)
    typed = ner.tagger_panel(model, tok, ["PER", "LOC", "ORG", "MISC"]).click(
        sentence="Barack Obama visited the United Nations in New York.")
    assert [w for w, _ in typed] == ["Barack", "Obama", "visited", "the", "United", "Nations", "in", "New", "York", "."]
    assert all(tag in names for _, tag in typed)
    with pytest.raises(ValueError, match="at least one word"):
        ner.split_words("  ")


def tiny_ner_splits(n_train=32):
    from datasets import Dataset, DatasetDict

    rows = {"tokens": [["Ada", "Lovelace", "visited", "Paris", "."], ["Kilimanjaro", "is", "in", "Tanzania"]],
            "tags": [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-LOC", "O", "O", "B-LOC"]]}
    part = lambda n: Dataset.from_dict({k: (v * n)[:n] for k, v in rows.items()})  # noqa: E731
    return DatasetDict({"train": part(n_train), "validation": part(4), "test": part(4)})


def test_the_main_run_scores_the_validation_split_after_every_epoch(cfg, tok):
    """Section 4's F1 by epoch: one validation score per epoch, while the test split is scored once, at the end."""
    encoded = ner.tokenize_and_align(tiny_ner_splits(), tok, L2I, max_length=32)
    result, _ = ner.train_tagger(cfg, encoded, tok, LABELS, validate=True)     # smoke: 8 steps of 16 = 4 epochs
    assert result.steps == 8
    assert [round(h["epoch"]) for h in result.eval_history] == [1, 2, 3, 4]
    assert all(0 <= h["overall_f1"] <= 1 and "overall_accuracy" in h for h in result.eval_history)
    assert "overall_f1" in result.metrics and "loss" in result.metrics          # the test split, after training
    del encoded["validation"]
    with pytest.raises(ValueError, match="validate=True scores the 'validation' split"):
        ner.train_tagger(cfg, encoded, tok, LABELS, validate=True)


def test_a_label_id_missing_from_id2label_names_the_id_the_valid_ids_and_the_fix():
    import numpy as np

    gold = np.array([[0, 1, 9, ner.IGNORE]])               # 9: made with another label set
    logits = np.eye(len(LABELS))[[[0, 1, 2, 0]]]
    with pytest.raises(ValueError, match=r"gold label id 9 is not in id2label \(valid ids: \[0, 1, 2, 3, 4\].*"
                                         r"tokenize with label2id"):
        ner.seqeval_metrics(I2L)((logits, gold))
    wide = np.zeros((1, 4, len(LABELS) + 2))
    wide[0, :, len(LABELS) + 1] = 1.0                      # a head with more outputs than id2label has labels
    with pytest.raises(ValueError, match=r"predicted label id 6 is not in id2label .*model.config.id2label"):
        ner.seqeval_metrics(I2L)((wide, np.array([[1, 2, 0, 0]])))
    with pytest.raises(ValueError, match=r"predicted label id 7 is not in id2label"):
        ner.word_tags([0, 7], [0, 1], I2L, 2)
    # config.json's digit-string keys and a plain label list read the same as model.config.id2label
    string_keys = {str(i): l for i, l in I2L.items()}
    assert ner.seqeval_metrics(string_keys)((np.eye(5)[[[1, 2, 0]]], np.array([[1, 2, 0]])))["overall_f1"] == 1.0
    assert ner.word_tags([1, 2], [0, 1], LABELS, 2) == ["B-PER", "I-PER"]


def test_integer_tag_ids_are_refused_with_the_classlabel_conversion(tok):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict({"train": Dataset.from_dict({"tokens": [["Ada", "Lovelace"]], "tags": [[1, 2]]})})
    with pytest.raises(ValueError, match=r"split 'train' row 0 'tags': the tags are integer ids \(\[1, 2\]\).*"
                                         r"names such as 'B-PER'.*int2str"):
        ner.tokenize_and_align(ds, tok, L2I)
    with pytest.raises(ValueError, match="integer ids.*int2str"):
        ner.align_labels([None, 0, 1, None], [1, 2], L2I)
    with pytest.raises(ValueError, match="integer ids"):
        ner.spans([1, 2, 0])


def test_words_given_as_one_string_are_refused_not_counted_letter_by_letter(tok):
    from datasets import Dataset, DatasetDict

    ds = DatasetDict({"train": Dataset.from_dict({"tokens": ["Ada Lovelace"], "tags": [["B-PER", "I-PER"]]})})
    with pytest.raises(ValueError, match=r"split 'train' row 0 'tokens': the words are one string \('Ada Lovelace'\)"
                                         r", but a list of words is expected.*split_words"):
        ner.tokenize_and_align(ds, tok, L2I)
    with pytest.raises(ValueError, match="the words are one string"):
        ner.alignment_table("Ada Lovelace", ["B-PER", "I-PER"], tok, LABELS)
    with pytest.raises(ValueError, match="the words are one string"):
        ner.highlight_html("Ada Lovelace", ["B-PER", "I-PER"])
    with pytest.raises(ValueError, match=r"sentences\[0\] \(one sentence is \[words\], not words\)"):
        ner.predict_tags(None, tok, ["Ada", "Lovelace"])
    with pytest.raises(ValueError, match=r"gold_seqs: a list of sentences, each a list of tags"):
        ner.error_kinds(["B-PER", "I-PER"], ["B-PER", "I-PER"])


def test_one_dataset_where_a_datasetdict_is_expected_says_how_to_make_splits(tok, cfg):
    from datasets import Dataset

    one = Dataset.from_dict({"tokens": [["Ada", "Lovelace"]], "tags": [["B-PER", "I-PER"]]})
    with pytest.raises(ValueError, match=r"ds is one datasets.Dataset \(1 rows\), but a DatasetDict of named splits "
                                         r"is expected \(needs \['train'\]\).*DatasetDict\(\{'train'"):
        ner.tokenize_and_align(one, tok, L2I)
    with pytest.raises(ValueError, match="ds is a list, but a DatasetDict"):
        ner.tokenize_and_align([{"tokens": ["Ada"], "tags": ["B-PER"]}], tok, L2I)
    encoded = ner.tokenize_and_align({"train": one}, tok, L2I)
    with pytest.raises(ValueError, match=r"encoded has no 'test' split \(splits: \['train'\]\)"):
        ner.train_tagger(cfg, encoded, tok, LABELS)
    with pytest.raises(ValueError, match="encoded is one datasets.Dataset"):
        ner.train_tagger(cfg, encoded["train"], tok, LABELS)


def test_the_recorded_frozen_run_reads_back_at_the_main_runs_settings(cfg):
    from ftkit import results
    from ftkit.train import RunResult

    recorded = results.sweep_rows("ner_frozen", cfg)
    settings = recorded.provenance["settings"]
    assert settings["frozen blocks"] == ner.FROZEN_BLOCKS and settings["dataset"] == ner.MAIN_RUN["dataset"]
    run = RunResult.from_record(recorded[0]["run"])
    epochs = float(settings["epochs"] or cfg.epochs)
    assert run.name == ner.frozen_name(ner.FROZEN_BLOCKS, 6, epochs, settings["learning rate"]) == recorded[0]["setup"]
    assert 0 <= run.metrics["overall_f1"] <= 1 and run.model is None


def test_section_6_draws_the_frozen_run_at_the_main_runs_settings_and_trains_it_when_one_differs(cfg):
    from ftkit.results import ResultsTable
    from ftkit.train import RunResult

    clicks = []

    class Panel:
        def click(self, **values):
            clicks.append(values)
            return RunResult("clicked", {"overall_f1": 0.1}, 1, 1, 0.0, 0.0)

    code = ner.frozen_settings(cfg)
    yours = {k: code[k] for k in ("dataset", "align mode", "max length", "epochs", "learning rate")}
    table = ResultsTable()
    run = ner.frozen_run(cfg, yours, Panel(), table)
    assert not clicks and len(table) == 1 and run.name == table.rows[0]["setup"] and "4 of 6 blocks frozen" in run.name
    run = ner.frozen_run(cfg, {**yours, "align mode": "all"}, Panel(), table)
    assert clicks == [{"n_frozen": ner.FROZEN_BLOCKS, "epochs": float(yours["epochs"] or cfg.epochs)}]
    assert run.name == "clicked" and len(table) == 1            # the panel adds its own row
