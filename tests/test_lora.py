import pytest
import torch
import torch.nn as nn

from ftkit import lora, models


def test_course_example_counts():
    assert lora.lora_counts(100, 100, 10) == {"full": 10_000, "lora": 2_000, "saving %": 80.0}


@pytest.mark.parametrize("r, message", [(0, "positive integer"), (-2, "positive integer"),
                                        (11, r"r=11 is larger than min\(d, k\)=10")])
def test_bad_ranks(r, message):
    with pytest.raises(ValueError, match=message):
        lora.lora_counts(10, 50, r)
    with pytest.raises(ValueError, match=message):
        lora.LoRALinear(nn.Linear(50, 10), r=r)


def test_zero_init_equals_the_base_layer():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    layer = lora.LoRALinear(base, r=4, alpha=8)
    x = torch.randn(3, 12)
    assert torch.equal(layer(x), base(x))
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["A", "B"]


def test_parameter_count_formula():
    layer = lora.LoRALinear(nn.Linear(30, 20), r=5)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 5 * (20 + 30)


def test_merged_weight_gives_the_same_output():
    torch.manual_seed(1)
    layer = lora.LoRALinear(nn.Linear(6, 5), r=2, alpha=4)
    nn.init.normal_(layer.B)
    x = torch.randn(4, 6)
    merged = x @ layer.merged_weight().T + layer.base.bias
    assert torch.allclose(layer(x), merged, atol=1e-6)


def test_matches_peft_on_the_same_weights():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(2)
    net = nn.Sequential()
    net.add_module("proj", nn.Linear(16, 8))
    ours = lora.LoRALinear(nn.Linear(16, 8), r=4, alpha=12)
    ours.base.load_state_dict(net.proj.state_dict())
    wrapped = get_peft_model(net, LoraConfig(r=4, lora_alpha=12, target_modules=["proj"], lora_dropout=0.0))
    peft_layer = wrapped.base_model.model.proj
    nn.init.normal_(peft_layer.lora_B["default"].weight)  # a trained-looking, non-zero B
    ours.A.data.copy_(peft_layer.lora_A["default"].weight)
    ours.B.data.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(5, 16)
    assert torch.allclose(ours(x), wrapped(x), atol=1e-6)
    assert not torch.allclose(ours(x), ours.base(x))


def test_adapter_starts_as_identity_and_trains():
    adapter = lora.BottleneckAdapter(10, 3)
    x = torch.randn(2, 10)
    assert torch.equal(adapter(x), x)
    assert sum(p.numel() for p in adapter.parameters()) == 10 * 3 + 3 + 3 * 10 + 10
    with pytest.raises(ValueError, match="bottleneck size must be positive"):
        lora.BottleneckAdapter(10, 0)


def test_add_adapters_to_the_encoder_keeps_its_output_and_freezes_it():
    model = models.load_classifier(["neg", "pos"])
    model.eval()
    x = {"input_ids": torch.tensor([[101, 2023, 2003, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    before = model(**x).logits
    placed = lora.add_adapters(model, bottleneck=16)
    assert placed[0] == "bert.encoder.layer.0.output.dense" and len(placed) == 6
    assert torch.allclose(model(**x).logits, before, atol=1e-6)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"bert", "classifier"}  # bert.* only for the adapters
    encoder_trainable = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("bert.")]
    assert encoder_trainable and all(".output.dense.1." in n for n in encoder_trainable)  # the adapters only


def test_unknown_target_module_is_a_clear_error():
    model = models.load_classifier(["neg", "pos"])
    with pytest.raises(ValueError, match="target module 'q_proj' matches no Linear layer"):
        lora.add_lora(model, ["q_proj"])
    with pytest.raises(ValueError, match="target module 'q_proj' matches no Linear layer"):
        lora.peft_lora(model, ["q_proj"])
    with pytest.raises(ValueError, match="larger than min"):
        lora.peft_lora(model, ["query"], r=500)


def test_add_lora_by_name_on_the_encoder():
    model = models.load_classifier(["neg", "pos"])
    names = lora.add_lora(model, ["query", "value"], r=4)
    assert len(names) == 12 and names[0].endswith("attention.self.query")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 12 * 4 * (384 + 384) + 384 * 2 + 2     # the A/B pairs, and the new head (frozen: random)
    assert all(p.requires_grad for p in model.classifier.parameters())


def test_low_rank_errors_fall_to_zero():
    torch.manual_seed(0)
    W = torch.randn(20, 8) @ torch.randn(8, 30)  # rank 8
    errors = lora.low_rank_errors(W, [1, 4, 8])
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def tiny(kind: str):
    """A small random model of each architecture (no download): the head names differ by architecture."""
    from transformers import (DistilBertConfig, DistilBertForSequenceClassification, LlamaConfig, LlamaForCausalLM,
                              LlamaForSequenceClassification)

    llama = LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                        num_key_value_heads=2, vocab_size=100, num_labels=2, pad_token_id=0)
    return {"distilbert": lambda: DistilBertForSequenceClassification(
                DistilBertConfig(n_layers=1, dim=32, hidden_dim=64, n_heads=2, vocab_size=100)),
            "llama": lambda: LlamaForSequenceClassification(llama),
            "llama lm": lambda: LlamaForCausalLM(llama)}[kind]()


def test_the_head_is_found_by_the_models_own_names():
    assert lora.head_modules(models.load_classifier(["neg", "pos"])) == ["classifier"]
    assert lora.head_modules(models.load_token_classifier(["O", "B-X", "I-X"])) == ["classifier"]
    assert lora.head_modules(tiny("distilbert")) == ["pre_classifier", "classifier"]
    assert lora.head_modules(tiny("llama")) == ["score"]
    assert lora.head_modules(tiny("llama lm")) == []            # a pretrained LM head is not a fresh one
    wrapped = lora.peft_lora(tiny("distilbert"), ["q_lin"], r=2, keep=["classifier"])
    assert set(wrapped.peft_config["default"].modules_to_save) >= {"pre_classifier", "classifier"}


def test_peft_lora_trains_and_saves_the_new_classifier_head(cfg, tmp_path):
    """With its defaults: the random head trains with LoRA, and the saved adapter brings it back on reload."""
    from peft import PeftModel

    torch.manual_seed(0)
    model = lora.peft_lora(models.load_classifier(["neg", "pos"], cfg), ["query", "value"], r=4, alpha=8)
    # the head the model predicts with (peft keeps a frozen copy of the original beside a trained one)
    head = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" in n and "original" not in n}
    assert head and all(p.requires_grad for n, p in model.named_parameters() if n in head)
    batch = {"input_ids": torch.tensor([[101, 2204, 3185, 102], [101, 6659, 3185, 102]]),
             "attention_mask": torch.ones(2, 4, dtype=torch.long), "labels": torch.tensor([1, 0])}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(not torch.equal(p, head[n]) for n, p in model.named_parameters() if n in head)
    model.eval()
    probe = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        in_memory = model(**probe).logits
    model.save_pretrained(tmp_path)
    torch.manual_seed(1)                                       # another random head underneath
    reloaded = PeftModel.from_pretrained(models.load_classifier(["neg", "pos"], cfg), tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**probe).logits, in_memory, atol=1e-5)


def test_the_three_alpha_rules_agree_at_rank_8_and_part_elsewhere():
    assert {rule: lora.rule_scale(rule, 8) for rule in lora.ALPHA_RULES} == pytest.approx(
        {rule: 2.0 for rule in lora.ALPHA_RULES})
    assert lora.rule_scale("fixed alpha = 16", 32) == 0.5             # alpha / r falls as 1/r
    assert lora.rule_scale("alpha = 2r", 32) == 2.0                   # stays
    assert lora.rule_scale("rsLoRA: alpha / sqrt(r)", 32) == pytest.approx(1.0)   # falls as 1/sqrt(r)
    assert lora.alpha_for("alpha = 2r", 32) == (64.0, False) and lora.alpha_for("rsLoRA: alpha / sqrt(r)", 2)[1]
    with pytest.raises(ValueError, match="unknown alpha rule 'alpha = r'; choose one of"):
        lora.alpha_for("alpha = r", 8)
    with pytest.raises(ValueError, match="rank r must be a positive integer"):
        lora.alpha_for("alpha = 2r", 0)


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_scales_the_update_as_the_rule_says_and_update_norm_measures_it(rslora):
    """peft's own scaling is alpha / r (alpha / sqrt(r) with rsLoRA), and update_norm is ||scale * B A||_F."""
    torch.manual_seed(0)
    model = lora.peft_lora(tiny("llama lm"), ["q_proj", "v_proj"], r=4, alpha=12, use_rslora=rslora,
                           task_type="CAUSAL_LM")
    layer = model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    assert layer.scaling["default"] == pytest.approx(lora.lora_scale(12, 4, rslora)) == pytest.approx(
        12 / 2 if rslora else 12 / 4)
    assert lora.update_norm(model, "model.layers.0.self_attn.q_proj") == 0.0             # B starts at zero
    nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(3, 32)
    delta = layer(x) - layer.base_layer(x)                       # what the adapter adds, computed by peft
    update = lora.lora_scale(12, 4, rslora) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert torch.allclose(delta, x @ update.T, atol=1e-5)
    assert lora.update_norm(model, "model.layers.0.self_attn.q_proj") == pytest.approx(
        torch.linalg.matrix_norm(update).item(), rel=1e-5)
    with pytest.raises(ValueError, match="no LoRA layer named 'model.layers.0.mlp.up_proj'"):
        lora.update_norm(model, "model.layers.0.mlp.up_proj")
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        lora.peft_lora(tiny("llama lm"), ["q_proj"], r=4, alpha=0)


@pytest.mark.parametrize("architecture", ["bert", "distilbert"])
def test_the_four_ways_train_what_they_say_on_two_architectures(architecture):
    from ftkit.exercises.fixtures import tiny_classifier
    from ftkit.train import count_params

    heads = {"bert": {"classifier"}, "distilbert": {"pre_classifier", "classifier"}}[architecture]
    trained = {}
    for way in lora.CLASSIFIER_WAYS:
        model = lora.prepare_classifier(tiny_classifier(architecture), way)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        trained[way] = count_params(model)[0]
        if way == "head only":       # the new head, and BERT's pooler (not a block)
            assert {n.split(".")[0] for n in names if ".pooler." not in n} == heads
        if way == "LoRA r=8 (peft)":
            assert names and all("lora_" in n or "modules_to_save" in n for n in names)
            assert any(part in names[0] for part in ("query", "q_lin"))        # named for the architecture
    assert trained["full"] > trained["adapters (32)"] > trained["head only"] and trained["LoRA r=8 (peft)"] > 0
    with pytest.raises(ValueError, match="unknown way 'lora'"):
        lora.prepare_classifier(tiny_classifier(architecture), "lora")


def test_the_four_ways_sweep_settings_depend_on_the_profile_alone():
    from ftkit import env, results

    cpu = results.code_settings("lora_classifiers", env.PROFILES["cpu"])
    assert cpu["learning_rates"] == {"full": 5e-5, "head only": 1e-3, "adapters (32)": 1e-3, "LoRA r=8 (peft)": 1e-3}
    assert cpu["train_size"] == 2000 and cpu["epochs"] == 2 and cpu["ways"] == list(lora.CLASSIFIER_WAYS)
    assert results.code_settings("lora_classifiers", env.PROFILES["gpu"])["learning_rates"]["LoRA r=8 (peft)"] == 5e-4


def test_the_alpha_sweep_settings_name_every_run_and_its_alpha():
    from ftkit import env, results

    cpu = results.code_settings("lora_alpha", env.PROFILES["cpu"])
    assert (cpu["steps"], cpu["held-out examples"], cpu["batch"], cpu["max_length"]) == (10, 20, 4, 256)
    assert cpu["runs"] == [[8, "alpha = 2r"], [32, "fixed alpha = 16"], [32, "rsLoRA: alpha / sqrt(r)"],
                           [32, "alpha = 2r"]]
    assert cpu["alpha rules"]["alpha = 2r"] == [[16.0, False], [64.0, False]]
    assert cpu["alpha rules"]["rsLoRA: alpha / sqrt(r)"] == [[pytest.approx(16 / 8 ** 0.5), True]] * 2
    assert results.code_settings("lora_alpha", env.PROFILES["gpu"])["steps"] == 30


def test_a_causal_run_reports_its_scale_and_update_and_repeats_exactly(cfg):
    """What the notebook checks against the recording: the same settings give the same run, whatever ran before."""
    tok = models.load_tokenizer("causal", cfg)
    tok.pad_token = tok.pad_token or tok.eos_token
    train_ds, held, held_short = lora.causal_data(cfg, tok)
    assert len(held) == lora.causal_sizes(cfg)["held out"] and held_short[0] == held[0]
    runs = [lora.train_causal(cfg, train_ds.select(range(4)), held_short.select(range(2)), tok, 4, "attention", rule,
                              steps=1) for rule in ("fixed alpha = 16", "fixed alpha = 16", "alpha = 2r")]
    first, again, other = runs
    assert first.extra["scale"] == 4.0 and other.extra["scale"] == 2.0 and first.extra["alpha"] == 16.0
    assert first.extra[lora.UPDATE] == lora.update_norm(first.model, "model.layers.0.self_attn.q_proj") > 0
    assert again.metrics["held-out loss"] == first.metrics["held-out loss"]
    assert again.extra[lora.UPDATE] == first.extra[lora.UPDATE]
    assert other.extra[lora.UPDATE] != first.extra[lora.UPDATE]      # half the scale, another update


@pytest.mark.parametrize("targets, alpha, keep, message", [
    ([], 8, (), "non-empty list"),
    ("attention", 8, (), "non-empty list"),            # a string would be read letter by letter
    (["q_lin"], None, (), "positive number"),
    (["q_lin"], 0, (), "positive number"),
    (["q_lin"], 8, ["clasifier"], "does not have"),     # peft would silently keep nothing
])
def test_peft_lora_refuses_targets_alpha_and_keep_it_cannot_use(targets, alpha, keep, message):
    with pytest.raises(ValueError, match=message):
        lora.peft_lora(tiny("distilbert"), targets, r=2, alpha=alpha, keep=keep)


@pytest.mark.parametrize("labels, message", [("np", "not the string"), (["pos", "pos"], "repeat a name")])
def test_a_classifier_needs_a_list_of_distinct_label_names(labels, message):
    with pytest.raises(ValueError, match=message):
        models._label_maps(labels)
