from collections import Counter

import numpy as np
import pytest
from datasets import Dataset

from ftkit import data, fewshot

TEXTS = ["good", "great", "fine", "bad", "awful", "poor"]
LABELS = [1, 1, 1, 0, 0, 0]


def test_pair_count_grows_with_k_and_iterations():
    assert fewshot.pair_count(8, 2, 20) == 640
    assert fewshot.pair_count(16, 2, 20) == 2 * fewshot.pair_count(8, 2, 20)
    assert fewshot.pair_count(8, 2, 40) == 2 * fewshot.pair_count(8, 2, 20)
    assert len(fewshot.make_pairs(TEXTS, LABELS, iterations=3)) == fewshot.pair_count(3, 2, 3)


def test_pairs_are_balanced_and_correct():
    pairs = fewshot.make_pairs(TEXTS, LABELS, iterations=5, seed=1)
    assert Counter(p[2] for p in pairs) == {1.0: 30, 0.0: 30}
    label = dict(zip(TEXTS, LABELS))
    for a, b, similar in pairs:
        assert (label[a] == label[b]) == (similar == 1.0) and a != b


def test_pairs_are_deterministic_by_seed():
    assert fewshot.make_pairs(TEXTS, LABELS, 4, seed=7) == fewshot.make_pairs(TEXTS, LABELS, 4, seed=7)
    assert fewshot.make_pairs(TEXTS, LABELS, 4, seed=7) != fewshot.make_pairs(TEXTS, LABELS, 4, seed=8)


def test_pairs_need_two_classes_of_two():
    with pytest.raises(ValueError, match="at least two classes"):
        fewshot.make_pairs(["a", "b"], [1, 1])
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        fewshot.make_pairs(TEXTS, LABELS, iterations=0)


def test_sample_k_is_balanced_and_reproducible():
    train = data.load("rotten_tomatoes")["train"]
    a = fewshot.sample_k(train, 8, seed=3)
    assert sorted(a["label"]) == [0] * 8 + [1] * 8
    assert a["text"] == fewshot.sample_k(train, 8, seed=3)["text"]
    assert a["text"] != fewshot.sample_k(train, 8, seed=4)["text"]


def test_k_larger_than_a_class_is_a_clear_error():
    ds = Dataset.from_dict({"text": TEXTS, "label": LABELS})
    with pytest.raises(ValueError, match="K=4 but class 0 has only 3 examples; choose K <= 3"):
        fewshot.sample_k(ds, 4)
    with pytest.raises(ValueError, match="positive integer"):
        fewshot.sample_k(ds, 0)
    with pytest.raises(ValueError, match="has no column 'label'"):
        fewshot.sample_k(ds.rename_column("label", "y"), 2)


def test_separation_grows_when_classes_pull_apart():
    rng = np.random.default_rng(0)
    close = np.concatenate([rng.normal(0, 1, (50, 4)) + 5, rng.normal(0.3, 1, (50, 4)) + 5])
    far = np.concatenate([rng.normal(0, 1, (50, 4)) + [5, 0, 0, 0], rng.normal(0, 1, (50, 4)) + [0, 5, 0, 0]])
    y = [0] * 50 + [1] * 50
    assert fewshot.separation(far, y) > fewshot.separation(close, y) * 3


def test_setfit_trains_and_scores_with_the_offline_metric(cfg):
    rt = data.load("rotten_tomatoes")
    result, model = fewshot.train_setfit(cfg, fewshot.sample_k(rt["train"], 4), rt["test"].select(range(32)),
                                         iterations=2)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.extra["pairs"] == 32
    test = rt["test"].select(range(32))
    preds = model.predict(test["text"], show_progress_bar=False)
    assert result.metrics["accuracy"] == pytest.approx(float((np.asarray(preds) == np.array(test["label"])).mean()))


def test_a_small_machine_trains_setfit_with_checkpointing_and_the_same_result(cfg):
    import dataclasses

    rt = data.load("rotten_tomatoes")
    train_k, test = fewshot.sample_k(rt["train"], 4), rt["test"].select(range(32))
    small = dataclasses.replace(cfg, memory_limit_mb=2048)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in fewshot.setfit_model(cfg).model_body.modules())
    checkpointed = fewshot.setfit_model(small)
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.model_body.modules())
    _, plain = fewshot.train_setfit(cfg, train_k, test, iterations=2)
    _, recomputed = fewshot.train_setfit(small, train_k, test, iterations=2)
    texts = test["text"][:8]
    a, b = (m.model_body.encode(texts, show_progress_bar=False) for m in (plain, recomputed))
    assert np.abs(a - plain.model_body.encode(texts, show_progress_bar=False)).max() == 0      # encode is stable
    assert np.abs(a - b).max() < 1e-4             # recomputing activations: the same updates up to float rounding


def as_strings(ds, names=("negative", "positive")):
    return Dataset.from_dict({"text": ds["text"], "label": [names[i] for i in ds["label"]]})


def test_string_labels_give_the_same_answer_at_every_entry_point(cfg):
    """train_setfit accepts "positive"/"negative"; the frozen baseline and full fine-tuning (the other two methods of
    curve_point) must too, with one mapping for the K rows and the test rows, and the same scores as with ids."""
    from ftkit import models, tuning

    rt = data.load("rotten_tomatoes")
    train_k, test = fewshot.sample_k(rt["train"], 4), rt["test"].select(range(16))
    sentence_model = models.load_sentence_model(cfg)
    by_id = fewshot.frozen_baseline(cfg, train_k, test, sentence_model)
    by_name = fewshot.frozen_baseline(cfg, as_strings(train_k), as_strings(test), sentence_model)
    assert by_name.metrics == by_id.metrics and 0.0 <= by_id.metrics["accuracy"] <= 1.0
    # full fine-tuning's data path: the strings become the ids of label_names in both splits
    names = rt["train"].features["label"].names
    checked = fewshot.checked_splits(as_strings(train_k), as_strings(test), names)
    assert checked["train"]["label"] == train_k["label"] and checked["test"]["label"] == test["label"]
    encoded, _ = tuning.tokenize(checked, cfg)
    assert encoded["test"]["label"] == test["label"]


def test_a_test_label_the_k_rows_lack_is_refused_at_every_entry_point(cfg):
    rt = data.load("rotten_tomatoes")
    train_k, test = as_strings(fewshot.sample_k(rt["train"], 2)), as_strings(rt["test"].select(range(4)))
    odd = Dataset.from_dict({"text": test["text"], "label": ["positive", "neutral", "negative", "positive"]})
    message = r"split 'test': label 'neutral' in row 1 is not in the label set \['negative', 'positive'\]"
    with pytest.raises(ValueError, match=message):
        fewshot.frozen_baseline(cfg, train_k, odd, sentence_model=object())
    with pytest.raises(ValueError, match=message):
        fewshot.train_setfit(cfg, train_k, odd)
    with pytest.raises(ValueError, match=message):
        fewshot.full_finetune_k(cfg, train_k, odd, ["negative", "positive"])
    with pytest.raises(ValueError, match="mixes label strings and class ids"):
        fewshot.frozen_baseline(cfg, train_k, rt["test"].select(range(4)), sentence_model=object())
    with pytest.raises(ValueError, match="test rows is empty"):
        fewshot.frozen_baseline(cfg, train_k, test.select([]), sentence_model=object())


def test_summaries_of_nothing_are_refused():
    with pytest.raises(ValueError, match="no curve points yet"):
        fewshot.curve_summary([])
    with pytest.raises(ValueError, match="exactly two classes"):
        fewshot.separation(np.ones((4, 3)), [0, 0, 0, 0])
