"""Session 06: parameter-efficient fine-tuning with bottleneck adapters and LoRA.

- `lora_counts` and `low_rank_errors`: the low-rank idea in numbers.
- `LoRALinear`: LoRA from scratch, a frozen nn.Linear plus a trainable B @ A scaled by alpha / r.
- `BottleneckAdapter` and `add_adapters`: down-projection, non-linearity, up-projection, residual.
- `peft_lora`: the same idea with the `peft` library, on named target modules; a classifier's new head
  (`head_modules`) is trained and saved with the adapter.
- `checkpoint_bytes`: what a checkpoint costs on disk, whole model vs trained part only.

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
def peft_lora(model, targets, r: int = 8, alpha: float = 16, task_type: str | None = None, keep=()):
    """Wrap `model` with peft LoRA on the named targets (validated first, for a clear error).

    A classification model's head (`head_modules`: e.g. BERT `classifier`, DistilBERT `pre_classifier` and
    `classifier`, Llama `score`) is new and random, so it is always trained fully and saved with the adapter
    (peft's `modules_to_save`): frozen, LoRA would learn against a fixed random head, and a reloaded adapter would
    meet another random head. `keep` names further modules to train fully and save.
    """
    from peft import LoraConfig, get_peft_model

    first = model.get_submodule(matching_modules(model, targets)[0])
    check_rank(r, first.out_features, first.in_features)
    heads = head_modules(model)
    save = heads + [k for k in keep if k not in heads]
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets),
                        task_type=task_type, modules_to_save=save or None)
    return get_peft_model(model, config)


def checkpoint_bytes(model, trainable_only: bool) -> int:
    """Bytes on disk of a safetensors checkpoint: the whole model, or only what was trained."""
    from safetensors.torch import save_file

    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad or not trainable_only}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file(state, str(path))
        return os.path.getsize(path)
