import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from ftkit import data, models, tuning
from ftkit.results import ResultsTable


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(tuning.mean_pool(hidden, mask), torch.tensor([[2.0, 2.0]]))


def test_embed_is_cached_and_deterministic(cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path))
    texts = ["a fine film", "a dull film", "a fine film"]
    first = tuning.embed(texts, cfg)
    assert first.shape == (3, 384) and np.allclose(first[0], first[2])
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 1
    monkeypatch.setattr(models, "load_encoder", lambda *a, **k: pytest.fail("must come from the cache"))
    assert np.array_equal(tuning.embed(texts, cfg), first)


def test_heads_learn_a_separable_problem():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-2, 1, (40, 8)), rng.normal(2, 1, (40, 8))]).astype(np.float32)
    y = [0] * 40 + [1] * 40
    for head in (tuning.fit_logistic_regression(X, y), tuning.MLPHead(hidden=16, epochs=100).fit(X, y)):
        assert (head.predict(X) == np.array(y)).mean() > 0.95
    assert tuning.head_params(tuning.fit_logistic_regression(X, y)) == 9


def test_feature_based_reports_a_run():
    X = np.eye(4, dtype=np.float32).repeat(5, axis=0)
    y = [0] * 10 + [1] * 10
    result = tuning.feature_based("lr", tuning.MLPHead(hidden=4, epochs=5), X, y, X, y, encoder_params=1000)
    assert result.total_params == 1000 + result.trainable_params and 0 <= result.metrics["accuracy"] <= 1


@pytest.mark.parametrize("X, y, message", [
    (np.zeros((3, 2)), [0, 1], "3 embeddings but 2 labels"),
    (np.zeros((3, 2)), [1, 1, 1], "single class"),
])
def test_heads_reject_bad_input(X, y, message):
    with pytest.raises(ValueError, match=message):
        tuning.fit_logistic_regression(X, y)
    with pytest.raises(ValueError, match=message):
        tuning.MLPHead().fit(X, y)


def _tiny(labels, column="text"):
    part = Dataset.from_dict({column: ["good", "bad", "fine", "awful"][: len(labels)], "label": labels})
    return DatasetDict({"train": part, "test": part})


def test_tokenize_wrong_text_column(cfg):
    with pytest.raises(ValueError, match="has no column 'text'"):
        tuning.tokenize(_tiny([0, 1], column="review"), cfg)
    encoded, _ = tuning.tokenize(_tiny([0, 1], column="review"), cfg, text_column="review")
    assert "input_ids" in encoded["train"].column_names and "review" not in encoded["train"].column_names


def test_tokenize_wrong_label_column(cfg):
    with pytest.raises(ValueError, match="has no column 'sentiment'"):
        tuning.tokenize(_tiny([0, 1]), cfg, label_column="sentiment")


def test_single_class_training_set_is_refused(cfg):
    with pytest.raises(ValueError, match="single class"):
        tuning.tokenize(_tiny([1, 1, 1]), cfg)


@pytest.mark.parametrize("labels, message", [
    ([0, None, 1], r"'label' is missing \(None/NaN\) in row 1; drop or label those rows"),
    ([0.0, float("nan"), 1.0], r"'label' is missing \(None/NaN\) in row 1"),
    (["pos", "neg", "pos"], r"'label' holds strings \(row 0: 'pos'\).*ds.class_encode_column\('label'\)"),
    ([0, 1.5, 1], r"'label' in row 1 is 1.5; class ids are whole numbers"),
    ([0, -1, 1], r"'label' in row 1 is -1; class ids are whole numbers"),
])
def test_tokenize_refuses_labels_that_are_not_class_ids(cfg, labels, message):
    with pytest.raises(ValueError, match=message):
        tuning.tokenize(_tiny(labels), cfg)


def test_tokenize_refuses_a_missing_text_in_any_split(cfg):
    bad = Dataset.from_dict({"text": ["good", None], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"training data column 'text'\[1\] is None; every entry must be a non-empty"):
        tuning.tokenize(DatasetDict({"train": bad, "test": bad}), cfg)
    good = _tiny([0, 1])["train"]
    with pytest.raises(ValueError, match=r"split 'test' column 'text'\[1\] is None"):
        tuning.tokenize(DatasetDict({"train": good, "test": bad}), cfg)


def test_embed_refuses_no_texts_and_missing_texts(cfg):
    with pytest.raises(ValueError, match="texts to embed is empty: give at least one sentence"):
        tuning.embed([], cfg)
    with pytest.raises(ValueError, match=r"texts to embed\[1\] is None"):
        tuning.embed(["fine", None], cfg)


def test_fine_tune_frozen_layers_out_of_range(cfg):
    encoded, tok = tuning.tokenize(_tiny([0, 1, 0, 1]), cfg)
    with pytest.raises(ValueError, match=r"n_frozen must be an integer in 0..6"):
        tuning.fine_tune(cfg, encoded, tok, ["neg", "pos"], n_frozen=9)


def test_setup_names():
    assert [tuning.setup_name(n, 6) for n in (0, 4, 6)] == ["full", "last 2", "head only"]


def test_ablation_panel_rejects_out_of_range_and_scores_on_validation_never_on_test(cfg, monkeypatch):
    """The click that 01's Run All made for the tests (3 of 6 blocks frozen, 1 epoch) lives here now."""
    rt = data.for_profile(data.load("rotten_tomatoes"), cfg)
    encoded, tok = tuning.tokenize(rt, cfg)
    validation = tuning.validation_subset(encoded, 32)
    scored = []
    real_fit = tuning.train.fit

    def spy(model, train_ds, eval_ds, *args, **kwargs):
        scored.append(eval_ds)
        return real_fit(model, train_ds, eval_ds, *args, **kwargs)

    monkeypatch.setattr(tuning.train, "fit", spy)
    table = ResultsTable()
    panel = tuning.ablation_panel(cfg, encoded, tok, ["negative", "positive"], table, depth=6, validation=validation,
                                  warmup_steps=0.1)
    with pytest.raises(ValueError, match="n_frozen must be in 0..6, got 7"):
        panel.click(n_frozen=7)
    result = panel.click(n_frozen=3, epochs=1.0)
    assert result.name.startswith("last 3") and len(table) == 1
    assert len(scored) == 1 and scored[0] is validation and scored[0] is not encoded["test"]
    assert table.rows[0]["validation accuracy"] == result.metrics["accuracy"] and "accuracy" not in table.rows[0]
    assert result.extra["frozen blocks"] == 3 and result.model is None     # numbers kept, the model freed
    assert result.lr_history[0][1] == 0.0                                  # the notebook's warm-up reached the run


def test_fine_tune_validates_keeps_the_best_and_reports_its_validation_accuracy(cfg):
    rt = data.for_profile(data.load("rotten_tomatoes"), cfg)
    encoded, tok = tuning.tokenize(rt, cfg)
    validation = tuning.validation_subset(encoded, 32)
    result = tuning.fine_tune(cfg, encoded, tok, ["negative", "positive"], 4, validation=validation, eval_every=2,
                              keep_best=True)
    assert [h["step"] for h in result.eval_history] == [2, 4, 6, 8]
    best = min(result.eval_history, key=lambda h: h["loss"])
    assert result.best_step == best["step"] and tuning.kept_validation(result) is best
    assert result.extra["validation accuracy"] == best["accuracy"]
    assert 0 <= result.metrics["accuracy"] <= 1                           # the test split, scored once at the end


def test_validation_subset_takes_an_equal_share_of_each_class_and_needs_the_split(cfg):
    rt = data.for_profile(data.load("rotten_tomatoes"), cfg)
    encoded, _ = tuning.tokenize(rt, cfg)
    subset = tuning.validation_subset(encoded, 20)
    assert len(subset) == 20 and sorted(subset["label"]).count(0) == 10
    assert len(tuning.validation_subset(encoded, None)) == len(encoded["validation"])
    with pytest.raises(ValueError, match="no 'validation' split.*train_test_split"):
        tuning.validation_subset({"train": encoded["train"], "test": encoded["test"]}, 20)


def test_fine_tune_refuses_an_unknown_split_to_score(cfg):
    encoded, tok = tuning.tokenize(_tiny([0, 1, 0, 1]), cfg)
    with pytest.raises(ValueError, match="score_on='dev' is not a split of the data; splits: \\['train', 'test'\\]"):
        tuning.fine_tune(cfg, encoded, tok, ["neg", "pos"], n_frozen=6, score_on="dev")
    with pytest.raises(ValueError, match="was not validated during training"):
        tuning.kept_validation(tuning.feature_based("lr", tuning.MLPHead(hidden=4, epochs=1), np.eye(2, dtype=np.float32),
                                                    [0, 1], np.eye(2, dtype=np.float32), [0, 1], encoder_params=10))


def test_one_dataset_where_a_datasetdict_is_expected_says_how_to_make_splits(cfg):
    one = Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]})
    with pytest.raises(ValueError, match=r"ds is one datasets.Dataset \(2 rows\), but a DatasetDict of named splits "
                                         r"is expected.*DatasetDict\(\{'train'.*train_test_split"):
        tuning.tokenize(one, cfg)
    with pytest.raises(ValueError, match=r"ds has no 'train' split \(splits: \['test'\]\)"):
        tuning.tokenize(DatasetDict({"test": one}), cfg)
    with pytest.raises(ValueError, match="encoded is one datasets.Dataset"):
        tuning.fine_tune(cfg, one, None, ["neg", "pos"], n_frozen=0)
    with pytest.raises(ValueError, match="encoded is one datasets.Dataset"):
        tuning.validation_subset(one, 10)


def test_part_2_draws_the_frozen_runs_from_the_recording_and_trains_them_when_a_setting_differs(cfg, monkeypatch):
    """The notebook's default path reads head only and last 2 from the recording and trains the full run; another
    warm-up trains all three now (the recording no longer compares like with like)."""
    from ftkit import results, train

    rt = data.for_profile(data.load("rotten_tomatoes"), cfg)
    encoded, tok = tuning.tokenize(rt, cfg)
    validation = tuning.validation_subset(encoded, tuning.VALIDATION_SENTENCES)
    recorded = results.sweep_rows("tuning_freezing", cfg)
    assert [r["setup"] for r in recorded] == ["head only", "last 2", "full"] and not recorded.provenance.get("live")
    trained = []
    real = tuning.watched_run
    monkeypatch.setattr(tuning, "watched_run", lambda cfg, enc, tk, names, n, *a, **k: trained.append(n) or
                        real(cfg, enc, tk, names, n, *a, **k))
    runs = tuning.freezing_runs(cfg, encoded, tok, ["negative", "positive"], validation, 6, tuning.WARMUP, recorded)
    assert trained == [0] and [r.extra["run"] for r in runs.values()] == ["recorded", "recorded", "trained now"]
    head = runs["head only"]
    assert isinstance(head, train.RunResult) and head.best_step in [h["step"] for h in head.eval_history]
    assert head.trainable_params < runs["last 2"].trainable_params < runs["full"].trainable_params
    assert recorded[0]["run"]["extra"].get("run") is None                 # the recording is left as it was
    trained.clear()
    live = results.Recorded(list(recorded), {**recorded.provenance, "live": True})    # live=True: none trained twice
    runs = tuning.freezing_runs(cfg, encoded, tok, ["negative", "positive"], validation, 6, tuning.WARMUP, live)
    assert trained == [] and {r.extra["run"] for r in runs.values()} == {"trained now"}
    runs = tuning.freezing_runs(cfg, encoded, tok, ["negative", "positive"], validation, 6, 0.2, recorded)
    assert trained == [6, 4, 0] and {r.extra["run"] for r in runs.values()} == {"trained now"}
