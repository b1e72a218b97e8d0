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
