"""Session 06: parameter-efficient fine-tuning with bottleneck adapters and LoRA.

- `lora_counts` and `low_rank_errors`: the low-rank idea in numbers.
- `LoRALinear`: LoRA from scratch, a frozen nn.Linear plus a trainable B @ A scaled by alpha / r.
- `BottleneckAdapter` and `add_adapters`: down-projection, non-linearity, up-projection, residual.
- `peft_lora`: the same idea with the `peft` library, on named target modules; a classifier's new head
  (`head_modules`) is trained and saved with the adapter.
- `checkpoint_bytes`: what a checkpoint costs on disk, whole model vs trained part only.
- `CLASSIFIER_WAYS`, `prepare_classifier`, `train_classifier`: one classifier trained four ways (full, head only,
  adapters, LoRA); `classifier_sweep` is the recorded version of all four (`results.SWEEPS["lora_classifiers"]`).
- `ALPHA_RULES`, `alpha_for`, `lora_scale`, `update_norm`: how the scale of the update (alpha / r, or rsLoRA's
  alpha / sqrt(r)) moves with the rank under three rules for alpha, and how large a trained update is.
- `CAUSAL`, `causal_data`, `train_causal`: LoRA (or full fine-tuning) of the causal LM on dolly, scored by its
  held-out loss; `alpha_sweep` is the recorded set of short runs of "what alpha does" (`SWEEPS["lora_alpha"]`).

The instruction-data helpers (prompt, tokenizing, collator, held-out loss, generation) live in
`ftkit.instruct` (session 05), and session 06's notebook imports them from there.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .models import ARCHITECTURES, lora_targets  # noqa: F401  (targets are chosen from the model: lora_targets)

# By model family (config.model_type), from the one table in ftkit.models; pick them from a model with
# `lora_targets(model, "attention")`, which reads its type.
ATTENTION = {kind: list(a.attention) for kind, a in ARCHITECTURES.items()}  # the LoRA paper's choice (q and v)
MLP = {kind: list(a.mlp) for kind, a in ARCHITECTURES.items()}
FFN_OUT = ("output.dense", "ffn.lin2", "mlp.down_proj", "mlp.c_proj")  # a block's feed-forward output


# --------------------------------------------------------------------------- the idea in numbers
def check_rank(r: int, d: int, k: int) -> None:
    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"rank r must be a positive integer, got {r!r}")
    if r > min(d, k):
        raise ValueError(f"rank r={r} is larger than min(d, k)={min(d, k)} for a {d}x{k} matrix; "
                         f"a rank above that cannot add anything")


def lora_counts(d: int, k: int, r: int) -> dict:
    """A d x k update written as B (d x r) @ A (r x k): r * (d + k) parameters instead of d * k."""
    check_rank(r, d, k)
    full, low = d * k, r * (d + k)
    return {"full": full, "lora": low, "saving %": 100.0 * (1 - low / full)}


def low_rank_errors(W: torch.Tensor, ranks) -> list[float]:
    """Relative Frobenius error of the best rank-r approximation of W (truncated SVD), for each r."""
    S = torch.linalg.svdvals(W.detach().float())
    total = (S ** 2).sum()
    return [float(((S[r:] ** 2).sum() / total).sqrt()) for r in ranks]


# --------------------------------------------------------------------------- LoRA from scratch
class LoRALinear(nn.Module):
    """y = W x + b + (alpha / r) * B A x, with W and b frozen and only A, B trained.

    B starts at zero, so at step 0 the layer is exactly the pretrained layer.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        check_rank(r, base.out_features, base.in_features)
        self.base, self.r, self.scaling = base, r, alpha / r
        for p in self.base.parameters():
            p.requires_grad = False
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # the same init as nn.Linear and peft
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.base(x) + (self.dropout(x) @ self.A.T @ self.B.T) * self.scaling

    def merged_weight(self) -> torch.Tensor:
        return self.base.weight + self.scaling * self.B @ self.A


def matching_modules(model, targets) -> list[str]:
    """Names of nn.Linear modules whose name ends with one of `targets`; a target that matches nothing is an error."""
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets must be a non-empty list of module names, e.g. models.lora_targets(model, "
                         f"'attention') or ['query', 'value'], got {targets!r}")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    found = []
    for target in targets:
        hits = [n for n in linears if n == target or n.endswith("." + target)]
        if not hits:
            short = sorted({".".join(n.split(".")[-2:]) for n in linears})[:12]
            raise ValueError(f"target module {target!r} matches no Linear layer; names end with e.g. {short}")
        found += hits
    return sorted(set(found))


def add_lora(model, targets, r: int = 8, alpha: float = 16) -> list[str]:
    """Freeze `model` and wrap every Linear named in `targets` with a LoRALinear; returns the names.
    A classification model's new head (`head_modules`) stays trainable: frozen, it would stay random."""
    names = matching_modules(model, targets)
    for p in model.parameters():
        p.requires_grad = False
    for name in names:
        parent, child = _parent(model, name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha))
    for head in head_modules(model):
        for p in model.get_submodule(head).parameters():
            p.requires_grad = True
    return names


def head_modules(model) -> list[str]:
    """The task head of a classification model: its top-level modules with weights outside the pretrained base model
    (`model.base_model_prefix`), found by the model's own names: BERT `classifier`, DistilBERT `pre_classifier` and
    `classifier`, Llama `score`. `from_pretrained` creates them at random for a new label set, so they must train.

    [] for any other model: a language model's output layer is pretrained (and often tied to the input embeddings),
    so it is not a fresh head."""
    from transformers.models.auto import modeling_auto as auto

    task_heads = (auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                  auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
                  auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES, auto.MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES)
    classes = {c for mapping in task_heads for v in mapping.values() for c in ([v] if isinstance(v, str) else v)}
    if type(model).__name__ not in classes:
        return []
    base = getattr(model, "base_model_prefix", "")
    return [name for name, child in model.named_children()
            if name != base and any(True for _ in child.parameters())]


def _parent(model, name):
    *path, child = name.split(".")
    return model.get_submodule(".".join(path)) if path else model, child


# --------------------------------------------------------------------------- bottleneck adapters
class BottleneckAdapter(nn.Module):
    """x + up(gelu(down(x))): a small trainable detour. `up` starts at zero, so it starts as the identity."""

    def __init__(self, hidden: int, bottleneck: int = 32):
        super().__init__()
        if bottleneck <= 0:
            raise ValueError(f"bottleneck size must be positive, got {bottleneck}")
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return x + self.up(nn.functional.gelu(self.down(x)))


def add_adapters(model, bottleneck: int = 32) -> list[str]:
    """Freeze the encoder and put an adapter after each block's feed-forward output projection
    (before its residual add and LayerNorm, where Houlsby et al. place it). The head stays trainable."""
    from .train import find_blocks

    blocks_name, blocks = find_blocks(model)
    for name, p in model.named_parameters():
        p.requires_grad = not name.startswith(model.base_model_prefix + ".")
    placed = []
    for i, block in enumerate(blocks):
        names = [n for n, m in block.named_modules() if isinstance(m, nn.Linear) and n.endswith(FFN_OUT)]
        if not names:
            raise ValueError(f"block {blocks_name}.{i} has no feed-forward output among {FFN_OUT}")
        parent, child = _parent(block, names[-1])
        linear = getattr(parent, child)
        setattr(parent, child, nn.Sequential(linear, BottleneckAdapter(linear.out_features, bottleneck)))
        placed.append(f"{blocks_name}.{i}.{names[-1]}")
    return placed


# --------------------------------------------------------------------------- peft
def peft_lora(model, targets, r: int = 8, alpha: float = 16, task_type: str | None = None, keep=(),
              use_rslora: bool = False):
    """Wrap `model` with peft LoRA on the named targets (validated first, for a clear error).

    The update is scaled by alpha / r, or by alpha / sqrt(r) with `use_rslora` (see `ALPHA_RULES`).
    A classification model's head (`head_modules`: e.g. BERT `classifier`, DistilBERT `pre_classifier` and
    `classifier`, Llama `score`) is new and random, so it is always trained fully and saved with the adapter
    (peft's `modules_to_save`): frozen, LoRA would learn against a fixed random head, and a reloaded adapter would
    meet another random head. `keep` names further modules to train fully and save.
    """
    from peft import LoraConfig, get_peft_model

    first = model.get_submodule(matching_modules(model, targets)[0])
    check_rank(r, first.out_features, first.in_features)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"lora alpha must be a positive number (the update is scaled by alpha / r), got {alpha!r}")
    names = [n for n, _ in model.named_modules()]
    unknown = [k for k in keep if not any(n == k or n.endswith("." + k) for n in names)]
    if unknown:       # peft would silently train nothing extra for a misspelled name
        raise ValueError(f"keep names modules the model does not have: {unknown}; module names end with e.g. "
                         f"{sorted({n.split('.')[-1] for n in names if n})[:12]}")
    heads = head_modules(model)
    save = heads + [k for k in keep if k not in heads]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                        task_type=task_type, modules_to_save=save or None, use_rslora=use_rslora)
    return get_peft_model(model, config)


# --------------------------------------------------------------------------- alpha and the scale of the update
# How alpha is chosen as the rank r changes, each rule anchored at the course's r = 8, alpha = 16 (scale 2), so the
# three agree at r = 8 and differ elsewhere. (alpha for rank r, scaled by alpha / sqrt(r) instead of alpha / r)
ANCHOR_RANK, ANCHOR_ALPHA = 8, 16
ALPHA_RULES = {
    # Hu et al. 2021 (section 4.1): alpha set once, "to the first r we try", and not tuned; the scale falls as 1/r
    "fixed alpha = 16": lambda r: (float(ANCHOR_ALPHA), False),
    # alpha grows with the rank (many recipes, and every other LoRA run of this course): the scale stays 2
    "alpha = 2r": lambda r: (2.0 * r, False),
    # rsLoRA (Kalajdzievski 2023; peft use_rslora=True): scale alpha / sqrt(r), alpha fixed; falls as 1/sqrt(r)
    "rsLoRA: alpha / sqrt(r)": lambda r: (ANCHOR_ALPHA / math.sqrt(ANCHOR_RANK), True),
}


def alpha_for(rule: str, r: int) -> tuple[float, bool]:
    """(alpha, use_rslora) for rank `r` under one of `ALPHA_RULES`; a ValueError names the rules."""
    if rule not in ALPHA_RULES:
        raise ValueError(f"unknown alpha rule {rule!r}; choose one of {list(ALPHA_RULES)}")
    if not isinstance(r, int) or r <= 0:
        raise ValueError(f"rank r must be a positive integer, got {r!r}")
    return ALPHA_RULES[rule](r)


def lora_scale(alpha: float, r: int, use_rslora: bool = False) -> float:
    """The factor that multiplies B @ A: alpha / r (Hu et al. 2021), or alpha / sqrt(r) (rsLoRA)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def rule_scale(rule: str, r: int) -> float:
    """The scale of the update at rank `r` under one of `ALPHA_RULES`."""
    alpha, rslora = alpha_for(rule, r)
    return lora_scale(alpha, r, rslora)


def update_norm(model, module: str | None = None) -> float:
    """Frobenius norm of the update a trained peft LoRA layer adds to its frozen weight: ||scale * B @ A||_F.

    `module` is the layer's name in the base model, e.g. "model.layers.0.self_attn.q_proj" (peft's wrapping prefix
    is found by suffix); by default the model's first LoRA layer (the first block's first target). A ValueError when
    no LoRA layer of that name exists."""
    for name, layer in model.named_modules():
        if (module is None or name == module or name.endswith("." + module)) and hasattr(layer, "lora_A") \
                and layer.lora_A:
            adapter = next(iter(layer.lora_A))
            with torch.no_grad():
                delta = layer.lora_B[adapter].weight @ layer.lora_A[adapter].weight
                return float(layer.scaling[adapter] * torch.linalg.matrix_norm(delta.float()))
    raise ValueError(f"no LoRA layer named {module!r} in this model; LoRA layers: "
                     f"{[n for n, m in model.named_modules() if hasattr(m, 'lora_A') and m.lora_A][:6]}")


def checkpoint_bytes(model, trainable_only: bool) -> int:
    """Bytes on disk of a safetensors checkpoint: the whole model, or only what was trained."""
    from safetensors.torch import save_file

    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad or not trainable_only}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file(state, str(path))
        return os.path.getsize(path)


# --------------------------------------------------------------------------- one classifier, four ways
CLASSIFIER_WAYS = ("full", "head only", "adapters (32)", "LoRA r=8 (peft)")
# PEFT methods usually get a higher learning rate than full fine-tuning, in practice: their few new weights start
# from a neutral point (adapters' up-projection and LoRA's B at zero, a random head) and must move far.
PEFT_LEARNING_RATE = {"smoke": 1e-3, "cpu": 1e-3, "gpu": 5e-4}


def prepare_classifier(model, way: str):
    """A fresh classifier made ready for one of `CLASSIFIER_WAYS`; returns the model to train. "full" trains
    everything; "head only" freezes every block and the embeddings; "adapters (32)" adds bottleneck adapters of 32
    (`add_adapters`); "LoRA r=8 (peft)" puts peft LoRA with r = 8, alpha = 16 on the attention's query and value,
    named for the model (`lora_targets`), with the new head trained too."""
    from .train import find_blocks, freeze_bottom

    if way == "full":
        freeze_bottom(model, 0)
        return model
    if way == "head only":
        freeze_bottom(model, len(find_blocks(model)[1]))
        return model
    if way == "adapters (32)":
        add_adapters(model, bottleneck=32)
        return model
    if way == "LoRA r=8 (peft)":
        return peft_lora(model, lora_targets(model, "attention"), r=8, alpha=16)
    raise ValueError(f"unknown way {way!r}; choose one of {list(CLASSIFIER_WAYS)}")


def classifier_learning_rate(way: str, profile) -> float:
    """The profile's learning rate for full fine-tuning, `PEFT_LEARNING_RATE` for the three others."""
    profile = getattr(profile, "profile", profile)
    return profile.learning_rate if way == "full" else PEFT_LEARNING_RATE.get(profile.name, 1e-3)


def classifier_data(cfg):
    """rotten_tomatoes cut to the profile, tokenized: (encoded DatasetDict, tokenizer, label names)."""
    from . import data, tuning

    rt = data.for_profile(data.load("rotten_tomatoes"), cfg)
    encoded, tokenizer = tuning.tokenize(rt, cfg)
    return encoded, tokenizer, rt["train"].features["label"].names


def train_classifier(cfg, way: str, encoded, tokenizer, label_names):
    """A fresh classifier trained one of the four ways and scored on the test split: a RunResult whose
    `extra["checkpoint KB"]` is what saving it costs (the whole model for "full", the trained part otherwise)."""
    from . import metrics, models, train
    from .env import seed_everything

    seed_everything(getattr(cfg, "seed", 42))    # the same random head and LoRA A in every run of a way, in any order
    model = prepare_classifier(models.load_classifier(label_names, cfg), way)
    result = train.fit(model, encoded["train"], encoded["test"], cfg, name=way, tokenizer=tokenizer,
                       compute_metrics=metrics.compute_classification,
                       learning_rate=classifier_learning_rate(way, cfg))
    result.extra["checkpoint KB"] = round(checkpoint_bytes(model, trainable_only=way != "full") / 1000)
    return result


def classifier_sweep(cfg) -> list[dict]:
    """The four ways in the profile's sizes, one row each (what `python -m ftkit record lora_classifiers` keeps)."""
    encoded, tokenizer, label_names = classifier_data(cfg)
    return [train_classifier(cfg, way, encoded, tokenizer, label_names).numbers_only().row()
            for way in CLASSIFIER_WAYS]


def classifier_settings(profile) -> dict:
    """Everything that decides `classifier_sweep`'s rows, from the profile alone."""
    p = getattr(profile, "profile", profile)
    return {"data": "rotten_tomatoes", "model": p.models["encoder"], "train_size": p.train_size,
            "eval_size": p.eval_size, "epochs": p.epochs, "max_steps": p.max_steps, "batch_size": p.batch_size,
            "max_length": p.max_length, "ways": list(CLASSIFIER_WAYS),
            "learning_rates": {way: classifier_learning_rate(way, p) for way in CLASSIFIER_WAYS},
            "adapter bottleneck": 32, "lora": {"r": 8, "alpha": 16, "targets": "attention"}}


# --------------------------------------------------------------------------- LoRA on the causal LM, and alpha measured
# Sizes per profile. One epoch of dolly's 544 examples is ~10 minutes on 2 CPU cores, so the cpu profile's main run
# trains 20 steps of 4 (a seventh of an epoch); "what alpha does" compares runs of `short steps`, each scored on the
# first `held short` held-out examples.
CAUSAL = {
    "smoke": {"batch": 2, "max_length": 96, "held out": 8, "epochs": 4 / 544, "short steps": 1, "held short": 4},
    "cpu": {"batch": 4, "max_length": 256, "held out": 60, "epochs": 20 * 4 / 544, "short steps": 10,
            "held short": 20},
    "gpu": {"batch": 16, "max_length": 512, "held out": 60, "epochs": 3.0, "short steps": 30, "held short": 60},
}
CAUSAL_LEARNING_RATE = {"LoRA": 5e-4, "full": 5e-5}
ALPHA_RUNS = ((8, "alpha = 2r"), (32, "fixed alpha = 16"), (32, "rsLoRA: alpha / sqrt(r)"), (32, "alpha = 2r"))
UPDATE = "update norm"     # RunResult.extra key: ||(alpha / r) B A||_F of the first LoRA layer (first block's q_proj)


def causal_sizes(profile) -> dict:
    """`CAUSAL` for a profile (or a cfg)."""
    return CAUSAL[getattr(profile, "profile", profile).name]


def causal_data(cfg, tokenizer):
    """dolly tokenized for the profile (`instruct.tokenize_instructions`): (train split, the held-out rows, the
    short runs' held-out rows, a prefix of the former)."""
    from . import data, instruct

    sizes = causal_sizes(cfg)
    encoded = instruct.tokenize_instructions(data.load("dolly"), tokenizer, sizes["max_length"])
    held = encoded["test"].select(range(sizes["held out"]))
    return encoded["train"], held, held.select(range(sizes["held short"]))


def train_causal(cfg, train_ds, held, tokenizer, rank: int = 8, targets: str = "attention",
                 alpha_rule: str = "alpha = 2r", *, full: bool = False, steps: int | None = None,
                 epochs: float | None = None, learning_rate: float | None = None):
    """A fresh copy of the causal LM with LoRA (r = `rank` on `targets`, alpha from `alpha_rule`), or fully
    fine-tuned, trained on `train_ds` for `steps` optimizer steps (else `epochs`, else the profile's) in batches of
    the profile's size; scored by `instruct.held_out_loss` on `held` ("held-out loss", mean per response token).
    A LoRA run's `extra` holds rank, alpha, its scale and `UPDATE`, the size of the update it learned in the first
    LoRA layer. Every run starts from the same seed, so two runs differ only by their settings."""
    from . import instruct, models, train
    from .env import seed_everything

    sizes = causal_sizes(cfg)
    seed_everything(getattr(cfg, "seed", 42))
    model, _ = models.load_causal(cfg)
    if not full:
        alpha, rslora = alpha_for(alpha_rule, rank)
        model = peft_lora(model, lora_targets(model, targets), r=rank, alpha=alpha, use_rslora=rslora,
                          task_type="CAUSAL_LM")
    learning_rate = learning_rate or CAUSAL_LEARNING_RATE["full" if full else "LoRA"]
    length = {"max_steps": steps} if steps else {"max_steps": -1, "num_train_epochs": epochs or sizes["epochs"]}
    name = "full fine-tuning" if full else f"LoRA r={rank} {targets}, {alpha_rule}, lr {learning_rate:g}"
    result = train.fit(model, train_ds, None, cfg, name=name, data_collator=instruct.causal_collator(tokenizer),
                       per_device_train_batch_size=sizes["batch"], learning_rate=learning_rate, logging_steps=1,
                       **length)
    result.metrics["held-out loss"] = instruct.held_out_loss(model, held, tokenizer)
    result.extra["s/step"] = round(result.seconds / max(result.steps, 1), 2)
    if not full:
        result.extra.update({"rank": rank, "alpha": round(alpha, 2), "scale": lora_scale(alpha, rank, rslora),
                             UPDATE: update_norm(model)})
    return result


def alpha_sweep(cfg) -> list[dict]:
    """The short runs of `ALPHA_RUNS`, one row each with its "rule" (what `python -m ftkit record lora_alpha`
    keeps)."""
    from . import models

    model, tokenizer = models.load_causal(cfg)
    del model                                   # every run loads its own copy
    train_ds, _, held_short = causal_data(cfg, tokenizer)
    steps = causal_sizes(cfg)["short steps"]
    return [{**train_causal(cfg, train_ds, held_short, tokenizer, rank, "attention", rule, steps=steps)
             .numbers_only().row(), "rule": rule} for rank, rule in ALPHA_RUNS]


def alpha_settings(profile) -> dict:
    """Everything that decides `alpha_sweep`'s rows, from the profile alone."""
    p = getattr(profile, "profile", profile)
    sizes = causal_sizes(p)
    return {"data": "dolly", "model": p.models["causal"], "max_length": sizes["max_length"], "batch": sizes["batch"],
            "steps": sizes["short steps"], "held-out examples": sizes["held short"],
            "learning_rate": CAUSAL_LEARNING_RATE["LoRA"], "targets": "attention",
            "runs": [list(run) for run in ALPHA_RUNS], "alpha rules": {
                rule: [list(alpha_for(rule, r)) for r in sorted({r for r, _ in ALPHA_RUNS})] for rule in ALPHA_RULES}}
