"""Exercises of session 00 (course/00_start_here.ipynb): one warm-up that shows how checks work."""
from __future__ import annotations

from numbers import Integral

from .core import Session, call, expect

check = Session("00_start_here")


def _model_with_a_frozen_layer_and_buffers():
    """Linear(4, 3) frozen (15 parameters), BatchNorm1d(3) (6 parameters, 7 buffer values), Linear(3, 2) (8)."""
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[0].requires_grad_(False)
    return model


@check.exercise(title="Count what training updates", tier="warm-up",
                hint="`model.parameters()` yields every weight tensor; `p.numel()` is its number of values and "
                     "`p.requires_grad` says whether training updates it. `sum(...)` over a generator adds up.")
def q1(count_trainable):
    """count_trainable(model) -> int: the number of parameters with requires_grad."""
    from torch import nn

    n = call(count_trainable, nn.Linear(384, 2), shown="count_trainable(nn.Linear(384, 2))")
    expect(isinstance(n, Integral) and not isinstance(n, bool),
           f"count_trainable(nn.Linear(384, 2)) returned {type(n).__name__} {n!r}; return a Python int "
           f"(`p.numel()` is one)")
    expect(n != 384 * 2, "count_trainable(nn.Linear(384, 2)) returned 768, the weight matrix alone (384 × 2): a "
                         "Linear layer also has one bias per output")
    expect(n == 770, f"count_trainable(nn.Linear(384, 2)) returned {n}; the layer has 384 × 2 weights and 2 biases")

    model = _model_with_a_frozen_layer_and_buffers()
    flags = [p.requires_grad for p in model.parameters()]
    shown = "count_trainable(model) with its first Linear(4, 3) frozen"
    n = call(count_trainable, model, shown=shown)
    expect([p.requires_grad for p in model.parameters()] == flags,
           "count_trainable changed which parameters are trainable: only count them, do not freeze or unfreeze")
    expect(n != 29, f"{shown} returned 29, which counts the frozen layer too: keep only the parameters with "
                    f"`p.requires_grad`")
    expect(n != 36, f"{shown} returned 36, every tensor of `state_dict()`: the frozen layer and BatchNorm's running "
                    f"statistics (buffers, which training does not update) too. Count `model.parameters()` with "
                    f"`p.requires_grad`")
    expect(n == 14, f"{shown} returned {n}; 14 parameters are trainable (BatchNorm1d(3): 6, Linear(3, 2): 8)")
    return "770 for Linear(384, 2); frozen weights and buffers are left out"
