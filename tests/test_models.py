import pytest
import torch
from safetensors import safe_open

from ftkit import models


def test_packaged_encoder_resolves_offline(cfg):
    path = models.resolve("encoder", cfg)
    assert path == str(models.packaged_minilm_path())


def test_a_hub_id_while_offline_falls_back_to_the_packaged_model(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve("encoder", name="distilbert-base-uncased") == str(models.packaged_minilm_path())
    assert "offline" in capsys.readouterr().out


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
