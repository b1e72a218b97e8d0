import math

import pytest

from ftkit import data, metrics, models, train
from ftkit.results import ResultsTable


@pytest.fixture()
def minilm(cfg):
    return models.load_classifier(["negative", "positive"], cfg)


def test_find_blocks_by_name(minilm):
    name, blocks = train.find_blocks(minilm)
    assert name == "bert.encoder.layer" and len(blocks) == 6


def test_find_blocks_on_a_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    name, blocks = train.find_blocks(tiny)
    assert name == "model.layers" and len(blocks) == 3


def test_freeze_all_blocks_leaves_only_the_head(minilm):
    train.freeze_bottom(minilm, 6)
    trainable = {n for n, p in minilm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("classifier.", "bert.pooler.")) for n in trainable)


def test_freeze_some_blocks(minilm):
    frozen = train.freeze_bottom(minilm, 4)
    assert frozen == [f"bert.encoder.layer.{i}" for i in range(4)]
    states = {g["group"]: g["state"] for g in train.trainable_groups(minilm)}
    assert states["embeddings"] == "frozen" and states["bert.encoder.layer.3"] == "frozen"
    assert states["bert.encoder.layer.4"] == "trainable" and states["classifier"] == "trainable"


def test_freeze_none_is_full_fine_tuning(minilm):
    train.freeze_bottom(minilm, 0)
    trainable, total = train.count_params(minilm)
    assert trainable == total > 22_000_000


@pytest.mark.parametrize("bad", [-1, 7, 2.5])
def test_freeze_out_of_range(minilm, bad):
    with pytest.raises(ValueError, match=r"n_frozen must be an integer in 0..6"):
        train.freeze_bottom(minilm, bad)


def test_count_params_counts_tied_weights_once():
    import torch.nn as nn

    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    assert train.count_params(nn.ModuleList([emb, head])) == (40, 40)


def test_fit_trains_evaluates_and_measures(cfg, minilm, monkeypatch):
    trims = []
    monkeypatch.setattr(train, "_malloc_trim", lambda: trims.append(1))
    tok = models.load_tokenizer("encoder", cfg)
    ds = data.for_profile(data.load("rotten_tomatoes"), cfg)
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=cfg.max_length), batched=True)
    train.freeze_bottom(minilm, 5)
    result = train.fit(minilm, ds["train"], ds["test"], cfg, name="last-1", tokenizer=tok,
                       compute_metrics=metrics.compute_classification)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and "macro_f1" in result.metrics
    assert result.trainable_params < result.total_params
    assert result.loss_history and all(math.isfinite(loss) for _, loss in result.loss_history)
    assert result.seconds > 0 and result.peak_mem_mb >= 0
    assert len(trims) >= cfg.max_steps  # freed memory goes back to the OS after every step (see fit)
    table = ResultsTable()
    table.add(result)
    assert table.get("last-1")["accuracy"] == result.metrics["accuracy"]


def test_results_table_charts_and_errors():
    table = ResultsTable()
    table.add({"setup": "a", "accuracy": 0.7, "trainable params": 10})
    table.add({"setup": "b", "accuracy": 0.8, "trainable params": 1000})
    fig = table.scatter("trainable params", "accuracy", log_x=True)
    assert list(fig.data[0].y) == [0.7, 0.8] and list(fig.data[0].text) == ["a", "b"]
    with pytest.raises(ValueError, match="no column 'f1'"):
        table.bar("f1")
    with pytest.raises(ValueError, match="needs a 'setup'"):
        table.add({"accuracy": 1.0})


def test_cpu_training_runs_in_float32_even_with_trls_config(cfg):
    """trl's SFTConfig defaults to bf16 autocast whenever fp16 is off; on a CPU that is slow emulation."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    for args_class in (TrainingArguments, SFTConfig):
        args = train.training_args(cfg, args_class=args_class)
        assert args.bf16 is False and args.fp16 is False, args_class.__name__


def test_only_causal_lms_get_the_trainers_cross_process_loss_scaling():
    """BERT heads average their own batch, so the Trainer must not multiply their loss by the process count."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM

    bert = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=32, vocab_size=64))
    llama = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, vocab_size=64))
    lora_bert = get_peft_model(BertForSequenceClassification(bert.config), LoraConfig(r=2, target_modules=["query"]))
    for model in (bert, llama, lora_bert):
        train.average_loss_per_batch(model)
    assert bert.accepts_loss_kwargs is False and lora_bert.get_base_model().accepts_loss_kwargs is False
    assert not hasattr(llama, "accepts_loss_kwargs")     # its loss divides by the tokens of all processes


def test_small_memory_splits_the_batch_into_equal_micro_batches():
    args = {"per_device_train_batch_size": 32, "per_device_eval_batch_size": 64}
    assert train.small_memory_batches(args) == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4,
                                                "per_device_eval_batch_size": 8}
    twelve = train.small_memory_batches({"per_device_train_batch_size": 12, "per_device_eval_batch_size": 24,
                                         "gradient_accumulation_steps": 2})
    assert (twelve["per_device_train_batch_size"], twelve["gradient_accumulation_steps"]) == (6, 4)
    small = train.small_memory_batches({"per_device_train_batch_size": 4, "per_device_eval_batch_size": 4}, 2)
    assert (small["per_device_train_batch_size"], small["gradient_accumulation_steps"]) == (2, 2)
    assert train.small_memory_batches({"per_device_train_batch_size": 8, "per_device_eval_batch_size": 16}) == \
        {"per_device_train_batch_size": 8, "per_device_eval_batch_size": 8}
    with pytest.raises(ValueError, match="micro_batch"):
        train.small_memory_batches(args, 0)


def test_batch_per_pass_is_the_micro_batch_only_on_a_small_machine(cfg):
    import dataclasses

    assert train.batch_per_pass(cfg) == cfg.batch_size
    small = dataclasses.replace(cfg, memory_limit_mb=2048)
    assert small.small_memory and train.batch_per_pass(small) == min(cfg.batch_size, train.SMALL_MEMORY_MICRO_BATCH)
    tiny = dataclasses.replace(small, profile=cfg.profile.with_(batch_size=4))
    assert train.batch_per_pass(tiny) == 4 and train.batch_per_pass(small, micro_batch=2) == 2


def test_small_memory_training_takes_the_same_steps(cfg):
    """Micro-batches with gradient accumulation: same updates as the whole batch, up to float rounding."""
    import dataclasses

    import torch

    small = dataclasses.replace(cfg, memory_limit_mb=2048)
    assert small.small_memory and not cfg.small_memory
    args = train.training_args(small, max_steps=2)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, cfg.batch_size // 8)
    tok = models.load_tokenizer("encoder", cfg)
    ds = data.for_profile(data.load("rotten_tomatoes"), cfg)["train"].select(range(2 * cfg.batch_size))
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=cfg.max_length), batched=True)
    weights, losses = [], []
    for setting in (cfg, small):
        torch.manual_seed(0)
        model = models.load_classifier(["negative", "positive"], cfg)
        for m in model.modules():               # dropout draws would differ between one batch and two halves
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        start = model.classifier.weight.detach().clone()
        result = train.fit(model, ds, None, setting, name="steps", tokenizer=tok, max_steps=2,
                           per_device_train_batch_size=cfg.batch_size)
        assert result.steps == 2 and not torch.equal(start, model.classifier.weight)
        weights.append(model.classifier.weight.detach().clone())
        losses.append([loss for _, loss in result.loss_history])
    torch.testing.assert_close(weights[0], weights[1], atol=1e-5, rtol=1e-4)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)     # the reported loss is a mean, not a sum of pieces


def test_small_memory_trains_a_causal_lm_one_example_at_a_time_with_checkpointing(cfg, monkeypatch):
    """LoRA on a (tiny) Llama under small memory: micro-batches of 1, gradient checkpointing, and the adapters
    still get gradients (re-entrant checkpointing would silently train nothing when the inputs are frozen)."""
    import dataclasses

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    model = get_peft_model(tiny, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    rows = [{"input_ids": ids, "attention_mask": [1] * 12, "labels": ids}
            for ids in torch.randint(0, 100, (8, 12)).tolist()]
    seen = []
    real = train.training_args
    monkeypatch.setattr(train, "training_args", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    small = dataclasses.replace(cfg, memory_limit_mb=2048)
    result = train.fit(model, Dataset.from_list(rows), None, small, name="tiny LoRA", max_steps=2,
                       per_device_train_batch_size=4)
    args = seen[-1]
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 4)
    assert args.gradient_checkpointing and result.steps == 2
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_A" in n for n in moved) and any("lora_B" in n for n in moved)
    assert not train.is_causal_lm(models.load_classifier(["a", "b"], cfg)) and train.is_causal_lm(model)
