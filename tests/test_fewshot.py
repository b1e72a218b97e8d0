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
