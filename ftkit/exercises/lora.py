"""Exercises of session 06 (course/06_peft_adapters_lora.ipynb): LoRA's parameter count, a LoRA layer from scratch,
and an experiment of the learner's own with the scale alpha / r."""
from __future__ import annotations

import math
from numbers import Integral

from .core import Session, call, expect

check = Session("06_peft_adapters_lora")


# --------------------------------------------------------------------------- q1: the count
@check.exercise(title="LoRA's parameter count", tier="warm-up",
                hint="ΔW = B @ A with B of shape d x r and A of shape r x k: count the entries of both matrices.")
def q1(lora_params):
    """lora_params(d, k, r) -> int: the trainable numbers of a rank-r update of a d x k weight."""
    for d, k, r in ((100, 100, 10), (192, 576, 8), (30, 20, 5), (7, 300, 3)):
        shown = f"lora_params({d}, {k}, {r})"
        n = call(lora_params, d, k, r, shown=shown)
        expect(isinstance(n, Integral) and not isinstance(n, bool),
               f"{shown} returned {type(n).__name__} {n!r}; return a whole number (an int)")
        expect(n != d * k, f"{shown} returned {n} = d·k, the full update's count; LoRA trains B (d x r) and A (r x k)")
        expect(n not in (2 * r * d, 2 * r * k) or d == k,
               f"{shown} returned {n}, as if the weight were square; B is d x r and A is r x k, with d ≠ k here "
               "(e.g. SmolLM2's v_proj is 192 x 576)")
        expect(n != r * d * k, f"{shown} returned r·d·k; B and A hold r·d and r·k numbers, added, not multiplied")
        expect(n == r * (d + k), f"{shown} returned {n}; B has {d}·{r} and A {r}·{k} entries")
    return "r·(d + k): 2,000 instead of 10,000 for 100 x 100 at r = 10; 6,144 for SmolLM2's v_proj at r = 8"


# --------------------------------------------------------------------------- q2: the layer
def _build(cls, d_in, d_out, r, alpha, seed=0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out)
    kept = {n: p.detach().clone() for n, p in base.named_parameters()}
    layer = call(cls, base, r, alpha, shown=f"{cls.__name__}(nn.Linear({d_in}, {d_out}), r={r}, alpha={alpha})")
    expect(isinstance(layer, nn.Module), f"{cls.__name__}(...) is not an nn.Module: subclass nn.Module")
    expect(all(torch.equal(p, kept[n]) for n, p in base.named_parameters()),
           "the constructor changed the base layer's weights: LoRA leaves W and b as they are")
    for name in ("A", "B"):
        expect(isinstance(getattr(layer, name, None), nn.Parameter),
               f"the layer has no parameter `{name}`: store A and B as nn.Parameter attributes `self.A`, `self.B`")
    return base, layer


def _starts_as_the_base_layer(layer, base, x, y) -> None:
    """At the start (B = 0) the layer's output y = layer(x) is exactly base(x); say why it is not."""
    import torch

    with torch.no_grad():
        want = base(x)
        if torch.allclose(y, want, atol=1e-6):
            return
        b_is_zero = not bool(layer.B.detach().abs().sum() > 0)
        expect(b_is_zero, "at the start the layer must return exactly what the base layer returns: start B at zero, "
                          "so B @ A = 0")
        without_bias = x @ base.weight.T
        expect(not torch.allclose(y, without_bias, atol=1e-6),
               "at the start (B = 0) the layer returned x Wᵀ without the bias: the output must be the frozen layer's "
               "output plus the update; call `self.base(x)`, which adds b")
        expect(not torch.allclose(y, torch.zeros_like(y), atol=1e-6),
               "at the start (B = 0) the layer returned zeros, the update alone: the output must be the frozen "
               "layer's output plus the update, `self.base(x) + scaling · x Aᵀ Bᵀ`")
        expect(False, f"B is zero, yet the layer does not return what the base layer returns (max difference "
                      f"{(y - want).abs().max().item():.3g}): the output must be the frozen layer's output plus the "
                      "update, `self.base(x) + scaling · x Aᵀ Bᵀ`")


@check.exercise(title="A LoRA layer from scratch", tier="core",
                hint="In __init__: keep `base`, set `requires_grad_(False)` on it, make A an nn.Parameter of shape "
                     "(r, base.in_features) initialised at random (`nn.init.kaiming_uniform_(A, a=math.sqrt(5))`), "
                     "B an nn.Parameter of zeros of shape (base.out_features, r), and `self.scaling = alpha / r`. "
                     "forward: `self.base(x) + self.scaling * (x @ self.A.T @ self.B.T)`.")
def q2(lora_layer):
    """lora_layer(base: nn.Linear, r, alpha): an nn.Module with parameters A (r x in), B (out x r)."""
    import torch

    import inspect

    from torch import nn

    cls = lora_layer
    expect(not isinstance(cls, nn.Module), f"got a layer, an instance of {type(cls).__name__}: pass the class, not an "
                                           f"instance (`check.q2({type(cls).__name__})`); the check builds its own "
                                           "layers from it")
    expect(inspect.isclass(cls), f"got {type(cls).__name__}; pass the class itself (`check.q2(MyLoRA)`), an "
                                 "nn.Module subclass the check builds its own layers from")
    base, layer = _build(cls, 16, 8, 4, 8.0)
    expect(tuple(layer.A.shape) == (4, 16) and tuple(layer.B.shape) == (8, 4),
           f"on nn.Linear(16, 8) at r = 4: A is {tuple(layer.A.shape)} and B {tuple(layer.B.shape)}; A must be "
           "r x in_features (4 x 16) and B out_features x r (8 x 4), so that B @ A has W's shape (8 x 16)")
    trainable = {n: p.numel() for n, p in layer.named_parameters() if p.requires_grad}
    expect(not any(p.requires_grad for p in base.parameters()),
           "the base layer's weight and bias are still trainable: freeze them (`requires_grad_(False)`); LoRA "
           "trains only A and B")
    expect(sum(trainable.values()) == 4 * (16 + 8),
           f"the layer has {sum(trainable.values())} trainable numbers ({trainable}); at r = 4 on a 8 x 16 weight "
           f"LoRA trains r·(d + k) = {4 * (16 + 8)}: A and B only")
    expect(bool(layer.A.detach().abs().sum() > 0), "A starts at zero: then B's gradient is zero too and nothing ever "
                                                   "learns; start A at random and B at zero")
    x = torch.randn(3, 16)
    y = call(layer, x, shown="layer(x)")
    expect(isinstance(y, torch.Tensor) and tuple(y.shape) == (3, 8),
           f"layer(x) for x of shape (3, 16) gave {tuple(y.shape) if isinstance(y, torch.Tensor) else y!r}; it "
           "must give the base layer's shape (3, 8)")
    _starts_as_the_base_layer(layer, base, x, y)
    y.sum().backward()
    expect(layer.B.grad is not None and bool(layer.B.grad.abs().sum() > 0),
           "after a backward pass B has no gradient: the update must flow through A and B in forward")

    for d_in, d_out, r, alpha in ((16, 8, 4, 8.0), (6, 5, 2, 12.0), (6, 5, 2, 3.0)):
        base, layer = _build(cls, d_in, d_out, r, alpha, seed=1)
        with torch.no_grad():          # a trained-looking layer: both matrices non-zero
            layer.A.normal_()
            layer.B.normal_()
        x = torch.randn(2, 3, d_in)    # a batch of sequences: the layer works on the last dimension
        with torch.no_grad():
            y = call(layer, x, shown=f"layer(x) for x of shape {tuple(x.shape)}")
            update = x @ layer.A.T @ layer.B.T
            want = base(x) + (alpha / r) * update
        where = f"on nn.Linear({d_in}, {d_out}) with r = {r}, alpha = {alpha:g}"
        expect(isinstance(y, torch.Tensor) and y.shape == want.shape,
               f"{where}: x of shape {tuple(x.shape)} gave {tuple(y.shape) if isinstance(y, torch.Tensor) else y!r}, "
               f"not {tuple(want.shape)}")
        if not torch.allclose(y, want, atol=1e-5):
            for wrong, what in ((1.0, "you left out the scale alpha / r"),
                                (alpha, "you scaled by alpha; the scale is alpha / r"),
                                (r / alpha, "you scaled by r / alpha; the scale is alpha / r"),
                                (alpha / math.sqrt(r), "you scaled by alpha / √r (rsLoRA's rule); this layer uses "
                                                       "alpha / r, as LoRA's paper and peft's default do")):
                expect(not torch.allclose(y, base(x) + wrong * update, atol=1e-5), f"{where}: {what}")
            expect(False, f"{where}, A and B set at random: expected base(x) + (alpha / r)·x Aᵀ Bᵀ, max difference "
                          f"{(y - want).abs().max().item():.3g}")
    return "frozen W and b; A random, B zero (starts as the base layer); base(x) + (alpha / r)·x Aᵀ Bᵀ; r·(d + k) trained"


# --------------------------------------------------------------------------- q3: an experiment of your own
UPDATE = "update norm"          # the notebook's train_causal records ||(alpha / r) B A|| of its first LoRA layer here


@check.exercise(title="An experiment of your own", tier="stretch",
                hint="Call `train_causal(...)` as the short runs above do (with `steps=SHORT_STEPS` and "
                     "`held=held_short`), changing what your question is about: rank, alpha rule or "
                     "`learning_rate`. Pass its result itself (not `.numbers_only()`): the check reads its model.")
def q3(my_run):
    """my_run: the RunResult of one short LoRA run of train_causal, with its model."""
    from ..lora import lora_scale, update_norm
    from ..train import RunResult

    expect(not isinstance(my_run, tuple), "give the RunResult that train_causal returns, not a tuple")
    expect(isinstance(my_run, RunResult), f"my_run is {type(my_run).__name__}; give the RunResult that "
                                          "train_causal returns")
    expect(my_run.model is not None, "your run kept no model (`numbers_only()` drops it): pass train_causal's result "
                                     "itself, so the check can read what the run learned")
    configs = getattr(my_run.model, "peft_config", None)
    expect(bool(configs), "your run's model has no LoRA adapter: train a LoRA run (full=False)")
    config = next(iter(configs.values()))
    expect(my_run.steps > 0, "your run took no training step: give it steps=SHORT_STEPS (or more)")
    loss = my_run.metrics.get("held-out loss")
    expect(isinstance(loss, float) and math.isfinite(loss) and loss > 0,
           f"your run's held-out loss is {loss!r}; train_causal scores it on `held` (pass held=held_short)")
    scale = lora_scale(config.lora_alpha, config.r, config.use_rslora)
    said = my_run.extra.get("scale")
    expect(isinstance(said, (int, float)) and math.isclose(said, scale, rel_tol=1e-6),
           f"your run says its scale is {said!r}, but its LoRA (r = {config.r}, alpha = {config.lora_alpha:g}"
           f"{', rsLoRA' if config.use_rslora else ''}) has the scale {scale:.4g}: report what the run used")
    norm = update_norm(my_run.model)              # the first LoRA layer, as train_causal measures it
    expect(norm > 0, "the update ||(alpha / r) B A|| is zero: B is still at its start, so the run learned nothing")
    reported = my_run.extra.get(UPDATE)
    expect(isinstance(reported, (int, float)) and math.isclose(reported, norm, rel_tol=1e-4),
           f"your run reports {UPDATE} = {reported!r}, but the update it learned has norm {norm:.4g}: report the "
           "norm the run measured")
    return (f"r = {config.r}, alpha = {config.lora_alpha:.3g}{' (rsLoRA)' if config.use_rslora else ''}, scale "
            f"{scale:.3g}: held-out loss {loss:.3f}, ||ΔW|| {norm:.4f} after {my_run.steps} steps")
