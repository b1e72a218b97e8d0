import numpy as np
import pytest
import torch

from ftkit import choose, data, instruct, models


@pytest.fixture(scope="module")
def causal(cfg):
    return models.load_causal(cfg)


@pytest.fixture(scope="module")
def pool():
    return list(data.take(data.load("rotten_tomatoes")["train"], 12, seed=1))


@pytest.fixture(scope="module")
def index(cfg):
    qa = data.load("medquad_qa")
    answers = list(data.take(qa["train"], 40, seed=0)["answer"]) + list(data.take(qa["test"], 10, seed=0)["answer"])
    return choose.AnswerIndex(answers, models.load_sentence_model(cfg))


# --------------------------------------------------------------------------- prompts with k examples
def test_k_examples_are_earlier_turns_and_k0_is_session_05s_prompt(causal, pool):
    _, tok = causal
    assert choose.few_shot_prompt("a fine film", [], tok) == \
        instruct.render({"instruction": instruct.SENTIMENT_INSTRUCTION.format(text="a fine film")}, tok, "alpaca")
    shots = choose.draw_shots(pool, 2, seed=0)
    text = choose.few_shot_prompt("a fine film", shots, tok)
    for s in shots:     # each solved example is a full earlier turn: its review, then its label as the response
        assert f"Review: {s['text']}\n### Response:\n{choose.LABEL_WORDS[s['label']]}\n\n" in text
    assert text.count("### Response:") == 3 and text.endswith("Review: a fine film\n### Response:\n")
    assert choose.draw_shots(pool, 2, seed=0) == shots and choose.draw_shots(pool, 2, seed=1) != shots
    chat = choose.few_shot_prompt("a fine film", shots, tok, template="chat")
    assert chat.count("<|im_start|>assistant") == 3 and "a fine film" in chat


def test_prompt_tokens_grow_with_k(causal, pool):
    _, tok = causal
    counts = [choose.check_fits(choose.few_shot_prompts(["a fine film"], pool, k, 0, tok), tok, 8192)[0]
              for k in (0, 1, 2, 4)]
    assert counts == sorted(counts) and len(set(counts)) == 4
    prompt = choose.few_shot_prompts(["a fine film"], pool, 1, 0, tok)[0]
    assert counts[1] == len(tok(prompt, add_special_tokens=False)["input_ids"])


def test_context_length_guard_names_the_token_count(causal, pool):
    model, tok = causal
    assert choose.context_length(model) == 8192
    prompts = choose.few_shot_prompts(["a fine film"], pool, 8, 0, tok)
    n = len(tok(prompts[0], add_special_tokens=False)["input_ids"])
    with pytest.raises(ValueError, match=rf"longest prompt is {n} tokens.*context of 100 tokens.*lower k"):
        choose.check_fits(prompts, tok, 100)


def test_k_larger_than_the_pool_or_negative_is_refused(pool):
    with pytest.raises(ValueError, match="k=13 examples asked for, but the pool .* has only 12"):
        choose.draw_shots(pool, 13, 0)
    with pytest.raises(ValueError, match=">= 0"):
        choose.draw_shots(pool, -1, 0)


# --------------------------------------------------------------------------- label-word scoring
def test_label_word_scores_are_the_next_token_log_probs_and_ignore_padding(causal):
    model, tok = causal
    prompts = [instruct.prompt({"instruction": "Say positive."}),
               instruct.prompt({"instruction": instruct.SENTIMENT_INSTRUCTION.format(text="a long and rather dull film")})]
    scores = choose.label_word_scores(model, tok, prompts, batch_size=2)      # left-padded batch
    ids = choose.label_word_ids(tok)
    assert all(len(spellings) >= 2 for spellings in ids)                   # "positive", " positive", ...
    for i, p in enumerate(prompts):                                            # one at a time, no padding
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(model(**enc).logits[0, -1].float(), -1)
        expected = [float(logp[spellings].logsumexp(-1)) for spellings in ids]   # a label: all its spellings
        np.testing.assert_allclose(scores[i], expected, atol=1e-3)
    assert (scores < 0).all() and tok.padding_side == "right"


def test_cached_prefix_gives_the_scores_of_the_whole_prompts(causal, pool):
    """The k examples' keys and values computed once and copied for each batch give the scores of scoring every
    prompt whole (float rounding only), in batches of mixed lengths; and the cache is really used (fewer tokens
    run: the shared prefix is long)."""
    model, tok = causal
    texts = ["a moving, beautifully acted film", "dull", "the plot is thin and the jokes fall flat, but the cast "
             "is likable enough to carry it through the slow middle stretch", "great fun"]
    for k in (0, 4):
        prompts = choose.few_shot_prompts(texts, pool, k, 0, tok)
        whole = choose.label_word_scores(model, tok, prompts, batch_size=3, cache_prefix=False)
        cached = choose.label_word_scores(model, tok, prompts, batch_size=3, cache_prefix=True)
        np.testing.assert_allclose(cached, whole, atol=1e-4)
        one_by_one = np.stack([choose.label_word_scores(model, tok, [p], cache_prefix=False)[0] for p in prompts])
        np.testing.assert_allclose(cached, one_by_one, atol=1e-4)
        shared = choose.shared_prefix_length(tok(prompts, add_special_tokens=False)["input_ids"])
        assert shared > (200 if k == 4 else 15)          # the instruction, and the 4 examples
    row = choose.kshot_eval(model, tok, [{"text": t, "label": 1} for t in texts], pool, 4)
    assert row["cached prefix tokens"] == shared and row.scores.shape == (4, 2)
    assert (row.predicted == row.scores.argmax(1)).all() and row["accuracy"] == np.mean(row.predicted == 1)


def test_a_cache_that_skipped_the_positions_would_be_caught(causal, pool):
    """The equality above can fail: continuing the cache with positions that restart at 0 changes the scores."""
    model, tok = causal
    prompts = choose.few_shot_prompts(["a moving, beautifully acted film"], pool, 2, 0, tok)
    tokens = tok(prompts, add_special_tokens=False)["input_ids"]
    shared = len(tokens[0]) - 5
    prefix = choose.prefix_cache(model, tokens[0][:shared])
    right = choose.next_token_logits(model, [tokens[0][shared:]], tok.pad_token_id, prefix, shared)
    wrong = choose.next_token_logits(model, [tokens[0][shared:]], tok.pad_token_id, prefix, 0)
    whole = choose.next_token_logits(model, tokens, tok.pad_token_id)
    assert torch.allclose(right, whole, atol=1e-3) and not torch.allclose(wrong, whole, atol=1e-2)
    assert prefix.get_seq_length() == shared                 # the prefix cache is not changed by its use


def test_the_kshot_sweep_has_every_k_and_draw_and_reproduces_uncached_scoring(cfg, causal):
    """The recorded sweep's code: one row per k and draw, on `kshot_rows`; its last row (k = 8, cached prefix)
    equals the same point scored whole, without the cache."""
    settings = choose.kshot_settings(cfg.profile)
    rows = choose.kshot_sweep(cfg)
    assert [(r["k"], r["draw"]) for r in rows] == [(k, d) for k in settings["k"]
                                                   for d in (range(1) if k == 0 else range(settings["draws"]))]
    model, tok = causal
    test_rows, pool = choose.kshot_rows(settings)
    assert len(test_rows) == settings["test reviews"] and len(pool) == settings["pool"]
    whole = choose.kshot_eval(model, tok, test_rows, pool, rows[-1]["k"], rows[-1]["draw"], cache_prefix=False)
    assert whole["accuracy"] == rows[-1]["accuracy"] and whole["prompt tokens"] == rows[-1]["prompt tokens"]
    assert rows[-1]["cached prefix tokens"] > 300 and whole["cached prefix tokens"] == 0


def test_shared_prefix_and_batches_by_length():
    assert choose.shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert choose.shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2          # one token left to score in each
    assert choose.shared_prefix_length([[7, 8]]) == 1 and choose.shared_prefix_length([]) == 0
    assert choose.shared_prefix_length([[1, 2], []]) == 0
    assert choose.batches_by_length([3, 9, 1, 7, 5], 2) == [[1, 3], [4, 0], [2]]
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        choose.batches_by_length([1], 0)


def test_instruction_replaces_session_05s_and_needs_a_text_slot(causal, pool):
    _, tok = causal
    vague = "What do you think?\n\nReview: {text}"
    text = choose.few_shot_prompt("a fine film", choose.draw_shots(pool, 1, 0), tok, instruction=vague)
    assert text.count("What do you think?") == 2 and text.endswith("Review: a fine film\n### Response:\n")
    with pytest.raises(ValueError, match=r"\{text\} slot"):
        choose.few_shot_prompt("a fine film", [], tok, instruction="What do you think?")


def test_answer_prefix_is_prefilled_before_the_label_word(causal, pool):
    model, tok = causal
    rows = [{"text": "a moving, beautifully acted film", "label": 1}]
    plain = choose.kshot_eval(model, tok, rows, pool, 0)
    prefilled = choose.kshot_eval(model, tok, rows, pool, 0, answer_prefix=choose.ANSWER_PREFIX)
    n_prefix = len(tok(choose.ANSWER_PREFIX, add_special_tokens=False)["input_ids"])
    assert prefilled["prompt tokens"] - plain["prompt tokens"] == pytest.approx(n_prefix, abs=1)
    assert prefilled["accuracy"] == 1.0      # after "The sentiment of this movie review is", " positive"


def test_label_words_must_start_with_different_tokens(causal):
    _, tok = causal
    with pytest.raises(ValueError, match="start with the same token"):
        choose.label_word_ids(tok, ("positive", "positive!"))


def test_kshot_eval_reports_accuracy_tokens_and_time(causal, pool):
    model, tok = causal
    rows = list(data.take(data.load("rotten_tomatoes")["test"], 4, stratify="label"))
    r = choose.kshot_eval(model, tok, rows, pool, 2, seed=0)
    assert r["k"] == 2 and r["accuracy"] in (0, 0.25, 0.5, 0.75, 1) and r["prompt tokens"] > 50
    assert r["ms per prediction"] > 0


# --------------------------------------------------------------------------- retrieval
def test_retrieval_finds_an_answer_copied_from_the_index(index):
    hits = index.search([index.answers[7], index.answers[42]], 3)
    assert [h[0][0] for h in hits] == [7, 42] and hits[0][0][1] == pytest.approx(1.0, abs=1e-4)
    assert hits[0][0][1] >= hits[0][1][1] >= hits[0][2][1]
    assert choose.recall_at_k(index, [index.answers[7]], [index.answers[7]], ks=(1,)) == {"recall@1": 1.0}


def test_recall_counts_a_miss(index):
    assert choose.recall_at_k(index, [index.answers[7]], ["not in the index"], ks=(1, 5)) == \
        {"recall@1": 0.0, "recall@5": 0.0}


def test_retrieval_bad_input(index, cfg):
    with pytest.raises(ValueError, match="question is empty"):
        index.search(["  "], 3)
    for k in (0, -2):
        with pytest.raises(ValueError, match="top_k must be a positive"):
            index.search(["What causes asthma?"], k)
    with pytest.raises(ValueError, match="index holds only 50 answers"):
        index.search(["What causes asthma?"], 51)
    with pytest.raises(ValueError, match="at least one answer"):
        choose.AnswerIndex([], None)


def test_rag_row_puts_the_passages_in_the_context():
    row = choose.rag_row("What causes asthma?", ["Passage one.", "Passage two."])
    text = instruct.prompt(row)
    assert "### Context:\nPassage 1: Passage one.\n\nPassage 2: Passage two.\n### Response:\n" in text
    assert "Question: What causes asthma?" in row["instruction"]
    with pytest.raises(ValueError, match="question is empty"):
        choose.rag_row("", ["x"])


def test_qa_scores_use_session_05s_metrics(cfg):
    rows = [{"question": "What is asthma?", "answer": "Asthma is a chronic disease of the airways."}]
    scored = choose.qa_scores("x", ["Asthma is a chronic disease of the airways."], rows,
                              models.load_sentence_model(cfg))
    assert scored.loc[0, "rougeL"] == pytest.approx(1.0) and scored.loc[0, "cosine"] == pytest.approx(1.0, abs=1e-4)
    assert scored.loc[0, "words"] == 8 and not scored.loc[0, list(instruct.ERRORS)].any()


def test_the_index_is_cached_on_disk_by_model_and_answers(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("FTKIT_CACHE", str(tmp_path))
    sentence = models.load_sentence_model(cfg)
    answers = ["Asthma narrows the airways.", "Vaccines train the immune system."]
    first = choose.AnswerIndex(answers, sentence)
    files = list((tmp_path / "answer_index").glob("*.npy"))
    assert len(files) == 1
    np.save(files[0], np.zeros_like(first.vectors))          # a second index reads the file, not the model
    assert not choose.AnswerIndex(answers, sentence).vectors.any()
    assert choose.AnswerIndex(answers[:1], sentence).vectors.any()          # other answers: another key
    assert choose.AnswerIndex(answers, sentence, cache=False).vectors.any()


def test_generate_by_length_keeps_the_order_of_the_rows(causal):
    model, tok = causal
    rows = [{"instruction": "Name a colour."}, choose.rag_row("What causes asthma?", ["A long passage. " * 20]),
            {"instruction": "Say hi."}]
    by_length = choose.generate_by_length(model, tok, rows, max_new_tokens=3, batch_size=2)
    assert by_length == [instruct.generate(model, tok, [r], max_new_tokens=3)[0] for r in rows]


def test_paired_difference_and_its_interval():
    d = choose.paired_difference([0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6, 0.7])
    assert d["mean"] == pytest.approx(0.1) and d["low"] == pytest.approx(0.1) and d["clear"]
    tie = choose.paired_difference([0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.8, 0.2])
    assert tie["low"] < 0 < tie["high"] and not tie["clear"] and tie["shown"].startswith("+0.000 (")
    with pytest.raises(ValueError, match="same items"):
        choose.paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="no values"):
        choose.bootstrap_mean([float("nan")])


def test_knowledge_sets_separate_trained_seen_focus_and_unseen_focus():
    train = [{"id": f"{f}-{q}", "focus": f, "question": f"{q} {f}?", "answer": f"{f} {q}."}
             for f in "ABCDEF" for q in ("what", "how", "why")]
    test = [{"id": f"T{i}", "focus": f"T{i}", "question": "?", "answer": "."} for i in range(5)]
    tuned = [r["id"] for r in train if r["id"].endswith("what") and r["focus"] in "ABC"]
    sets = choose.knowledge_sets(train, test, tuned, n=3)
    assert {r["id"] for r in sets["trained"]} == set(tuned)
    assert all(r["focus"] in "ABC" and r["id"] not in tuned for r in sets["seen focus, new question"])
    assert sets["unseen focus"] == [r for r in test if r in sets["unseen focus"]] and len(sets["unseen focus"]) == 3
    with pytest.raises(ValueError, match="'trained' has 3 answers, fewer than n=4"):
        choose.knowledge_sets(train, test, tuned, n=4)


def test_answer_losses_are_the_held_out_loss_of_each_answer(causal):
    from datasets import Dataset

    model, tok = causal
    rows = [{"question": "What is asthma?", "answer": "Asthma is a chronic disease of the airways."},
            {"question": "What is asthma?", "answer": "Purple elephants sing in the tax office."}]
    losses = choose.answer_losses(model, tok, rows, max_length=64)
    pairs = Dataset.from_list([{"instruction": r["question"], "context": "", "response": r["answer"]} for r in rows])
    pooled = instruct.held_out_loss(model, instruct.tokenize_instructions(pairs.select([0]), tok, 64), tok)
    assert losses.shape == (2,) and losses[0] == pytest.approx(pooled, rel=1e-4)
    assert losses[0] < losses[1]                               # the sensible answer is the likelier one


# --------------------------------------------------------------------------- costs
def test_costs_are_measured_in_a_fresh_process_and_say_what_was_measured():
    row = choose.costs("encoder", profile="smoke", steps=1, batch=2, length=16)
    assert row["model"] == "all-MiniLM-L6-v2" and row["checkpoint dtype"] == "float32"
    assert row["parameters"] > 20e6 and 80 < row["disk MB"] < 100 and row["to load MB"] > 0
    assert row["memory measured"] == "process RAM (RSS)" and "float32 weights, on the CPU" in row["setting"]
    assert 0 < row["LoRA trainable"] < row["full trainable"] == row["parameters"]
    assert row["fine-tune full MB"] > 0 and row["fine-tune LoRA MB"] > 0
    # the rule for the same steps, above the loaded model: full fine-tuning adds 12 bytes per parameter at least
    assert row["estimate: fine-tune full MB"] > row["parameters"] * 12 / 2**20 > row["estimate: fine-tune LoRA MB"]


def test_counted_costs_count_what_the_kernel_holds_and_measure_nothing(cfg, causal):
    row = choose.counted_costs("causal", cfg, causal[0])
    assert 130e6 < row["parameters"] < 140e6 and 400 < row["disk MB"] < 600      # SmolLM2-135M in safetensors
    assert row["to load MB"] is None and row["fine-tune full MB"] is None and row["fine-tune LoRA MB"] is None
    assert "not measured" in row["setting"] and "not measured" in row["memory measured"]
    assert row["checkpoint dtype"] == "float32" and row["model"] == "SmolLM2-135M-Instruct"


def test_on_a_small_machine_each_scoring_batch_hands_its_freed_memory_back(causal, monkeypatch):
    model, tok = causal
    prompts = [instruct.prompt({"instruction": f"Review {i}: fine."}) for i in range(5)]
    plain = choose.label_word_scores(model, tok, prompts, batch_size=2)
    released = []
    monkeypatch.setattr(choose, "is_small", lambda: True)
    monkeypatch.setattr(choose, "release_freed_memory", lambda: released.append(1))
    assert np.allclose(choose.label_word_scores(model, tok, prompts, batch_size=2), plain, atol=1e-5)
    assert len(released) == 3           # 5 prompts in batches of 2
