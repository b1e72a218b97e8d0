"""Session 03: masking schemes, fixed evaluation masks, the masked-LM head cache, fill-mask, bad input."""
import os

import pytest
import torch

from ftkit import data, mlm, models

SENTENCE = "Hypothyroidism, or an underactive thyroid, can cause fatigue and weight gain in adults."


@pytest.fixture(scope="module")
def tok():
    return models.load_tokenizer("encoder")


@pytest.fixture(scope="module")
def general_model():
    return models.load_masked_lm()


@pytest.fixture(scope="module")
def medical():
    return data.load("medquad_corpus")["train"]["text"][:300]


def _chosen_by_word(tok, texts, scheme, probability, seed=0):
    rows = mlm.encode(tok, texts)
    batch = mlm.masking_collator(tok, scheme, probability, seed)(rows)
    out = []
    for row, labels, ids in zip(rows, batch["labels"], batch["input_ids"]):
        words = mlm.word_ids(row["offset_mapping"], row["special_tokens_mask"])
        out.append((row, words, (labels != -100).tolist()[: len(words)], ids.tolist()))
    return out


def test_whole_word_masking_hides_every_piece_of_a_chosen_word_and_no_special_token(tok, medical):
    multi_piece_words_seen = 0
    for row, words, chosen, _ in _chosen_by_word(tok, medical[:64], "whole_word", 0.3):
        for w in set(words) - {-1}:
            pieces = [c for wi, c in zip(words, chosen) if wi == w]
            assert all(pieces) or not any(pieces), f"word {w} was hidden only in part: {pieces}"
            multi_piece_words_seen += len(pieces) > 1 and all(pieces)
        assert not any(c for c, s in zip(chosen, row["special_tokens_mask"]) if s), "a special token was masked"
    assert multi_piece_words_seen > 20  # the check above really met split words


def test_token_masking_does_hide_parts_of_words(tok, medical):
    stats = mlm.partial_word_rate(medical[:200], tok, "token", 0.15)
    assert stats["touched by masking"] > 50 and stats["partial %"] > 50  # most touched split words are cut
    assert mlm.partial_word_rate(medical[:200], tok, "whole_word", 0.15)["hidden only in part"] == 0


@pytest.mark.parametrize("scheme", mlm.SCHEMES)
@pytest.mark.parametrize("probability", [0.1, 0.3])
def test_the_masking_rate_is_close_to_the_requested_probability(tok, medical, scheme, probability):
    stats = mlm.partial_word_rate(medical, tok, scheme, probability, seed=3)
    # ~40k candidate pieces: a binomial std of ~0.2 points; whole words add variance by word length
    assert abs(stats["tokens masked %"] - 100 * probability) < 100 * probability * 0.12


def test_seeded_masks_are_reproducible_and_seeds_differ(tok, medical):
    a = mlm.eval_set(tok, medical[:20], "word", seed=7)
    b = mlm.eval_set(tok, medical[:20], "word", seed=7)
    c = mlm.eval_set(tok, medical[:20], "word", seed=8)
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(a, b))
    assert any(not torch.equal(x["labels"], z["labels"]) for x, z in zip(a, c))


def test_evaluation_masks_use_mask_tokens_only(tok, medical):
    for e in mlm.eval_set(tok, medical[:20], "token"):
        hidden = e["labels"] != -100
        assert (e["input_ids"][hidden] == tok.mask_token_id).all()


def test_bert_80_10_10_for_token_masking(tok, medical):
    rows = mlm.encode(tok, medical)
    batch = mlm.masking_collator(tok, "token", 0.15, seed=0)(rows)
    chosen = batch["labels"] != -100
    as_mask = (batch["input_ids"][chosen] == tok.mask_token_id).float().mean()
    unchanged = (batch["input_ids"][chosen] == batch["labels"][chosen]).float().mean()
    assert 0.77 < as_mask < 0.83 and 0.08 < unchanged < 0.13


def test_word_ids_follow_the_collator_definition(tok):
    row = mlm.encode(tok, [SENTENCE])[0]
    words = mlm.word_ids(row["offset_mapping"], row["special_tokens_mask"])
    tokens = tok.convert_ids_to_tokens(row["input_ids"])
    first = [t for t, w in zip(tokens, words) if w == 0]
    assert "".join(p.removeprefix("##") for p in first) == "hypothyroidism,"  # the comma belongs to the word
    assert words[0] == -1 and words[-1] == -1


def test_mask_table_and_html(tok):
    table = mlm.mask_table(SENTENCE, tok, "whole_word", 0.3, seed=1)
    assert list(table.columns) == ["token", "word", "chosen", "model reads"]
    assert table["chosen"].any()
    page = mlm.highlight_html(table, "whole word <demo>")
    assert "&lt;demo&gt;" in page and "[MASK]" in page


# --------------------------------------------------------------------------- head cache
def test_the_head_cache_is_reused_without_training_again(monkeypatch):
    path = models.prepare_mlm_head()
    mtime = os.path.getmtime(path)
    monkeypatch.setattr(models, "warm_up_mlm_head", lambda *a, **k: pytest.fail("warmed up again"))
    assert models.prepare_mlm_head() == path and os.path.getmtime(path) == mtime
    model = models.load_masked_lm()
    head = models.load_masked_lm(warmed_head=False)
    assert not torch.equal(model.cls.predictions.transform.dense.weight, head.cls.predictions.transform.dense.weight)


def test_an_interrupted_write_leaves_the_old_cache_intact(tmp_path, monkeypatch):
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path))
    small = {"n_texts": 64, "epochs": 1, "verbose": False}
    first = models.prepare_mlm_head(**small)
    before = first.read_bytes()

    def crash(state, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise KeyboardInterrupt("killed while saving")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        models.prepare_mlm_head(force=True, **small)
    assert first.read_bytes() == before
    assert [p.name for p in first.parent.iterdir()] == ["head.safetensors"]  # no temporary file left behind


def test_a_cache_from_an_older_recipe_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path))
    small = {"n_texts": 64, "epochs": 1, "verbose": False}
    path = models.prepare_mlm_head(**small)
    monkeypatch.setattr(models, "MLM_HEAD_RECIPE", "v-next")
    calls = []
    real = models.warm_up_mlm_head
    monkeypatch.setattr(models, "warm_up_mlm_head", lambda *a, **k: calls.append(1) or real(*a, **k))
    models.prepare_mlm_head(**small)
    assert calls == [1] and path.is_file()


def test_masked_only_loss_equals_the_models_full_loss(tok):
    model = models.load_masked_lm()
    batch = mlm.masking_collator(tok, "token", 0.2, seed=0)(mlm.encode(tok, [SENTENCE, "A short one here."]))
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        ours = models.masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert torch.allclose(full, ours, atol=1e-5)


# --------------------------------------------------------------------------- fill-mask and bad input
def test_fill_mask_returns_k_candidates_per_mask(tok):
    model = models.load_masked_lm()
    out = mlm.fill_mask(model, tok, "The capital of France is [MASK]. It has a [MASK].", k=5)
    assert len(out) == 2 and all(len(c) == 5 for c in out)
    probs = [p for _, p in out[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    table = mlm.fill_mask_table({"a": model, "b": model}, tok, "Insulin is made in the [MASK].", k=3)
    assert table.shape == (3, 2)


@pytest.mark.parametrize("call, message", [
    (lambda tok, m: mlm.fill_mask(m, tok, "no mask here"), r"needs at least one \[MASK\]"),
    (lambda tok, m: mlm.fill_mask(m, tok, "a [MASK]", k=0), "k must be a positive integer"),
    (lambda tok, m: mlm.masking_collator(tok, "token", 1.2), "between 0 and 1"),
    (lambda tok, m: mlm.masking_collator(tok, "token", 0), "between 0 and 1"),
    (lambda tok, m: mlm.masking_collator(tok, "span", 0.15), "unknown masking scheme 'span'"),
    (lambda tok, m: mlm.masking_collator(tok, "whole_word", 0.15, mask_token_only=False), "replaces every"),
    (lambda tok, m: mlm.eval_set(tok, ["a b c"], unit="sentence"), "unit must be 'token' or 'word'"),
    (lambda tok, m: mlm.encode(tok, []), "is empty"),
    (lambda tok, m: mlm.encode(tok, ["fine", None]), r"texts\[1\] is None"),
    (lambda tok, m: mlm.split_corpus(["a", "b"], heldout=1.5), "heldout must be a fraction"),
])
def test_bad_input_gets_a_clear_error(tok, general_model, call, message):
    with pytest.raises(ValueError, match=message):
        call(tok, general_model)


def test_the_panels_run_from_code(cfg, tok):
    general = models.load_masked_lm(cfg)
    panel = mlm.fill_mask_panel({"general": general, "same": general}, tok)
    table = panel.click(sentence="Aspirin can thin the [MASK].")
    assert table.shape == (5, 2)
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        panel.click(sentence="nothing to fill")

    from ftkit.results import ResultsTable

    med_train, med_heldout = mlm.medical_corpus()
    sets = {"medical token": mlm.eval_set(tok, med_heldout[:8]), "general token": mlm.eval_set(tok, ["The film was long but the acting was wonderful throughout."] * 2)}
    results = ResultsTable()
    run = mlm.adaptation_panel(cfg, med_train[:32], sets, results, 1e-4, 48)
    result = run.click(scheme="token", probability=0.2, epochs=1.0)
    assert result.extra["scheme"] == "token" and len(results) == 1 and result.model is None
    assert 0 <= results.rows[0]["medical token top1"] <= 1 and result.seconds > 0
    with pytest.raises(ValueError, match="must be in 0.05..0.5"):
        run.click(probability=0.9)


# --------------------------------------------------------------------------- evaluation helpers
def test_batching_by_length_gives_the_same_scores_as_one_example_at_a_time(tok, general_model):
    texts = data.general_corpus("test")[:10] + data.load("medquad_corpus")["train"]["text"][:6]
    examples = mlm.eval_set(tok, texts, "token")
    assert len({len(e["input_ids"]) for e in examples}) > 5     # lengths differ: batches are reordered and padded
    batched, single = mlm.hidden_topk(general_model, examples, 5, 16), mlm.hidden_topk(general_model, examples, 5, 1)
    assert all(torch.equal(a, b) for a, b in zip(batched, single))
    guesses = mlm.predictions(general_model, examples)
    right = sum(int((g[e["labels"] != -100] == e["labels"][e["labels"] != -100]).sum()) for g, e in zip(guesses, examples))
    scores = mlm.masked_accuracy(general_model, examples)
    assert right == round(scores["top1"] * scores["hidden pieces"]) and scores["hidden pieces"] > 20
    assert all((g == -100).tolist() == (e["labels"] == -100).tolist() for g, e in zip(guesses, examples))


def test_probes_show_the_original_or_a_random_piece_at_the_same_positions(tok, medical):
    examples = mlm.eval_set(tok, medical[:12], "token")
    keep = mlm.shown_instead(examples, tok, "keep")
    shuffled, again = mlm.shown_instead(examples, tok, "random", seed=3), mlm.shown_instead(examples, tok, "random", seed=3)
    changed = total = 0
    for e, k, r, r2 in zip(examples, keep, shuffled, again):
        hidden = e["labels"] != -100
        assert torch.equal(k["labels"], e["labels"]) and torch.equal(r["labels"], e["labels"])
        assert torch.equal(k["input_ids"][hidden], e["labels"][hidden])                  # the original piece shown
        assert torch.equal(k["input_ids"][~hidden], e["input_ids"][~hidden])             # the rest as it was
        assert torch.equal(r["input_ids"], r2["input_ids"])                                # seeded
        changed += int((r["input_ids"][hidden] != e["labels"][hidden]).sum())
        total += int(hidden.sum())
        assert (e["input_ids"][hidden] == tok.mask_token_id).all()                         # the eval set is untouched
    assert changed >= total - 1 and total > 50
    with pytest.raises(ValueError, match="'keep' or 'random'"):
        mlm.shown_instead(examples, tok, "mask")


def test_nothing_hidden_is_refused_rather_than_scored_as_zero(tok, general_model):
    examples = mlm.eval_set(tok, ["A short one."], "token", probability=0.01, seed=0)
    examples = [{**e, "labels": torch.full_like(e["labels"], -100)} for e in examples]
    with pytest.raises(ValueError, match="has a hidden piece"):
        mlm.masked_accuracy(general_model, examples)


def test_the_recorded_runs_depend_on_the_profile_alone(cfg):
    from ftkit import env

    settings = mlm.adaptation_settings(env.PROFILES["cpu"])
    assert settings == mlm.adaptation_settings(env.PROFILES["cpu"]) and settings["sizes"] == mlm.SIZES["cpu"]
    assert [tuple(r) for r in settings["runs"]] == list(mlm.RUNS) and settings["seeds"]
    assert cfg.seed not in settings["seeds"]        # the live run is another seed than the recorded one: two seeds shown
    assert {tuple(r) for r in settings["runs"]} >= {("whole_word", "[MASK] only"), ("token", "[MASK] only"),
                                                    ("token", "80/10/10")}
    assert mlm.adaptation_settings(cfg)["sizes"] == mlm.SIZES["smoke"]


def test_adapt_trains_with_80_10_10_when_asked_and_refuses_it_for_whole_words(cfg, tok, medical):
    model, result = mlm.adapt(cfg, medical[:16], "token", 0.15, max_length=32, mask_token_only=False, seed=5,
                              max_steps=1)
    assert result.extra["replacement"] == "80/10/10" and result.extra["seed"] == 5 and result.steps == 1
    with pytest.raises(ValueError, match="replaces every"):
        mlm.adapt(cfg, medical[:16], "whole_word", 0.15, max_length=32, mask_token_only=False, max_steps=1)


def test_the_sweep_scores_each_run_and_the_table_averages_its_seeds(cfg, monkeypatch):
    monkeypatch.setitem(mlm.SIZES, "smoke", {"train": 16, "heldout": 4, "ppl": 1, "max_length": 32})
    monkeypatch.setattr(mlm, "RUNS", (("token", "80/10/10"),))
    monkeypatch.setitem(mlm.SWEEP_SEEDS, "smoke", [42])
    rows = mlm.adaptation_sweep(cfg)
    assert [(r["scheme"], r["replacement"], r["seed"]) for r in rows] == [("token", "80/10/10", 42)]
    assert rows[0]["steps"] == cfg.profile.max_steps and rows[0]["medical pseudo-ppl"] > 1
    assert 0 <= rows[0]["medical keep top1"] <= 1 and 0 <= rows[0]["medical random top1"] <= 1
    twice = rows + [{**rows[0], "seed": 43, "medical token top1": rows[0]["medical token top1"] + 0.1}]
    table = mlm.adaptation_table([{"model": "live", **rows[0]}], twice)
    assert list(table.index) == ["live", "token, 80/10/10 (recorded, mean of 2 seeds)"]
    assert abs(table.loc["token, 80/10/10 (recorded, mean of 2 seeds)", "medical token top1"]
               - rows[0]["medical token top1"] - 0.05) < 1e-9
    low, high = rows[0]["medical token top1"], rows[0]["medical token top1"] + 0.1
    assert table.loc["token, 80/10/10 (recorded, mean of 2 seeds)", "medical top1 range"] == f"{low:.3f}..{high:.3f}"
    single = mlm.adaptation_table([], rows)
    assert list(single.index) == ["token, 80/10/10 (recorded, seed 42)"] and "medical top1 range" not in single
    assert single.iloc[0]["medical token top1"] == rows[0]["medical token top1"]
