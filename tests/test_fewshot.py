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
    with pytest.raises(ValueError, match="pairs need at least two classes"):
        fewshot.make_pairs(["a", "b"], [1, 1])
    with pytest.raises(ValueError, match="class 0 has a single example"):
        fewshot.make_pairs(["a", "b", "c"], [1, 1, 0])
    with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
        fewshot.make_pairs(TEXTS, LABELS, iterations=0)
    with pytest.raises(ValueError, match="6 texts but 5 labels"):
        fewshot.make_pairs(TEXTS, LABELS[:5])
    with pytest.raises(ValueError, match="class 'neg' has a single example"):
        fewshot.setfit_pairs(["a", "b", "c"], ["pos", "pos", "neg"], 1)


def test_a_partner_is_another_row_even_when_two_rows_share_a_text():
    """Identity of strings is not identity of rows: the old `t is not text` test let a sentence pair with itself
    whenever Python interned two equal strings, and refused a partner that merely had the same text."""
    texts, labels = ["same", "same", "other", "more"], [1, 1, 0, 0]
    positives = [(a, b) for a, b, s in fewshot.make_pairs(texts, labels, iterations=5) if s == 1.0]
    assert positives and all(pair == ("same", "same") for pair in positives[:2])   # the two rows pair each other


def setfit_trainer_pairs(cfg, texts, labels, iterations):
    """The pairs setfit's own Trainer builds for step 2 (`Trainer.get_dataset`), as (sentence, partner, similar)."""
    from setfit import Trainer, TrainingArguments

    trainer = Trainer(model=fewshot.setfit_model(cfg), args=TrainingArguments(
        num_iterations=iterations, seed=3, report_to="none", output_dir=fewshot._tmp()))
    dataset, _ = trainer.get_dataset(list(texts), list(labels), trainer.args)
    return list(zip(dataset["sentence_1"], dataset["sentence_2"], dataset["label"]))


def test_setfit_pairs_are_the_pairs_setfits_trainer_trains_on_and_differ_from_make_pairs(cfg):
    few = fewshot.sample_k(data.load("rotten_tomatoes")["train"], 8, seed=0)
    theirs = fewshot.setfit_pairs(few["text"], few["label"], 10)
    assert theirs == setfit_trainer_pairs(cfg, few["text"], few["label"], 10)    # whatever the run's seed (3)
    assert fewshot.setfit_pairs(few["text"], few["label"], 10) == theirs          # a fixed order, whatever the seed
    ours = fewshot.make_pairs(few["text"], few["label"], 10, seed=0)
    # the same count (2 · I · K · C), other pairs: setfit cycles through all 136 unordered pairs with replacement
    # (120 of two different sentences, 16 of a sentence with itself); make_pairs never pairs a sentence with itself
    assert fewshot.pair_stats(theirs) == {"pairs": 320, "distinct": 136, "with itself": 37, "positive": 160,
                                          "negative": 160}
    stats = fewshot.pair_stats(ours)
    assert stats["pairs"] == 320 and stats["with itself"] == 0 and stats["distinct"] <= 120
    assert fewshot.pair_stats(fewshot.setfit_pairs(few["text"], few["label"], 20))["distinct"] == 136
    with pytest.raises(ValueError, match="no pairs to count"):
        fewshot.pair_stats([])


def test_setfit_model_trains_in_float32_even_from_a_bfloat16_checkpoint(tmp_path):
    """setfit 1.2's SetFitModel.from_pretrained hands `model_kwargs` to the SetFitModel, which ignores them, so a
    bfloat16 checkpoint stays bfloat16 there; setfit_model builds the model from ftkit's float32 loader."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from setfit import SetFitModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ftkit import models

    tokenizer = AutoTokenizer.from_pretrained(models.packaged_minilm_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).to(torch.bfloat16).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    body = Transformer(str(tmp_path / "bert"), max_seq_length=32)
    SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean")], device="cpu").save(
        str(tmp_path / "st"))
    dtypes = lambda model: {p.dtype for p in model.model_body.parameters()}  # noqa: E731
    assert dtypes(SetFitModel.from_pretrained(str(tmp_path / "st"), model_kwargs={"dtype": torch.float32})) \
        == {torch.bfloat16}                # if this changes, setfit now passes the dtype: revise setfit_model's note
    model = fewshot.setfit_model(None, str(tmp_path / "st"))
    assert dtypes(model) == {torch.float32} and model.model_head is not None


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


def test_setfit_trains_and_scores_with_the_offline_metric(cfg, capsys):
    rt = data.load("rotten_tomatoes")
    fractions = []
    result, model = fewshot.train_setfit(cfg, fewshot.sample_k(rt["train"], 4), rt["test"].select(range(32)),
                                         iterations=2, progress=fractions.append)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.extra["pairs"] == 32
    # 32 pairs at the smoke batch of 16: two steps reported to `progress`, and no Trainer log line printed
    assert fractions == [0.5, 1.0] and "embedding_loss" not in capsys.readouterr().out
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


def test_the_frozen_baseline_scores_the_same_with_test_embeddings_computed_once(cfg):
    from ftkit import models

    rt = data.load("rotten_tomatoes")
    train_k, test = fewshot.sample_k(rt["train"], 4), rt["test"].select(range(24))
    sentence_model = models.load_sentence_model(cfg)
    once = fewshot.encode(sentence_model, test["text"])
    assert once.shape == (24, sentence_model.get_sentence_embedding_dimension())
    assert fewshot.frozen_baseline(cfg, train_k, test, sentence_model, test_embeddings=once).metrics == \
        fewshot.frozen_baseline(cfg, train_k, test, sentence_model).metrics
    with pytest.raises(ValueError, match="23 test embeddings for 24 test rows"):
        fewshot.frozen_baseline(cfg, train_k, test, sentence_model, test_embeddings=once[:23])


def test_curve_settings_are_a_function_of_the_profile_and_match_the_notebooks_runs(cfg):
    from ftkit import env, results

    assert fewshot.curve_settings(cfg) == fewshot.curve_settings(cfg.profile) == fewshot.curve_settings(
        env.get_profile("smoke"))
    cpu = fewshot.curve_settings(env.get_profile("cpu"))
    assert (cpu["K"], cpu["seeds"], cpu["iterations"], cpu["test sentences"]) == ([4, 8, 16, 32], [0, 1, 2], 10, 500)
    assert results.code_settings("fewshot_curve", "cpu") == cpu          # registered in results.SWEEPS
    assert len(fewshot.curve_data(cfg)[1]) == fewshot.curve_settings(cfg)["test sentences"]


def tiny_curve(monkeypatch, cfg, ks=(2,), seeds=(0, 1)):
    """The curve at toy sizes (16 test sentences, one pair iteration), counting the texts given to `encode`."""
    rt = data.load("rotten_tomatoes")
    test = data.take(rt["test"], 16, stratify="label")
    settings = {**fewshot.curve_settings(cfg), "K": list(ks), "seeds": list(seeds), "iterations": 1}
    monkeypatch.setattr(fewshot, "curve_settings", lambda _cfg: settings)
    monkeypatch.setattr(fewshot, "curve_data", lambda _cfg: (rt["train"], test, ["neg", "pos"]))
    encoded, encode = [], fewshot.encode
    monkeypatch.setattr(fewshot, "encode", lambda model, texts: encoded.append(list(texts)) or encode(model, texts))
    return test, encoded


def test_the_curve_sweep_trains_every_method_and_seed_and_encodes_the_test_sentences_once(cfg, monkeypatch):
    test, encoded = tiny_curve(monkeypatch, cfg, ks=(2,), seeds=(0, 1))
    rows = fewshot.curve_sweep(cfg)
    assert [(r["method"], r["K"], r["seed"]) for r in rows] == [(m, 2, s) for s in (0, 1) for m in fewshot.METHODS]
    assert all(0 <= r["accuracy"] <= 1 and r["iterations"] == 1 and r["seconds"] >= 0 for r in rows)
    # the untouched model encodes the test sentences once for the whole curve (it used to be once per K and seed);
    # each SetFit run encodes them with its own fine-tuned body when it is scored (setfit's evaluate), not here
    assert [texts for texts in encoded if texts == test["text"]] == [test["text"]]
    assert len(encoded) == 1 + 2                 # and the K examples of each seed, for the baseline's head


def test_the_curve_panel_adds_the_learners_runs_as_stars_on_the_recording(cfg, monkeypatch, capsys):
    """The clicks that Run All used to make for CI: one Run trains the three methods once per seed at one K."""
    test, _ = tiny_curve(monkeypatch, cfg)
    recorded = [{"method": m, "K": k, "seed": 0, "accuracy": 0.5 + 0.01 * k} for m in fewshot.METHODS for k in (4, 8)]
    mine = []
    panel = fewshot.curve_panel(cfg, data.load("rotten_tomatoes")["train"], test, ["neg", "pos"], recorded, mine,
                                ks=(2, 4, 8))
    assert list(panel.controls) == ["k", "iterations", "seeds"]
    with pytest.raises(ValueError, match="seeds must be in 1..5"):
        panel.click(seeds=6)
    new = panel.click(k=2, iterations=1, seeds=1)
    assert mine == new and [r["method"] for r in new] == list(fewshot.METHODS) and panel.progress.value == 1.0
    figure = panel.plot(panel)                              # what the panel draws after every run
    stars = [trace for trace in figure.data if (trace.name or "").endswith("(live)")]
    assert len(stars) == 3 and all(list(trace.x) == [2] for trace in stars)
    assert "embedding_loss" not in capsys.readouterr().out  # one bar: no Trainer log lines printed


def test_summaries_of_nothing_are_refused():
    with pytest.raises(ValueError, match="no curve points yet"):
        fewshot.curve_summary([])
    with pytest.raises(ValueError, match="exactly two classes"):
        fewshot.separation(np.ones((4, 3)), [0, 0, 0, 0])
