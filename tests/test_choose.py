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
