import pytest
import torch
from safetensors import safe_open

from ftkit import models


def test_packaged_encoder_resolves_offline(cfg):
    path = models.resolve("encoder", cfg)
    assert path == str(models.packaged_minilm_path())


def test_the_profiles_default_hub_id_falls_back_to_the_packaged_model_offline(monkeypatch, capsys, tmp_path):
    import huggingface_hub.constants

    from ftkit.env import get_profile

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))     # an empty HF cache
    assert models.resolve("encoder", get_profile("gpu")) == str(models.packaged_minilm_path())
    assert "offline: the profile's encoder model 'distilbert-base-uncased' is not cached" in capsys.readouterr().out


def test_an_explicit_hub_id_never_silently_becomes_the_packaged_model(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="'distilbert-base-uncased' is not in the local Hugging Face cache"):
        models.resolve("encoder", name="distilbert-base-uncased")


def test_an_explicit_hub_id_in_the_local_hf_cache_is_loaded_from_it_offline(monkeypatch, tmp_path):
    """The layout HF's downloader writes: models--org--name/refs/main -> snapshots/<commit>/files."""
    import shutil

    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--someone--tiny-minilm" / "snapshots" / commit
    shutil.copytree(models.packaged_minilm_path(), snapshot)
    (tmp_path / "models--someone--tiny-minilm" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-minilm" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert models.resolve("encoder", name="someone/tiny-minilm") == str(snapshot)
    assert models.load_tokenizer("encoder", name="someone/tiny-minilm")("a test")["input_ids"][0] == 101   # [CLS]


def test_a_local_path_that_does_not_exist_is_an_error_not_a_fallback(tmp_path):
    for missing in (str(tmp_path / "my-model"), "./models/my-model", "~/nowhere/model"):
        with pytest.raises(ValueError, match="model folder .* does not exist; check the path"):
            models.resolve("encoder", name=missing)
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="pass None for the profile's default"):
            models.resolve("encoder", name=empty)


def test_a_hub_id_while_online_is_passed_through(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert models.resolve("causal", name="HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"


def test_a_local_path_is_used_as_is(tmp_path):
    assert models.resolve("encoder", name=str(tmp_path)) == str(tmp_path)


def test_unknown_role():
    with pytest.raises(ValueError, match="unknown model role 'vision'"):
        models.resolve("vision")


def test_the_packaged_minilm_has_no_masked_lm_head():
    # The course says so wherever it matters; this pins the fact.
    with safe_open(str(models.packaged_minilm_path() / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if k.startswith("cls.")]
    assert any(k.startswith("encoder.layer.5.") for k in keys)


def test_classifier_needs_two_labels(cfg):
    with pytest.raises(ValueError, match="at least 2 labels"):
        models.load_classifier(["only"], cfg)


def test_classifier_gets_label_maps(cfg):
    model = models.load_classifier(["negative", "positive"], cfg)
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_causal_loads_from_the_safetensors_cache_and_answers(cfg):
    model, tok = models.load_causal(cfg)
    assert (models.causal_cache_path() / "model.safetensors").is_file()
    assert model.config.num_hidden_layers == 30 and "quantization_config" not in model.config.to_dict()
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # real pretrained weights survived the GGUF conversion


# --------------------------------------------------------------------------- architectures, dtypes, devices
def tiny(kind, head="classify"):
    """A tiny model of a real architecture, built from its config (no download)."""
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, BertConfig,
                              DistilBertConfig, LlamaConfig, MistralConfig, Qwen2Config, RobertaConfig)

    decoder = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=64, vocab_size=100, attention_dropout=0.1)
    encoder = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    config = {"bert": lambda: BertConfig(**encoder), "roberta": lambda: RobertaConfig(**encoder),
              "distilbert": lambda: DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, vocab_size=100),
              "llama": lambda: LlamaConfig(**decoder), "mistral": lambda: MistralConfig(**decoder),
              "qwen2": lambda: Qwen2Config(**decoder)}[kind]()
    auto = AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification
    return auto.from_config(config)


@pytest.mark.parametrize("kind", ["bert", "roberta", "distilbert", "llama", "mistral", "qwen2"])
def test_lora_targets_are_read_from_the_models_own_architecture(kind):
    from ftkit import lora

    model = tiny(kind)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for which in ("attention", "mlp", "attention+MLP", "all-linear"):
        targets = models.lora_targets(model, which)
        assert targets and lora.matching_modules(model, targets), (kind, which)       # every name exists
    attention = lora.matching_modules(model, models.lora_targets(model, "attention"))
    assert len(attention) == 2 * 2                             # query and value in each of the 2 blocks
    every = lora.matching_modules(model, models.lora_targets(model, "all-linear"))
    assert set(every) < linears and not {"classifier", "score", "pre_classifier"} & set(every)   # blocks only
    with pytest.raises(ValueError, match="which must be one of"):
        models.lora_targets(model, "everything")


@pytest.mark.parametrize("kind", ["bert", "distilbert", "llama"])
def test_dropout_config_turns_off_every_dropout_of_the_architecture(kind):
    from transformers import AutoModelForSequenceClassification

    config = tiny(kind).config
    assert any(getattr(config, k, 0) for k in models.architecture(config).dropout)      # dropout is on to start
    off = type(config)(**{**config.to_dict(), **models.dropout_config(0, config)})
    model = AutoModelForSequenceClassification.from_config(off)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(getattr(m, "attention_dropout", 0) in (0, 0.0) for m in model.modules()
               if not isinstance(getattr(m, "attention_dropout", 0), torch.nn.Module))
    with pytest.raises(ValueError, match="probability in"):
        models.dropout_config(1.5, config)


def test_an_unknown_architecture_is_named_with_what_to_do():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="does not know the module names of 'gpt2' models.*--lora-targets"):
        models.lora_targets(GPT2Config(), "attention")


def test_the_random_head_baseline_reinitialises_a_pretrained_bert_head_and_keeps_the_tied_decoder(cfg):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, vocab_size=100))
    with torch.no_grad():                              # a head that has been trained
        for p in model.cls.parameters():
            p.add_(1.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = models.random_masked_lm_head(model)
    assert set(names) == {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
                          "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
                          "cls.predictions.transform.LayerNorm.bias"}
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[n], before[n]) for n in names)
    embeddings = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(after[embeddings], before[embeddings])
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    packaged = models.load_masked_lm(cfg, warmed_head=False)       # the packaged MiniLM: random, as before
    assert torch.equal(packaged.cls.predictions.bias, torch.zeros_like(packaged.cls.predictions.bias))


def test_on_device_moves_tensors_of_a_batch_and_leaves_the_rest():
    model = torch.nn.Linear(2, 2).to("meta")
    batch = models.on_device({"input_ids": torch.ones(1, 2), "name": "x"}, model)
    assert batch["input_ids"].device.type == "meta" and batch["name"] == "x"
    assert models.on_device(torch.ones(2), model).device.type == "meta"


def test_a_judge_loads_in_bfloat16_only_on_a_gpu_with_bfloat16_units(monkeypatch):
    assert models.inference_dtype("cpu") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert models.inference_dtype("cuda") == "float32"           # a T4
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert models.inference_dtype("cuda") == "bfloat16"


def test_describe_names_a_cached_hub_model_by_its_id(tmp_path):
    folder = tmp_path / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc123"
    assert models.describe(str(folder)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert models.describe(str(tmp_path)) == str(tmp_path)
