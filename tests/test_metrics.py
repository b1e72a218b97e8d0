import pytest

from ftkit import metrics


def test_accuracy():
    assert metrics.load("accuracy").compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0]) == {"accuracy": 0.75}


def test_f1_macro_weights_classes_equally():
    # class 0: P=1, R=2/3, F1=0.8 ; class 1: P=0.5, R=1, F1=2/3
    s = metrics.load("f1_macro").compute(predictions=[0, 0, 1, 1], references=[0, 0, 0, 1])
    assert s["precision"] == pytest.approx(0.75)
    assert s["recall"] == pytest.approx(5 / 6)
    assert s["f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_classification_scores_combines_both():
    s = metrics.classification_scores([1, 1], [1, 0])
    assert set(s) == {"accuracy", "macro_precision", "macro_recall", "macro_f1"}


def test_seqeval_is_entity_level_and_per_type():
    refs = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    preds = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]  # PER boundary wrong
    s = metrics.load("seqeval").compute(predictions=preds, references=refs)
    assert s["PER"]["f1"] == 0.0 and s["LOC"]["f1"] == 1.0 and s["ORG"]["number"] == 1
    assert s["overall_precision"] == pytest.approx(2 / 3) and s["overall_recall"] == pytest.approx(2 / 3)
    assert s["overall_accuracy"] == pytest.approx(5 / 6)  # token accuracy looks much better


def test_seqeval_length_mismatch_is_clear():
    with pytest.raises(ValueError, match="sentence 0: 1 predicted tags but 2 reference tags"):
        metrics.load("seqeval").compute(predictions=[["O"]], references=[["O", "O"]])


def test_rouge_identical_and_disjoint():
    rouge = metrics.load("rouge")
    assert rouge.compute(predictions=["the cat sat"], references=["the cat sat"])["rouge1"] == pytest.approx(1.0)
    assert rouge.compute(predictions=["dogs bark"], references=["the cat sat"])["rougeL"] == 0.0


def test_unknown_metric_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metrics.path("bleu")
