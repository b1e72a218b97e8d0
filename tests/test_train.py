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


def test_fit_with_a_progress_callable_reports_each_step_and_shows_nothing_itself(cfg, capsys):
    """Outside a panel too: `progress` replaces the Trainer's tqdm bar and the loss lines it writes."""
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    tok = models.load_tokenizer("encoder", cfg)
    ds = Dataset.from_dict({"text": ["good film", "bad film"] * 4, "label": [1, 0] * 4})
    ds = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64))
    fractions = []
    capsys.readouterr()
    result = train.fit(model, ds, ds, cfg, name="tiny", tokenizer=tok, progress=fractions.append, max_steps=4,
                       per_device_train_batch_size=2, logging_steps=1)
    assert fractions == [0.25, 0.5, 0.75, 1.0, 1.0] and result.steps == 4      # the last 1.0: evaluation done
    assert capsys.readouterr() == ("", "")
    train.fit(model, ds, None, cfg, name="tiny", tokenizer=tok, max_steps=1)  # without it, the Trainer's own bar
    shown = capsys.readouterr()
    assert "'train_runtime'" in shown.out and "1/1" in shown.err


# --------------------------------------------------------------------------- precision and the memory estimate
def test_mixed_precision_is_fp16_on_a_t4_bf16_where_the_gpu_has_it_and_none_on_a_cpu(monkeypatch):
    import torch

    assert train.mixed_precision("cpu") == {"fp16": False, "bf16": False}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert train.mixed_precision("cuda") == {"fp16": True, "bf16": False}        # a T4: bf16 only emulated
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train.mixed_precision("cuda") == {"fp16": False, "bf16": True}        # an A100, L4, H100


def test_fit_refuses_to_train_bfloat16_weights(cfg):
    import torch

    model = models.load_classifier(["neg", "pos"], cfg).to(torch.bfloat16)
    ds = data.for_profile(data.load("rotten_tomatoes"), cfg)
    from ftkit import tuning

    encoded, tok = tuning.tokenize(ds, cfg)
    with pytest.raises(ValueError, match="trainable weights in bfloat16; load it in float32"):
        train.fit(model, encoded["train"], None, cfg, name="bf16", tokenizer=tok)
    for p in model.parameters():                    # frozen bf16 weights are fine, only what trains must be float32
        p.requires_grad = False
    for p in model.classifier.float().parameters():
        p.requires_grad = True
    train.check_trainable_float32(model)


def meta_model(config, head="causal"):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    auto = {"causal": AutoModelForCausalLM, "masked": AutoModelForMaskedLM,
            "classify": AutoModelForSequenceClassification}
    with torch.device("meta"):
        return auto[head].from_config(config, dtype=torch.float32)


SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True)


def test_memory_estimate_counts_16_bytes_per_trainable_float32_parameter():
    from transformers import LlamaConfig

    model = meta_model(LlamaConfig(**SMOLLM2_135M))
    params = train.count_params(model)[1]
    assert 134e6 < params < 135e6
    full = train.memory_estimate(model, batch=1, length=1)
    assert full["weights MB"] * 2**20 == params * 4                      # float32, tied embeddings counted once
    assert (full["weights MB"] + full["gradients and optimizer MB"]) * 2**20 == params * 16
    assert full["logits MB"] * 2**20 == 49152 * 12 and full["autocast copies MB"] == 0
    lora = train.memory_estimate(model, batch=1, length=1, trainable=1000)
    assert lora["gradients and optimizer MB"] * 2**20 == 12_000
    mixed = train.memory_estimate(model, batch=16, length=512, mixed_precision=True)
    assert mixed["autocast copies MB"] * 2**20 == params * 2
    assert mixed["activations MB"] == pytest.approx(16 * 512 * 30 * 576 * train.ACTIVATION_BYTES / 2**20)
    checkpointed = train.memory_estimate(model, batch=16, length=512, gradient_checkpointing=True)
    assert checkpointed["activations MB"] < mixed["activations MB"] / 10
    assert checkpointed["logits MB"] == mixed["logits MB"]
    with pytest.raises(ValueError, match="positive whole numbers"):
        train.memory_estimate(model, batch=0)


def saved_for_backward_bytes(model, **inputs) -> int:
    """Bytes of the tensors one training forward pass keeps for its backward pass (weights excluded), counted on
    the meta device: shapes only, so the real 135M model at 16 x 512 tokens costs nothing to count."""
    import torch
    from torch.multiprocessing.reductions import StorageWeakRef

    weights = {StorageWeakRef(p.untyped_storage()).cdata for p in model.parameters()}
    saved = {}

    def pack(t):
        key = StorageWeakRef(t.untyped_storage()).cdata
        if key not in weights:
            saved[key] = t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    return sum(saved.values())


@pytest.mark.parametrize("kind, batch, length", [("smollm2", 4, 512), ("distilbert-mlm", 8, 256),
                                                 ("distilbert", 8, 128), ("minilm", 16, 128)])
def test_the_activation_rule_covers_what_the_real_models_save_for_backward(kind, batch, length):
    """The rule (activations + logits) against a count of the tensors autograd keeps, for the gpu profile's real
    configurations at the lengths the notebooks train them: at least the count, at most 1.5 times it."""
    import torch
    from transformers import BertConfig, DistilBertConfig, LlamaConfig

    model = {"smollm2": lambda: meta_model(LlamaConfig(**SMOLLM2_135M)),
             "distilbert-mlm": lambda: meta_model(DistilBertConfig(), "masked"),
             "distilbert": lambda: meta_model(DistilBertConfig(), "classify"),
             "minilm": lambda: meta_model(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                                     intermediate_size=1536), "classify")}[kind]()
    ids = torch.zeros(batch, length, dtype=torch.long, device="meta")
    labels = ids if kind in ("smollm2", "distilbert-mlm") else torch.zeros(batch, dtype=torch.long, device="meta")
    counted = saved_for_backward_bytes(model, input_ids=ids, labels=labels)
    est = train.memory_estimate(model, batch, length)
    rule = (est["activations MB"] + est["logits MB"]) * 2**20
    assert counted <= rule <= 1.5 * counted, (kind, counted / 2**20, rule / 2**20)


def test_memory_levers_split_the_batch_then_checkpoint_and_refuse_what_cannot_fit():
    from transformers import LlamaConfig

    model = meta_model(LlamaConfig(**SMOLLM2_135M))
    whole = train.memory_estimate(model, 16, 512, mixed_precision=True)["total MB"]
    assert train.memory_levers(model, 16, 512, whole + 1, mixed_precision=True)[0] == {}
    levers, est = train.memory_levers(model, 16, 512, 12_000, mixed_precision=True)
    assert levers == {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4} and est["total MB"] <= 12_000
    one = train.memory_estimate(model, 1, 512, mixed_precision=True)["total MB"]
    levers, _ = train.memory_levers(model, 16, 512, one - 1, mixed_precision=True)
    assert levers["gradient_checkpointing"] and levers["per_device_train_batch_size"] < 16
    with pytest.raises(ValueError, match="even one sequence at a time with gradient checkpointing.*train LoRA"):
        train.memory_levers(model, 16, 512, 1_000, mixed_precision=True)


def test_gpu_memory_levers_keep_the_requested_batch_and_accumulation(cfg, monkeypatch):
    from transformers import LlamaConfig

    model = meta_model(LlamaConfig(**SMOLLM2_135M))
    monkeypatch.setattr(train, "gpu_budget_mb", lambda m: 12_000)
    from datasets import Dataset

    ds = Dataset.from_dict({"input_ids": [[1] * 512, [1] * 100]})
    out = train.gpu_memory_levers(model, ds, cfg, {"per_device_train_batch_size": 16, "gradient_accumulation_steps": 2,
                                                   "learning_rate": 1e-4})
    assert out == {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 8, "learning_rate": 1e-4}
    assert train.gpu_memory_levers(model, ds, cfg, {"per_device_train_batch_size": 2}) == \
        {"per_device_train_batch_size": 2}


# --------------------------------------------------------------------------- validation curves, LR schedule, best checkpoint
def tiny_classifier(seed: int = 0):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=32,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2))


def token_rows(n: int, flipped: bool = False, seed: int = 0):
    """Sentences of 6 tokens from 1..10 (label 0) or 11..20 (label 1); `flipped` swaps the labels, so a model that
    learns the training rule gets worse on it, step after step (a validation loss that rises)."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    ids = [[rng.randint(1, 10) + 10 * y for _ in range(6)] for y in labels]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * 6] * n,
                              "labels": [1 - y if flipped else y for y in labels]})


TINY_RUN = dict(max_steps=-1, num_train_epochs=3, per_device_train_batch_size=8, logging_steps=1, seed=0)


def test_fit_validates_every_epoch_and_keeps_the_schedule_it_trained_with(cfg):
    result = train.fit(tiny_classifier(), token_rows(40), token_rows(16, seed=2), cfg, name="tiny",
                       validation_ds=token_rows(16, seed=1), learning_rate=1e-3, warmup_steps=3, **TINY_RUN)
    assert result.steps == 15 and result.steps_per_epoch == 5
    assert [(h["step"], h["epoch"]) for h in result.eval_history] == [(5, 1.0), (10, 2.0), (15, 3.0)]
    assert all(math.isfinite(h["loss"]) for h in result.eval_history) and result.best_step is None
    assert "loss" in result.metrics and "epoch" not in result.metrics        # the test set, scored once at the end
    # linear warm-up over 3 steps from 0, then linear decay to 0 at step 15: the rate each step used
    expected = [1e-3 * (s / 3 if s < 3 else (15 - s) / 12) for s in range(15)]
    assert [step for step, _ in result.lr_history] == list(range(1, 16))
    assert [rate for _, rate in result.lr_history] == pytest.approx(expected)


def test_validation_during_training_does_not_change_the_training(cfg):
    plain = train.fit(tiny_classifier(), token_rows(40), None, cfg, name="plain", learning_rate=1e-3, **TINY_RUN)
    watched = train.fit(tiny_classifier(), token_rows(40), None, cfg, name="watched", learning_rate=1e-3,
                        validation_ds=token_rows(16, seed=1), eval_every=4, **TINY_RUN)
    assert [h["step"] for h in watched.eval_history] == [4, 8, 12, 15]      # every 4 steps and after the last one
    assert [s for s, _ in watched.loss_history] == [s for s, _ in plain.loss_history]
    assert [loss for _, loss in watched.loss_history] == pytest.approx([loss for _, loss in plain.loss_history])


def test_keep_best_ends_with_the_lowest_validation_loss_and_removes_its_folder(cfg, monkeypatch):
    import tempfile

    from transformers import Trainer

    folders = []

    class Recorded(tempfile.TemporaryDirectory):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            folders.append(self.name)

    monkeypatch.setattr(train.tempfile, "TemporaryDirectory", Recorded)
    validation = token_rows(16, flipped=True, seed=1)       # the better the model learns, the worse it does here
    result = train.fit(tiny_classifier(), token_rows(40), token_rows(16, flipped=True, seed=1), cfg, name="best",
                       validation_ds=validation, keep_best=True, learning_rate=3e-3, **TINY_RUN)
    losses = [h["loss"] for h in result.eval_history]
    assert len(losses) == 3 and losses[-1] > losses[0]      # it overfits, for the validation set
    best = min(result.eval_history, key=lambda h: h["loss"])
    assert result.best_step == best["step"] < result.steps
    # the model it returns holds the kept weights: the same rows score the best validation loss, not the last one
    assert result.metrics["loss"] == pytest.approx(best["loss"], rel=1e-5)
    rescored = Trainer(model=result.model, args=train.training_args(cfg)).evaluate(validation)["eval_loss"]
    assert rescored == pytest.approx(best["loss"], rel=1e-5)
    assert len(folders) == 1 and not __import__("os").path.exists(folders[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"keep_best": True}, "keep_best=True keeps the checkpoint with the lowest validation loss: pass validation_ds"),
    ({"validation_ds": "TEST"}, r"validation_ds is the test set \(eval_ds\)"),
    ({"validation_ds": "TRAIN"}, "validation_ds is the training set"),
    ({"validation_ds": "EMPTY"}, "validation_ds has no rows"),
    ({"validation_ds": "VAL", "eval_every": 0}, 'eval_every must be "epoch" or a positive whole number'),
    ({"validation_ds": "VAL", "eval_every": "step"}, 'eval_every must be "epoch" or a positive whole number'),
])
def test_fit_refuses_a_validation_that_would_choose_with_the_test_set_or_with_nothing(cfg, kwargs, message):
    train_ds, test = token_rows(8), token_rows(8, seed=2)
    chosen = {"TEST": test, "TRAIN": train_ds, "EMPTY": token_rows(8).select([]), "VAL": token_rows(8, seed=1)}
    kwargs = {k: chosen.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        train.fit(tiny_classifier(), train_ds, test, cfg, name="refused", **kwargs)


def test_training_curves_draw_train_and_validation_loss_the_best_checkpoint_and_the_schedule(cfg):
    from ftkit import results

    result = train.fit(tiny_classifier(), token_rows(40), None, cfg, name="tiny", keep_best=True,
                       validation_ds=token_rows(16, flipped=True, seed=1), learning_rate=3e-3, warmup_steps=3,
                       **TINY_RUN)
    fig = results.training_curves(result, per="epoch")
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"training loss", "validation loss", f"kept: step {result.best_step}", "learning rate"}
    assert list(traces["validation loss"].x) == [1.0, 2.0, 3.0]
    assert list(traces["learning rate"].y) == [rate for _, rate in result.lr_history]
    assert list(traces["training loss"].y) == [loss for _, loss in result.loss_history]
    assert list(results.training_curves(result).data[1].x) == [5, 10, 15]          # per step
    with pytest.raises(ValueError, match="no loss history to draw"):
        results.training_curves(train.RunResult("head", {}, 1, 1, 0.0, 0.0))
    with pytest.raises(ValueError, match='per must be "step" or "epoch"'):
        results.training_curves(result, per="batch")


def test_a_run_survives_a_json_round_trip_without_its_model():
    import json

    run = train.RunResult("r", {"accuracy": 0.5}, 10, 100, 1.5, 20.0, [(1, 0.7)], [{"step": 1, "loss": 0.6}],
                          {"note": "x"}, model=object(), steps=1, lr_history=[(1, 1e-4)], steps_per_epoch=1.0,
                          best_step=1)
    record = json.loads(json.dumps(run.to_record()))
    assert "model" not in record
    back = train.RunResult.from_record(record)
    assert back.model is None and back.row() == run.row() and back.best_step == 1
    assert back.loss_history == [[1, 0.7]] and back.eval_history == run.eval_history
    with pytest.raises(ValueError, match="not a recorded run: it lacks"):
        train.RunResult.from_record({"name": "r"})
