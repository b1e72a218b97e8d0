import math

import pytest
import torch
from datasets import Dataset

from ftkit import data, instruct, models, train

ROW = {"instruction": "What is the capital of France?", "context": "", "response": "Paris is the capital."}


@pytest.fixture(scope="module")
def causal(cfg):
    model, tok = models.load_causal(cfg)
    return model, tok


# --------------------------------------------------------------------------- data checks
def test_missing_columns_are_named_with_a_rename_hint():
    ds = Dataset.from_dict({"question": ["hi"], "answer": ["hello"]})
    with pytest.raises(ValueError, match=r"missing \['instruction', 'response'\].*rename_column"):
        instruct.check_instruction_data(ds)


@pytest.mark.parametrize("response", ["", "   ", None])
def test_empty_response_names_the_row(response):
    ds = Dataset.from_dict({"instruction": ["fine", "bad"], "response": ["ok", response]})
    with pytest.raises(ValueError, match="row 1: the response is empty"):
        instruct.check_instruction_data(ds)
    with pytest.raises(ValueError, match="row 1"):
        instruct.sft_dataset(ds)


def test_quality_checks_fire_on_crafted_rows():
    good = [{"instruction": f"Name a fact about the number {i}.", "context": "", "response": f"{i} is a number " * 3}
            for i in range(20)]
    rows = good + [
        {"instruction": "Who painted the Girl with a Pearl Earring?", "context": "", "response": "Vermeer"},  # fine
        {"instruction": "Say something.", "context": "", "response": "."},  # near-empty
        dict(good[0]),  # duplicate
        {"instruction": "Describe it.", "context": "", "response": "word " * 400},  # length outlier
        {"instruction": "What is the tallest mountain on Earth?", "context": "",
         "response": "What is the tallest mountain on Earth?"},  # restates
    ]
    flags = instruct.quality_flags(rows)
    assert not any(flags[20].values()), "a correct one-word answer is not near-empty"
    assert flags[21]["near-empty"] and flags[22]["duplicate"] and flags[23]["length outlier"]
    assert flags[24]["restates instruction"]
    assert not any(any(f.values()) for f in flags[:20])
    cleaned = instruct.clean(Dataset.from_list(rows))
    assert len(cleaned) == 21


# --------------------------------------------------------------------------- templates
def test_alpaca_template_renders_instruction_and_context():
    text = instruct.prompt({**ROW, "context": "France is in Europe."})
    assert text == ("### Instruction:\nWhat is the capital of France?\n### Context:\nFrance is in Europe.\n"
                    "### Response:\n")
    assert "### Context" not in instruct.prompt(ROW)


def test_a_template_without_an_instruction_slot_is_refused():
    with pytest.raises(ValueError, match=r"no \{instruction\} slot"):
        instruct.prompt(ROW, template="### Question:\n### Answer:\n")


def test_chat_template_is_the_models_own(causal):
    _, tok = causal
    text = instruct.render(ROW, tok, "chat")
    assert text.endswith("<|im_start|>assistant\n") and ROW["instruction"] in text
    assert instruct.ending(tok, "chat") == "<|im_end|>\n" and instruct.ending(tok, "alpaca") == tok.eos_token
    with pytest.raises(ValueError, match="template must be one of"):
        instruct.render(ROW, tok, "vicuna")


# --------------------------------------------------------------------------- labels and loss
@pytest.mark.parametrize("template", instruct.TEMPLATES)
def test_prompt_tokens_get_minus_100_and_response_tokens_are_kept(causal, template):
    _, tok = causal
    ex = instruct.label_example(ROW, tok, template)
    n_prompt = len(tok(instruct.render(ROW, tok, template), add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [-100] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tok.decode(ex["input_ids"][n_prompt:]).startswith(ROW["response"])
    assert tok.eos_token_id in ex["labels"][-2:]  # the end token is learned: the model learns to stop
    short = instruct.label_example(ROW, tok, template, max_length=5)
    assert len(short["input_ids"]) == len(short["labels"]) == 5


def test_hand_computed_loss_equals_the_models_loss(causal):
    model, tok = causal
    ex = instruct.label_example(ROW, tok)
    batch = {k: torch.tensor([v]) for k, v in ex.items()}
    with torch.no_grad():
        out = model(**batch)
    assert instruct.hand_loss(out.logits, batch["labels"]).item() == pytest.approx(out.loss.item(), abs=1e-5)


@pytest.mark.parametrize("template", instruct.TEMPLATES)
def test_trl_trains_on_exactly_our_labels(cfg, causal, template):
    from trl import SFTConfig, SFTTrainer

    model, tok = causal
    rows = data.load("dolly")["train"].select(range(6))
    args = train.training_args(cfg, args_class=SFTConfig, max_length=128, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=instruct.sft_dataset(rows, template),
                         processing_class=tok)
    for i, prepared in enumerate(trainer.train_dataset):
        ours = instruct.label_example(rows[i], tok, template, max_length=128)
        assert prepared["input_ids"] == ours["input_ids"] and prepared["labels"] == ours["labels"]


def test_padding_waste_counts_pad_tokens():
    waste = instruct.padding_waste([10, 20, 30, 40], batch_size=2, max_length=40, seed=0)
    assert waste["real tokens"] == 100
    assert waste["fixed padding %"] == pytest.approx(100 * (1 - 100 / 160))
    assert 0 <= waste["dynamic padding %"] < waste["fixed padding %"]


def test_sft_full_and_lora_train_and_report(cfg, causal, capsys):
    _, tok = causal
    rows = dolly_rows(tok, longer_than=90, n=1, short=3)        # one prompt fills max_length: trl drops that row
    full_model, _ = models.load_causal(cfg)
    before = {n: p.detach().clone() for n, p in full_model.named_parameters() if "layers.0.mlp" in n}
    full = instruct.sft(full_model, tok, rows, cfg, name="full", max_length=64, max_steps=1,
                        per_device_train_batch_size=2, learning_rate=1e-4, logging_steps=1)
    assert full.trainable_pct == 100 and full.loss_history and math.isfinite(full.loss_history[0][1])
    assert full.extra["rows without response tokens"] == 1
    assert "training data: 1 of 4 rows lose every response token at max_length=64" in capsys.readouterr().out
    assert any(not torch.equal(before[n], p) for n, p in full_model.named_parameters() if n in before)
    lora_model, _ = models.load_causal(cfg)
    targets = set(models.lora_targets(lora_model, "all-linear"))
    run = instruct.sft(lora_model, tok, rows, cfg, name="lora", lora_rank=2, max_length=64, max_steps=1,
                       per_device_train_batch_size=2, learning_rate=1e-3)
    assert 0 < run.trainable_pct < 2 and hasattr(run.model, "disable_adapter")
    # every Linear of the blocks, read from the model (models.lora_targets "all-linear"), not a list of Llama names
    assert set(run.model.peft_config["default"].target_modules) == targets \
        == {f"self_attn.{n}_proj" for n in "qkvo"} | {f"mlp.{n}_proj" for n in ("gate", "up", "down")}
    with pytest.raises(ValueError, match="lora_rank must be a positive integer"):
        instruct.sft(lora_model, tok, rows, cfg, name="bad", lora_rank=0)


# --------------------------------------------------------------------------- judge
@pytest.mark.parametrize("reply, score", [("Score: 4", 4), ("4", 4), ("**Score:** 5", 5), ("Score: 3/5", 3),
                                          ("The score is 2.", 2), ("Score: 1. Use public transport", 1)])
def test_score_parser_reads_common_formats(reply, score):
    assert instruct.parse_score(reply) == score


@pytest.mark.parametrize("reply, message", [("Score: 7", "outside 1..5"), ("Score: 0", "outside 1..5"),
                                            ("It is a good answer.", "no score"), ("", "no score"),
                                            ("5 stars", "no score"), ("The correct answer is 290", "no score")])
def test_score_parser_rejects_malformed_judge_output(reply, message):
    with pytest.raises(ValueError, match=message):
        instruct.parse_score(reply)


@pytest.mark.parametrize("reply, choice", [("A", "A"), ("B.", "B"), ("Answer: A", "A"), ("answer b", "B"),
                                           ("Answer B is better.", "B"), ("B is a better answer", "B")])
def test_choice_parser(reply, choice):
    assert instruct.parse_choice(reply) == choice


@pytest.mark.parametrize("reply", ["Both", "", "AB", "A or B", "Answer A, because B is short"])
def test_choice_parser_rejects_ambiguous_replies(reply):
    with pytest.raises(ValueError, match="A or B"):
        instruct.parse_choice(reply)


def test_unparsed_judge_scores_are_counted_not_guessed(causal, monkeypatch):
    model, tok = causal
    monkeypatch.setattr(instruct, "complete", lambda *a, **k: [" 4", " great answer!", " 9"])
    out = instruct.judge_scores(model, tok, ["q"] * 3, ["r"] * 3, ["a"] * 3)
    assert out["scores"] == [4, None, None] and out["parse failures"] == 2
    assert out["replies"][0] == "Score:  4"


def test_judge_pairs_ask_both_orders_and_measure_position_bias(causal, monkeypatch):
    model, tok = causal
    seen = []

    def always_a(judge, tokenizer, texts, *a, **k):
        seen.extend(texts)
        return ["A"] * len(texts)

    monkeypatch.setattr(instruct, "complete", always_a)
    pairs = instruct.judge_pairs(model, tok, ["q1", "q2"], ["first answer here", "second answer there"])
    assert len(pairs) == 8 and len(seen) == 16
    rel = instruct.judge_reliability(pairs)
    assert rel["picks A %"] == 100 and rel["consistent when swapped %"] == 0 and rel["prefers reference %"] == 50
    assert (pairs["prefers reference"] == 0.5).all()                  # a share of the two orders, not a count
    monkeypatch.setattr(instruct, "complete", lambda judge, tokenizer, texts, *a, **k:
                        [" A", " B", " A", " A or B"] * (len(texts) // 4))   # every other pair: order 2 unparsed
    pairs = instruct.judge_pairs(model, tok, ["q1", "q2"], ["first one", "second one"])
    assert pairs["pick (ref=B)"].isna().sum() == 4                    # parsed and unparsed picks in one column
    rel = instruct.judge_reliability(pairs)
    assert rel["unparsed replies"] == 4 and rel["picks A %"] == pytest.approx(200 / 3)
    assert rel["consistent when swapped %"] == 50 and rel["prefers reference %"] == 75


def test_recorded_judge_calls_are_reused_checked_on_their_last_batch_and_other_calls_asked(causal, monkeypatch):
    model, tok = causal
    asked = []

    def by_length(judge, tokenizer, texts, *a, **k):                  # a reply that depends on its prompt
        asked.append(list(texts))
        return [f" {len(t) % 5 + 1}" for t in texts]

    monkeypatch.setattr(instruct, "complete", by_length)
    monkeypatch.setattr(instruct, "is_small", lambda: True)          # batches of 4, as the cpu recording's
    ins = [f"question {'x' * i}" for i in range(6)]
    refs, answers = [f"reference {i}" for i in range(6)], [f"answer {i}" for i in range(6)]
    recording = instruct.JudgeReplies()
    recorded = instruct.judge_scores(model, tok, ins, refs, answers, recording)
    rows = recording.rows()
    assert sum(recording.asked_now.values()) == 6 and len(rows) == 6
    assert {(r["part"], r["batch"]) for r in rows} == {("judge", 4)}
    reread = instruct.JudgeReplies(instruct.judge_calls(rows))
    prompts = asked.pop()
    assert instruct.judge_scores(model, tok, ins, refs, answers, reread) == recorded
    assert len(asked) == 1                  # only the last batch of 4 + 2 asked again: the two shortest prompts
    assert asked[0] == [prompts[i] for i in instruct.longest_first(tok, prompts)[-2:]]
    assert list(reread.reused.values()) == [{"replies": 6, "identical": 2, "checked": 2, "batches": (4, 4)}]
    assert not reread.asked_now and "at a time" not in reread.line
    assert ("6 replies from the recording (each call's shortest prompts asked again now: 2 of 2 identical)"
            in reread.line)
    instruct.judge_scores(model, tok, ins, refs, answers, reread)     # the cell run again: counted once
    assert len(reread.reused) == 1 and reread.checked == 2
    recorded_at_8 = instruct.JudgeReplies(instruct.judge_calls([{**r, "batch": 8} for r in rows]))
    instruct.judge_scores(model, tok, ins, refs, answers, recorded_at_8)   # a batch this machine cannot repeat
    assert recorded_at_8.checked == 6 and "recorded 8 prompts at a time, asked again 4 at a time" in recorded_at_8.line
    instruct.judge_scores(model, tok, ins[:5], refs[:5], answers[:5], reread)     # other prompts: asked now
    assert sum(reread.asked_now.values()) == 5 and len(asked[-1]) == 5 and "5 replies asked now" in reread.line
    monkeypatch.setattr(instruct, "complete", lambda judge, tokenizer, texts, *a, **k: [" 9"] * len(texts))
    changed = instruct.JudgeReplies(instruct.judge_calls(rows))
    out = instruct.judge_scores(model, tok, ins, refs, answers, changed)         # a judge that now replies otherwise
    assert not changed.reused and list(changed.rejected.values()) == [(0, 2)] and sum(changed.asked_now.values()) == 6
    assert "gave 0 identical replies now, so the whole call was asked now" in changed.line
    instruct.judge_scores(model, tok, ins, refs, answers, changed)         # asked now again: one call, kept once
    assert len(changed.calls) == 1 and sum(changed.asked_now.values()) == 6
    monkeypatch.setattr(instruct, "complete", by_length)                   # the judge agrees again: reused, and
    instruct.judge_scores(model, tok, ins, refs, answers, changed)         # nothing stale is left in the line
    assert len(changed.reused) == 1 and not changed.asked_now and not changed.rejected
    assert "asked now" not in changed.line.replace("asked again now", "")
    assert out["parse failures"] == 6                                  # its own replies, asked now, not the recording's


def test_judge_pairs_need_two_references_and_say_which_setting(causal):
    model, tok = causal
    with pytest.raises(ValueError, match="at least 2 references.*N_PAIRS between 2 and N_EVAL"):
        instruct.judge_pairs(model, tok, ["q1"], ["only one"])


# --------------------------------------------------------------------------- corruptions
def test_corruptions():
    ref = "The Eiffel Tower is in Paris and it was finished in 1889 for the fair"
    assert instruct.corrupt(ref, "truncated") == "The Eiffel Tower is in"  # a third of 16 words
    rep = instruct.corrupt(ref, "repeated")
    assert rep.count("The Eiffel Tower") == 3 and len(rep.split()) > len(ref.split())
    assert instruct.corrupt(ref, "other answer", "Blue.") == "Blue."
    typo = instruct.corrupt(ref, "misspelled", seed=1)
    assert typo != ref and sorted(typo) == sorted(ref) and len(typo.split()) == len(ref.split())
    assert instruct.corrupt(ref, "misspelled", seed=1) == typo  # seeded
    with pytest.raises(ValueError, match="different answer"):
        instruct.corrupt(ref, "other answer", ref)
    with pytest.raises(ValueError, match="unknown corruption"):
        instruct.corrupt(ref, "shuffled")


# --------------------------------------------------------------------------- error taggers
@pytest.mark.parametrize("answer, expected", [
    ("", "empty"),
    (" ... ", "empty"),
    ("Paris. " + "It is a lovely city with many museums and parks. " * 4, "too long"),
    ("the cat sat on the mat the cat sat on the mat the cat sat on the mat", "repetitive"),
    ("Teh capitl of Frnace is Parsi", "non-words"),
    ("What is the capital of France? It is Paris.", "copies instruction"),
])
def test_error_taggers_on_crafted_answers(answer, expected):
    tags = instruct.tag_errors(answer, "What is the capital of France?", "Paris is the capital of France.")
    assert tags[expected], tags
    assert not any(instruct.tag_errors("Paris is the capital of France.", "What is the capital of France?",
                                       "Paris is the capital of France.").values())


def test_error_counts_add_up():
    counts = instruct.error_counts(["", "Paris"], ["Where?", "Where?"], ["Paris", "Paris"])
    assert counts["empty"] == 1 and set(counts) == set(instruct.ERRORS)


# --------------------------------------------------------------------------- evaluation and forgetting
def test_summary_and_agreement_leave_unparsed_judge_scores_out():
    import pandas as pd

    scored = pd.DataFrame({"model": ["m"] * 4, "rouge1": [0.1, 0.2, 0.3, 0.4], "rouge2": [0.0] * 4,
                           "rougeL": [0.1, 0.2, 0.3, 0.4], "cosine": [0.2, 0.4, 0.6, 0.8], "judge": [1, 2, None, 4]})
    row = instruct.summarize(scored).iloc[0]
    assert row["judge parse failures"] == 1 and row["judge"] == pytest.approx(7 / 3)
    assert instruct.metric_agreement(scored).loc["rougeL", "cosine"] == pytest.approx(1.0)
    no_judge = scored.assign(judge=None, **{"judge reply": None})          # score_answers without a judge
    assert instruct.summarize(no_judge).iloc[0]["judge parse failures"] == 0
    assert list(instruct.metric_agreement(no_judge).columns) == ["rougeL", "cosine"]


def test_sentiment_instructions_and_parser():
    rt = data.take(data.load("rotten_tomatoes")["test"], 4, stratify="label")
    rows = instruct.sentiment_instructions(rt)
    assert set(rows["response"]) == {"positive", "negative"} and "Review:" in rows[0]["instruction"]
    assert instruct.parse_sentiment("Positive.") == "positive"
    assert instruct.parse_sentiment("The sentiment is negative") == "negative"
    assert instruct.parse_sentiment("positive or negative") is None and instruct.parse_sentiment("meh") is None
    with pytest.raises(ValueError, match="text"):
        instruct.sentiment_instructions(Dataset.from_dict({"sentence": ["x"], "label": [0]}))


def test_sentiment_instructions_take_string_labels_and_name_a_bad_one():
    """Before: a string label raised TypeError (tuple indices must be integers) from inside datasets' map."""
    rows = instruct.sentiment_instructions(Dataset.from_dict({"text": ["good", "bad"], "label": ["positive", "negative"]}))
    assert rows["response"] == ["positive", "negative"]
    assert instruct.sentiment_instructions(Dataset.from_dict({"text": ["a"], "label": [1]}))["response"] == ["positive"]
    for label in ("pos", 2, -1):
        with pytest.raises(ValueError, match=rf"row 0: label {label!r} is neither a class id 0..1 nor one of"):
            instruct.sentiment_instructions(Dataset.from_dict({"text": ["a"], "label": [label]}))
    custom = instruct.sentiment_instructions(Dataset.from_dict({"text": ["a"], "label": ["neutral"]}),
                                             label_names=("negative", "neutral", "positive"))
    assert custom["response"] == ["neutral"]


def test_as_base_switches_lora_off(cfg, causal):
    from peft import LoraConfig, get_peft_model

    base, tok = models.load_causal(cfg)
    ids = tok("Hello there", return_tensors="pt")
    with torch.no_grad():
        ref = base(**ids).logits
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    with torch.no_grad():
        assert not torch.allclose(peft_model(**ids).logits, ref)
        with instruct.as_base(peft_model) as m:
            assert torch.allclose(m(**ids).logits, ref, atol=1e-5)


def test_unload_and_with_adapter_serve_base_and_adapter_from_one_copy(cfg, tmp_path):
    """The notebooks keep one copy of the LM: LoRA trains beside it, `unload()` gives the very same object back
    unchanged, and `with_adapter` puts a saved adapter back in for a block only."""
    from peft import LoraConfig, get_peft_model

    base, tok = models.load_causal(cfg)
    ids = tok("Hello there", return_tensors="pt")
    with torch.no_grad():
        ref = base(**ids).logits
        tuned = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
        adapted = tuned(**ids).logits
        assert not torch.allclose(adapted, ref)
        tuned.save_pretrained(tmp_path)
        assert tuned.unload() is base and torch.equal(base(**ids).logits, ref)
        with instruct.with_adapter(base, tmp_path) as again:
            assert torch.allclose(again(**ids).logits, adapted, atol=1e-5)
        assert torch.equal(base(**ids).logits, ref) and not any("lora" in n for n, _ in base.named_modules())


def test_held_out_loss_is_the_same_one_example_at_a_time_on_a_small_machine(causal, monkeypatch):
    from ftkit import env

    model, tok = causal
    rows = instruct.tokenize_instructions(data.load("dolly")["test"].select(range(5)), tok, 64)
    batched = instruct.held_out_loss(model, rows, tok, batch_size=8)
    monkeypatch.setenv("FTKIT_MEMORY_LIMIT", "2G")
    assert env.is_small()
    assert instruct.held_out_loss(model, rows, tok) == pytest.approx(batched, rel=1e-5)   # token-weighted mean


def test_generate_and_general_accuracy_run(causal):
    model, tok = causal
    out = instruct.generate(model, tok, [ROW, {"instruction": "Name a colour."}], max_new_tokens=6)
    assert len(out) == 2 and all(isinstance(a, str) for a in out)
    assert tok.padding_side == "right"  # restored after left-padded generation
    acc = instruct.general_accuracy(model, tok, questions=instruct.GENERAL_QUESTIONS[:2])
    assert 0 <= acc["general QA"] <= 1 and len(acc["answers"]) == 2


def test_forgetting_check_records_each_epoch_and_stops_at_a_matched_gain(cfg, causal):
    _, tok = causal
    rt = data.take(data.load("rotten_tomatoes")["validation"], 2, stratify="label")
    task_rows = list(instruct.sentiment_instructions(rt))
    holdout = instruct.tokenize_instructions(data.load("dolly")["test"].select(range(2)), tok, 64)
    train_rows = instruct.sentiment_instructions(data.take(data.load("rotten_tomatoes")["train"], 4, stratify="label"))
    runs = {}
    for stop_at in (None, 0.0):
        check = instruct.forgetting_check(tok, task_rows, holdout, stop_at=stop_at)
        model, _ = models.load_causal(cfg)
        runs[stop_at] = instruct.sft(model, tok, train_rows, cfg, name="narrow", lora_rank=2, max_length=96,
                                     num_train_epochs=2, max_steps=-1, per_device_train_batch_size=2,
                                     learning_rate=1e-3, logging_steps=1, callbacks=[check]), check.history
    (full_run, full_hist), (stopped_run, stopped_hist) = runs[None], runs[0.0]
    assert [h["epoch"] for h in full_hist] == [0, 1, 2] and [h["epoch"] for h in stopped_hist] == [0, 1]
    assert full_hist[0] == pytest.approx(stopped_hist[0])          # epoch 0 is the same base model
    assert all(0 <= h["validation accuracy"] <= 1 and math.isfinite(h["dolly loss"]) for h in full_hist)
    assert len(full_run.loss_history) > len(stopped_run.loss_history)  # it really stopped after epoch 1


def test_a_small_machine_answers_at_most_four_prompts_at_once(causal, monkeypatch):
    model, tok = causal
    sizes = []
    real = model.generate

    def counting(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", counting)
    prompts = [f"Count to {n}:" for n in range(6)]
    big = instruct.complete(model, tok, prompts, max_new_tokens=2)
    monkeypatch.setenv("FTKIT_MEMORY_LIMIT", "2G")
    small = instruct.complete(model, tok, prompts, max_new_tokens=2)
    assert sizes == [6, 4, 2] and len(small) == len(big) == 6


# --------------------------------------------------------------------------- nothing left to compute
def dolly_rows(tok, longer_than: int, n: int, short: int = 0):
    """`n` dolly training rows whose prompt alone takes more than `longer_than` tokens, then `short` rows whose
    prompt takes at most 16."""
    dolly = data.load("dolly")["train"].select(range(80))
    counts = instruct.prompt_token_counts(instruct.sft_dataset(dolly), tok)
    long = [i for i, c in enumerate(counts) if c > longer_than][:n]
    brief = [i for i, c in enumerate(counts) if c <= 16][:short]
    assert len(long) == n and len(brief) == short
    return dolly.select(long + brief)


def trl_rows_kept(cfg, model, tok, rows, max_length: int, template: str = "alpaca") -> int:
    """How many rows trl's SFTTrainer keeps for training (it drops those with no response token left)."""
    from trl import SFTConfig, SFTTrainer

    args = train.training_args(cfg, args_class=SFTConfig, max_length=max_length, completion_only_loss=True,
                               packing=False)
    return len(SFTTrainer(model=model, args=args, train_dataset=instruct.sft_dataset(rows, template),
                          processing_class=tok).train_dataset)


def test_sft_refuses_a_max_length_that_cuts_every_response_and_names_one_that_fits(cfg, causal):
    """Before: trl dropped every row and torch's sampler failed with 'num_samples=0'."""
    import re

    model, tok = causal
    rows = dolly_rows(tok, longer_than=16, n=5)
    assert trl_rows_kept(cfg, model, tok, rows, 16) == 0                     # the case: nothing left to train on
    with pytest.raises(ValueError, match=r"max_length=16 cuts every response off: all 5 rows lose every response "
                                         r"token") as refused:
        instruct.sft(model, tok, rows, cfg, name="too short", max_length=16, max_steps=1)
    fits = int(re.search(r"max_length=(\d+) keeps at least one response token in every row", str(refused.value))[1])
    assert trl_rows_kept(cfg, model, tok, rows, fits) == 5 and trl_rows_kept(cfg, model, tok, rows, fits - 1) < 5


def test_sft_refuses_validation_rows_that_keep_no_response_token(cfg, causal):
    """Before: trl dropped every validation row and the run trained with no validation loss, silently."""
    model, tok = causal
    with pytest.raises(ValueError, match="validation_rows: at max_length=30 no validation row keeps a response"):
        instruct.sft(model, tok, dolly_rows(tok, longer_than=0, n=2, short=2).select([2, 3]), cfg, name="v", lora_rank=4,
                     max_length=30, validation_rows=dolly_rows(tok, longer_than=40, n=2), max_steps=1, eval_every=1)


@pytest.mark.parametrize("alpha", [0, -1, "16"])
def test_sft_refuses_a_lora_alpha_that_is_not_a_positive_number(cfg, causal, alpha):
    """Before: 0 silently became 2 * rank (`alpha or 2 * rank`) and -1 trained with a negative scale."""
    model, tok = causal
    with pytest.raises(ValueError, match="lora_alpha must be a positive number"):
        instruct.sft(model, tok, dolly_rows(tok, longer_than=0, n=2), cfg, name="alpha", lora_rank=4,
                     lora_alpha=alpha, max_steps=1)


@pytest.mark.parametrize("template", instruct.TEMPLATES)
def test_rows_without_response_are_exactly_the_rows_trl_drops(cfg, causal, template):
    model, tok = causal
    rows = dolly_rows(tok, longer_than=80, n=4, short=6)
    lost = instruct.rows_without_response(instruct.sft_dataset(rows, template), tok, 64)
    assert 0 < len(lost) < len(rows)
    assert trl_rows_kept(cfg, model, tok, rows, 64, template) == len(rows) - len(lost)


def test_held_out_loss_over_no_response_token_is_refused(causal, capsys):
    model, tok = causal
    cut = Dataset.from_list([instruct.label_example(ROW, tok, max_length=5)] * 2)      # prompt tokens only
    with pytest.raises(ValueError, match="none of the 2 held-out rows has a response token"):
        instruct.held_out_loss(model, cut, tok)
    rows = dolly_rows(tok, longer_than=40, n=2, short=1)
    with pytest.raises(ValueError, match="all 2 rows lose every response token"):
        instruct.tokenize_instructions(rows.select([0, 1]), tok, 40)
    kept = instruct.tokenize_instructions(rows, tok, 40)
    assert "the tokenized rows: 2 of 3 rows lose every response token at max_length=40" in capsys.readouterr().out
    assert math.isfinite(instruct.held_out_loss(model, kept, tok))


def test_scores_over_nothing_are_refused(causal):
    import pandas as pd

    model, tok = causal
    for call, message in [(lambda: instruct.rouge_scores(["an answer"], []), "1 answers but 0 references"),
                          (lambda: instruct.rouge_scores([], []), "no answers to score"),
                          (lambda: instruct.hand_loss(torch.zeros(1, 3, 5), torch.full((1, 3), -100)), "every label"),
                          (lambda: instruct.padding_waste([], 4, 64), "needs rows"),
                          (lambda: instruct.quality_flags([]), "no rows to check"),
                          (lambda: instruct.judge_reliability(pd.DataFrame(columns=["pick (ref=A)", "pick (ref=B)"])),
                           "no judged pairs"),
                          (lambda: instruct.sentiment_accuracy(model, tok, []), "no sentiment rows"),
                          (lambda: instruct.general_accuracy(model, tok, questions=()), "no questions")]:
        with pytest.raises(ValueError, match=message):
            call()


# --------------------------------------------------------------------------- per-row losses, validation, the session's runs
def test_response_losses_add_up_to_the_held_out_loss_and_the_example_mean(causal):
    model, tok = causal
    rows = instruct.tokenize_instructions(data.load("dolly")["test"].select(range(5)), tok, 64)
    losses = instruct.response_losses(model, rows, tok, batch_size=3)
    assert len(losses) == 5 and all(n == sum(l != -100 for l in ex["labels"][1:]) for (_, n), ex in zip(losses, rows))
    graded = [i for i, (_, n) in enumerate(losses) if n]      # at 64 tokens a long prompt leaves no response token
    assert 3 <= len(graded) and all(losses[i] == (0.0, 0) for i in range(5) if i not in graded)
    for i in graded[:2]:                                       # each row's sum is the model's own loss x its tokens
        batch = {k: torch.tensor([v]) for k, v in rows[i].items()}
        with torch.no_grad():
            assert losses[i][0] == pytest.approx(model(**batch).loss.item() * losses[i][1], rel=1e-4)
    total = sum(l for l, _ in losses) / sum(n for _, n in losses)
    assert instruct.held_out_loss(model, rows, tok, losses=losses) == pytest.approx(total)
    assert instruct.held_out_loss(model, rows, tok, batch_size=1) == pytest.approx(total, rel=1e-5)
    means = [losses[i][0] / losses[i][1] for i in graded]      # rows without a response token are left out
    assert instruct.example_loss(losses) == pytest.approx(sum(means) / len(means))
    with pytest.raises(ValueError, match="no row has a response token"):
        instruct.example_loss([(0.0, 0)])


def test_validation_loss_is_the_mean_of_each_rows_mean_whatever_the_evaluation_batch(cfg, causal):
    """sft's Trainer scores validation rows several at a time and still reports the mean over rows of each row's mean
    response-token loss (`example_loss`, as one row at a time gives it), unlike trl's own token mean per batch."""
    from trl import SFTConfig, SFTTrainer

    model, tok = causal
    rows = data.load("dolly")["test"].select(range(6))
    expected = instruct.example_loss(instruct.response_losses(model, instruct.tokenize_instructions(rows, tok, 96), tok,
                                                              batch_size=1))
    ds = instruct.sft_dataset(rows)

    def eval_loss(trainer_class, batch):
        args = train.training_args(cfg, args_class=SFTConfig, max_length=96, completion_only_loss=True,
                                   per_device_eval_batch_size=batch)
        trainer = trainer_class(model=model, processing_class=tok, train_dataset=ds, eval_dataset=ds, args=args)
        return trainer.evaluate()["eval_loss"]

    kept = len(instruct.sft_dataset(rows)) - len(instruct.rows_without_response(ds, tok, 96))
    assert kept % 3                                                           # batches of 3 end with a short one
    ours = [eval_loss(instruct.example_loss_trainer(), batch) for batch in (1, 3, kept)]
    assert ours == pytest.approx([expected] * 3, rel=1e-4)
    assert eval_loss(SFTTrainer, 1) == pytest.approx(expected, rel=1e-4)      # trl agrees one row at a time ...
    assert eval_loss(SFTTrainer, kept) != pytest.approx(expected, rel=1e-3)   # ... not all at once: a token mean


def test_the_recorded_base_side_is_the_base_model_now(cfg, causal):
    """Section 3 draws the base model's losses and answers from the recording and checks a few rows live."""
    from ftkit import results

    model, tok = causal
    d = instruct.session_data(tok, cfg)
    base = instruct.recorded_base_side(results.sweep_rows("instruct_base", cfg))
    assert len(base.losses) == len(d.holdout) and len(base.validation_losses) == len(d.val_enc)
    assert len(base.answers) == len(d.eval_rows)
    check = instruct.check_base_side(model, tok, base, d.holdout, d.eval_rows, d.sizes["new tokens"])
    assert check["answers identical"] == check["answers checked"] == 4 and check["largest loss gap"] < 1e-4
    assert instruct.example_loss(base.validation_losses) == pytest.approx(
        instruct.example_loss(instruct.response_losses(model, d.val_enc, tok)), rel=1e-4)
    with pytest.raises(ValueError, match="for other instructions than eval_rows"):
        instruct.check_base_side(model, tok, base, d.holdout, d.eval_rows[::-1], d.sizes["new tokens"])
    side = instruct.base_model_side(model, tok, base, d.holdout, d.val_enc, d.eval_rows, d.sizes["new tokens"])
    assert side.answers == base.answers and side.check is not None
    ins, refs, n = [r["instruction"] for r in d.eval_rows], [r["response"] for r in d.eval_rows], d.sizes["judge pairs"]
    scores = instruct.judge_scores(model, tok, ins, refs, side.answers, side.judge)     # section 4's judge, recorded
    pairs = instruct.judge_pairs(model, tok, ins[:n], refs[:n], judge_replies=side.judge)
    assert not side.judge.asked_now and sum(r["replies"] for r in side.judge.reused.values()) == len(ins) + 8 * n
    assert side.judge.identical == side.judge.checked > 0
    assert scores == instruct.judge_scores(model, tok, ins, refs, side.answers)        # as if asked now
    assert pairs.equals(instruct.judge_pairs(model, tok, ins[:n], refs[:n]))
    fewer = d.eval_rows[:2]                                  # a learner's smaller N_EVAL: computed now, and said so
    side = instruct.base_model_side(model, tok, base, d.holdout, d.val_enc, fewer, d.sizes["new tokens"])
    assert side.check is None and len(side.answers) == 2 and "computed now" in side.line
    assert "the instructions answered (N_EVAL)" in side.line and side.judge.recorded == base.judge   # pairs still serve
    assert [n for _, n in side.losses] == [n for _, n in base.losses]
    assert [l for l, _ in side.losses] == pytest.approx([l for l, _ in base.losses], rel=1e-4, abs=1e-4)
    changed = instruct.base_model_side(model, tok, base, d.holdout, d.val_enc, d.eval_rows, d.sizes["new tokens"] + 1)
    assert changed.check is None and changed.line.startswith("base side: NEW_TOKENS differ")   # answers do not apply
    questions = d.task.questions
    table = instruct.template_table(base, d.task.probe, questions)
    for t in instruct.TEMPLATES:                             # the recorded answers score as the live ones would
        live = instruct.sentiment_accuracy(model, tok, d.task.probe, t)["task accuracy"]
        assert table.loc[t, "task accuracy"] == live
        assert table.loc[t, "general QA"] == instruct.general_accuracy(model, tok, t, questions)["general QA"]
    now = instruct.check_templates(model, tok, base, d.task.probe, questions)
    assert now["answers identical"] == now["answers checked"] == 2 * (min(4, len(d.task.probe)) + min(4, len(questions)))
    with pytest.raises(ValueError, match="answers for"):
        instruct.sentiment_scores(["positive"], d.task.probe)


def test_generation_keeps_the_order_of_the_prompts_when_it_batches_them_by_length(causal):
    model, tok = causal
    prompts = ["Hi", "Count to ten, slowly and carefully, one number per line:", "One two", "Say yes:"]
    together = instruct.complete(model, tok, prompts, max_new_tokens=3, batch_size=2)
    alone = [instruct.complete(model, tok, [p], max_new_tokens=3)[0] for p in prompts]
    assert together == alone and instruct.complete(model, tok, [], max_new_tokens=3) == []


def test_forgetting_check_takes_a_known_epoch_0_instead_of_measuring_it(monkeypatch):
    calls = []
    monkeypatch.setattr(instruct, "sentiment_accuracy", lambda *a, **k: calls.append("acc") or {"task accuracy": 0.5})
    monkeypatch.setattr(instruct, "held_out_loss", lambda *a, **k: calls.append("loss") or 2.0)
    model = torch.nn.Linear(1, 1)
    check = instruct.forgetting_check(None, [], None, before={"validation accuracy": 0.7, "dolly loss": 2.3})
    check.on_train_begin(None, None, None, model=model)
    assert calls == [] and check.history == [{"epoch": 0, "validation accuracy": 0.7, "dolly loss": 2.3}]

    class State:
        epoch = 1.0
    check.on_epoch_end(None, State(), None, model=model)
    assert calls == ["acc", "loss"] and check.history[-1] == {"epoch": 1.0, "validation accuracy": 0.5, "dolly loss": 2.0}
    with pytest.raises(ValueError, match="before needs"):
        instruct.forgetting_check(None, [], None, before={"dolly loss": 2.3})


def test_split_validation_holds_out_disjoint_rows():
    rows = Dataset.from_dict({"instruction": [f"q{i}" for i in range(20)], "response": ["a"] * 20})
    train_rows, val_rows = instruct.split_validation(rows, 12, 5)
    assert len(train_rows) == 12 and len(val_rows) == 5
    assert not set(train_rows["instruction"]) & set(val_rows["instruction"])
    assert instruct.split_validation(rows, 12, 5)[1]["instruction"] == val_rows["instruction"]    # seeded
    assert len(instruct.split_validation(rows, None, 5)[0]) == 15
    with pytest.raises(ValueError, match="n_train must be between 1 and 15"):
        instruct.split_validation(rows, 16, 5)
    with pytest.raises(ValueError, match="n_validation must be between 1 and 19"):
        instruct.split_validation(rows, 5, 0)


@pytest.mark.parametrize("error, bad", [
    ("too long", "word " * 60),
    ("repetitive", "the cat sat on the mat " * 3),
    ("copies instruction", "What is the capital of France? Paris."),
    ("non-words", "Teh capitl of Frnace is Parsi"),
    ("empty", "."),
])
def test_data_fix_drops_the_training_rows_whose_response_shows_the_error(error, bad):
    good = [{"instruction": "What is the capital of France?", "response": f"Paris is the capital, fact {i}."}
            for i in range(9)]
    rows = Dataset.from_list(good + [{"instruction": "What is the capital of France?", "response": bad}])
    kept, what = instruct.data_fix(rows, error)
    assert len(kept) == 9 and bad not in kept["response"] and what.startswith("dropped 1 of 10 training pairs")
    with pytest.raises(ValueError, match="no training row has"):
        instruct.data_fix(Dataset.from_list(good), error)
    with pytest.raises(ValueError, match="unknown error category"):
        instruct.data_fix(rows, "rude")


def test_most_frequent_error_breaks_ties_in_the_order_of_the_categories():
    import pandas as pd

    scored = pd.DataFrame([{"model": "m", **{e: False for e in instruct.ERRORS}, "repetitive": True, "too long": True},
                           {"model": "m", **{e: False for e in instruct.ERRORS}, "repetitive": True},
                           {"model": "n", **{e: False for e in instruct.ERRORS}}])
    assert instruct.most_frequent_error(scored, "m") == ("repetitive", 2)
    assert instruct.most_frequent_error(scored, "n") == (None, 0)
    with pytest.raises(ValueError, match="no scored answers of 'x'"):
        instruct.most_frequent_error(scored, "x")


def test_teacher_forced_predictions_are_read_one_position_ahead(causal):
    _, tok = causal
    labels = torch.tensor([[-100, -100, 5, 6, 7]])
    logits = torch.zeros(1, 5, 10)
    logits[0, 1, 5] = logits[0, 2, 6] = logits[0, 3, 9] = 1.0     # right, right, wrong
    table = instruct.teacher_forced(logits, labels, tok)
    assert table["match"].tolist() == [True, True, False] and len(table) == 3
    with pytest.raises(ValueError, match="every label is -100"):
        instruct.teacher_forced(logits, torch.full((1, 5), -100), tok)


def test_prompt_share_counts_tokens_not_examples_and_by_length_groups_rows():
    assert instruct.prompt_share([{"labels": [-100, -100, -100, 5, 6]}, {"labels": [-100, 7, 8, 9, 10, 11, 12]}]) \
        == pytest.approx(4 / 12)
    with pytest.raises(ValueError, match="no tokens"):
        instruct.prompt_share([])
    table = instruct.by_length({"score": [1, 2, 3, 4, 5, 6]}, [10, 60, 20, 50, 30, 40])
    assert table["score"].tolist() == [2.0, 5.5, 3.0] and table["rows"].tolist() == [2, 2, 2]
    assert list(table.index) == ["short", "medium", "long"] and table.loc["long", "shortest"] == 50
    with pytest.raises(ValueError, match="cannot make 3 length groups"):
        instruct.by_length({"score": [1]}, [3])


def test_session_sizes_and_recorded_settings_depend_on_the_profile_only(cfg):
    assert instruct.sizes(cfg) == instruct.sizes("smoke") == instruct.SIZES["smoke"]
    assert instruct.sizes("cpu")["train pairs"] == 160
    with pytest.raises(ValueError, match="no session 05 sizes for profile 'laptop'"):
        instruct.sizes("laptop")
    import json

    settings = instruct.recorded_settings(cfg.profile)
    assert json.loads(json.dumps(settings)) == settings and settings["sizes"] == instruct.sizes("smoke")
    with pytest.raises(ValueError, match="method must be 'full' or 'LoRA'"):
        instruct.fine_tune(None, None, [], cfg, method="QLoRA")


def test_blind_rating_hides_the_model_until_compared_and_correlates_the_ratings():
    import pandas as pd

    rows = [{"instruction": f"q{i}", "response": f"r{i}"} for i in range(4)]
    scored = pd.DataFrame({"model": ["base"] * 4 + ["LoRA"] * 4, "item": list(range(4)) * 2,
                           "answer": [f"a{i}" for i in range(8)], "rougeL": [0.1 * i for i in range(8)],
                           "cosine": [0.5] * 8, "judge": [3] * 8})
    box = instruct.blind_rating(scored, rows, n=6, seed=1)
    shown = [c.children[0].value for c in box.children[:6]]
    assert len(shown) == 6 and not any("LoRA" in s or "base" in s for s in shown)
    for k, child in enumerate(box.children[:6]):
        child.children[1].value = 1 + k % 5
    box.children[6].click()
    assert len(box.ratings) == 6 and set(box.ratings.values()) <= {1, 2, 3, 4, 5}


def test_plan_data_fix_skips_errors_the_training_data_does_not_show():
    import pandas as pd

    scored = pd.DataFrame([{"model": "m", **{e: False for e in instruct.ERRORS}, "repetitive": True, "too long": i < 2}
                           for i in range(3)])
    good = [{"instruction": "Name a city.", "response": f"Paris is a city, fact {i}."} for i in range(9)]
    long = " ".join(f"item{i}" for i in range(80))             # long, but no trigram repeats
    rows = Dataset.from_list(good + [{"instruction": "Describe it.", "response": long}])
    plan = instruct.plan_data_fix(scored, "m", rows)
    assert [s[:2] for s in plan["skipped"]] == [("repetitive", 3)] and "no training row has" in plan["skipped"][0][2]
    assert plan["error"] == "too long" and plan["count"] == 2 and len(plan["rows"]) == 9
    nothing = instruct.plan_data_fix(scored, "m", Dataset.from_list(good))
    assert nothing["error"] is None and nothing["rows"] is None and len(nothing["skipped"]) == 2


def test_best_validation_loss_is_the_kept_checkpoints():
    from types import SimpleNamespace

    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.7}]
    assert instruct.best_validation_loss(SimpleNamespace(name="r", eval_history=history, best_step=2)) == 1.5
    assert instruct.best_validation_loss(SimpleNamespace(name="r", eval_history=history, best_step=None)) == 1.7
    with pytest.raises(ValueError, match="run 'r' scored no validation rows"):
        instruct.best_validation_loss(SimpleNamespace(name="r", eval_history=[], best_step=None))


def test_dolly_lora_ends_with_the_checkpoint_of_the_lowest_validation_loss(cfg, causal):
    """The session's run keeps the best checkpoint: the model it returns re-scores the best validation loss (not the
    last), measured here by hand as the Trainer does (one example at a time, the mean of each example's mean)."""
    model, tok = causal
    rows = dolly_rows(tok, longer_than=0, n=0, short=6)
    train_rows, val_rows = Dataset.from_list(list(rows)[:4]), Dataset.from_list(list(rows)[4:])
    # a learning rate far too high: the validation loss is lowest early and rises after, so best != last
    run = instruct.dolly_lora(model, tok, train_rows, val_rows, cfg, name="best", lr=0.05, steps=3, batch=2,
                              max_length=64)
    try:
        losses = [h["loss"] for h in run.eval_history]
        assert [h["step"] for h in run.eval_history] == [1, 2, 3]           # the smoke profile scores every step
        assert run.best_step == 1 + losses.index(min(losses)) and run.best_step != 3, losses
        assert instruct.best_validation_loss(run) == min(losses)
        val_enc = instruct.tokenize_instructions(val_rows, tok, 64)
        again = instruct.example_loss(instruct.response_losses(run.model, val_enc, tok, batch_size=1))
        assert again == pytest.approx(min(losses), rel=1e-3) and again != pytest.approx(losses[-1], rel=1e-3)
    finally:
        run.model.unload()


def test_rows_as_a_list_of_dicts_are_read_and_a_datasetdict_is_refused(cfg):
    from datasets import DatasetDict

    rows = [{"instruction": "Name a colour.", "response": "Blue."}, {"instruction": "Say hi.", "response": "Hi!"}]
    converted = instruct.sft_dataset(rows)                 # what sft trains on: list -> Dataset.from_list
    assert converted.num_rows == 2 and converted[1]["completion"] == "Hi!"
    assert instruct.clean(rows).num_rows == 2
    splits = DatasetDict({"train": Dataset.from_list(rows)})
    with pytest.raises(ValueError, match=r"train_rows is a DatasetDict of splits \['train'\], but one set of rows is "
                                         r"expected: pass one split, e.g. ds\['train'\]"):
        instruct.sft(None, None, splits, cfg, name="x")
    with pytest.raises(ValueError, match=r"validation_rows is one row .*pass a list of rows: \[row\]"):
        instruct.sft(None, None, rows, cfg, name="x", validation_rows=rows[0], max_length=None)
    with pytest.raises(ValueError, match=r"data\[1\] is a str; every row must be a dict"):
        instruct.check_instruction_data([rows[0], "Say hi."])


def test_loss_windows_pair_each_validation_with_the_training_loss_since_the_previous_one():
    run = train.RunResult("r", {}, 1, 2, 0.0, 0.0, loss_history=[(1, 4.0), (2, 2.0), (3, 3.0), (4, 1.0)],
                          eval_history=[{"step": 2, "epoch": 1.0, "loss": 3.5}, {"step": 4, "epoch": 2.0, "loss": 3.7}])
    assert instruct.loss_windows(run) == [
        {"step": 2, "epoch": 1.0, "training loss": 3.0, "validation loss": 3.5},
        {"step": 4, "epoch": 2.0, "training loss": 2.0, "validation loss": 3.7}]
