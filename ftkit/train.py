"""A thin layer over `transformers.Trainer`: freezing by module name, parameter counts, and a
`RunResult` for every run (metrics, trainable params, seconds, peak memory, loss history)."""
from __future__ import annotations

import copy
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

BLOCK_LIST_NAMES = ("layer", "layers", "h", "block", "blocks")  # BERT, Llama, GPT-2, T5 ...
EMBEDDING_MARKERS = ("embeddings", "embed_tokens", "wte", "wpe", "shared")


# --------------------------------------------------------------------------- parameters and freezing
def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def find_blocks(model):
    """(name, ModuleList) of the model's stack of transformer blocks, found by module name.

    We look for ModuleLists called layer/layers/h/block(s) and take the longest, so the code
    works for BERT (`bert.encoder.layer`), DistilBERT (`distilbert.transformer.layer`) and
    Llama (`model.layers`) without a single hard-coded index.
    """
    import torch.nn as nn

    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.ModuleList) and name.split(".")[-1] in BLOCK_LIST_NAMES]
    if not found:
        raise ValueError(f"{type(model).__name__} has no ModuleList named one of {BLOCK_LIST_NAMES}")
    return max(found, key=lambda item: len(item[1]))


def is_embedding(param_name: str) -> bool:
    return any(marker in param_name.split(".") for marker in EMBEDDING_MARKERS)


def freeze_bottom(model, n_frozen: int) -> list[str]:
    """Freeze the embeddings and the first `n_frozen` blocks; everything above stays trainable.

    n_frozen = 0 trains all layers (full fine-tuning); n_frozen = depth trains only what sits on
    top of the encoder (pooler + classifier: "head only"). Returns the names of frozen blocks.
    """
    blocks_name, blocks = find_blocks(model)
    depth = len(blocks)
    if not isinstance(n_frozen, int) or not 0 <= n_frozen <= depth:
        raise ValueError(f"n_frozen must be an integer in 0..{depth} ({type(model).__name__} has {depth} "
                         f"blocks in {blocks_name}), got {n_frozen!r}")
    for p in model.parameters():
        p.requires_grad = True
    if n_frozen == 0:
        return []
    frozen = [f"{blocks_name}.{i}" for i in range(n_frozen)]
    for name, p in model.named_parameters():
        if is_embedding(name) or any(name.startswith(prefix + ".") for prefix in frozen):
            p.requires_grad = False
    return frozen


def trainable_groups(model) -> list[dict]:
    """One row per parameter group (embeddings, each block, everything else by top module)."""
    blocks_name, blocks = find_blocks(model)
    groups: dict = {}
    for name, p in model.named_parameters():
        if is_embedding(name):
            key = "embeddings"
        elif name.startswith(blocks_name + "."):
            key = ".".join(name.split(".")[: blocks_name.count(".") + 2])
        else:
            key = name.rsplit(".", 1)[0]
        g = groups.setdefault(key, {"group": key, "params": 0, "trainable": 0})
        g["params"] += p.numel()
        g["trainable"] += p.numel() if p.requires_grad else 0
    for g in groups.values():
        g["state"] = "trainable" if g["trainable"] == g["params"] else ("frozen" if g["trainable"] == 0 else "partly")
    return list(groups.values())


# --------------------------------------------------------------------------- memory
def release_freed_memory() -> None:
    """Give freed heap memory back to the OS, so that the next run's RSS baseline is honest.

    Without this, glibc keeps memory freed by an earlier run, the next run reuses it, and its
    RSS growth (our peak figure) comes out too small.
    """
    import gc

    gc.collect()
    _malloc_trim()


def _malloc_trim() -> None:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to trim
        pass


class PeakMemory:
    """Peak memory above the starting point while the block runs, in MB.

    On CUDA: torch's peak allocated bytes. On CPU: the process RSS sampled every 10 ms after
    freed memory was returned to the OS; approximate, but comparable between runs in one process.
    """

    def __init__(self, device: str = "cpu"):
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    def __enter__(self):
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
        else:
            import psutil

            release_freed_memory()
            proc = psutil.Process()
            self._start = proc.memory_info().rss
            self._max = self._start

            def sample():
                while not self._stop.wait(0.01):
                    self._max = max(self._max, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            import torch

            self.peak_mb = (torch.cuda.max_memory_allocated() - self._start) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            import psutil

            self._max = max(self._max, psutil.Process().memory_info().rss)
            self.peak_mb = (self._max - self._start) / 2**20
        return False


# --------------------------------------------------------------------------- results
@dataclass
class RunResult:
    name: str
    metrics: dict
    trainable_params: int
    total_params: int
    seconds: float
    peak_mem_mb: float
    loss_history: list = field(default_factory=list)  # [(step, loss)]: training loss, mean over each logging window
    eval_history: list = field(default_factory=list)  # one dict per validation during training: step, epoch, loss, ...
    extra: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False, compare=False)  # what the trainer trained (e.g. a PeftModel)
    steps: int = 0  # optimizer steps taken in total (a resumed run counts the steps before the interruption too)
    lr_history: list = field(default_factory=list)  # [(step, learning rate)]: the rate each optimizer step used
    steps_per_epoch: float = 0.0  # optimizer steps per pass over the training data (to draw curves per epoch)
    best_step: int | None = None  # the step whose weights the model holds when fit(keep_best=True) kept the best

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def numbers_only(self) -> "RunResult":
        """This result without its model, for a panel to keep: otherwise every click keeps one more trained model
        alive (90 MB for MiniLM), and a learner who clicks ten times on Binder's 2 GB loses the kernel."""
        self.model = None
        return self

    def to_record(self) -> dict:
        """Everything but the model, as plain values (a copy): what a recorded sweep keeps of a run, written to JSON
        (`from_record` reads it back)."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "model"}

    @classmethod
    def from_record(cls, record: dict) -> "RunResult":
        """A run read back from `to_record`'s dict (e.g. a recorded sweep's row), without a model. Histories come
        back as lists of [step, value] pairs."""
        names = {f.name for f in fields(cls)} - {"model"}
        missing = {"name", "metrics", "trainable_params", "total_params", "seconds", "peak_mem_mb"} - set(record)
        if missing:
            raise ValueError(f"not a recorded run: it lacks {sorted(missing)} (write it with RunResult.to_record)")
        return cls(**{k: copy.deepcopy(v) for k, v in record.items() if k in names})   # the record stays as it was

    def row(self) -> dict:
        return {"setup": self.name, **{k: v for k, v in self.metrics.items() if isinstance(v, (int, float))},
                "trainable params": self.trainable_params, "% trainable": round(self.trainable_pct, 3),
                "seconds": round(self.seconds, 1), "peak RAM MB": round(self.peak_mem_mb, 1), **self.extra}


@contextmanager
def measure(model=None, device: str = "cpu"):
    """Time and peak memory of a block: `with measure(model) as m: ...; m["seconds"]`."""
    box: dict = {}
    trainable, total = count_params(model) if model is not None else (0, 0)
    start = time.perf_counter()
    with PeakMemory(device) as mem:
        yield box
    box.update(seconds=time.perf_counter() - start, peak_mem_mb=mem.peak_mb,
               trainable_params=trainable, total_params=total)


# --------------------------------------------------------------------------- precision and GPU memory
def mixed_precision(device: str) -> dict:
    """TrainingArguments' `fp16`/`bf16` flags for `device`. The weights stay float32 (the optimizer's master copy);
    on a GPU the Trainer runs forward and backward in 16 bits (autocast): bf16 where the GPU has bfloat16 units
    (compute capability 8 or more: A100, L4, H100), fp16 with loss scaling elsewhere (a T4). On a CPU neither:
    explicitly, since trl's SFTConfig turns bf16 autocast on whenever fp16 is off, and on a CPU without bf16 units
    that emulation made every SFT step several times slower (measured: backward 44 s vs 7 s)."""
    if device != "cuda":
        return {"fp16": False, "bf16": False}
    import torch

    bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return {"fp16": not bf16, "bf16": bf16}


def check_trainable_float32(model) -> None:
    """A ValueError when a weight that will be trained is not float32. A bfloat16 weight rounds most updates of a
    small learning rate away (about 92% of SmolLM2's entries would not move at 5e-5), and fp16 mixed precision cannot
    unscale bfloat16 gradients. Frozen weights (LoRA's base) may be in any dtype."""
    import torch

    wrong = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                    if p.requires_grad and p.dtype != torch.float32})
    if wrong:
        raise ValueError(f"{type(model).__name__} has trainable weights in {', '.join(wrong)}; load it in float32 "
                         "(ftkit.models does; with transformers: from_pretrained(..., dtype=torch.float32)). Mixed "
                         "precision on a GPU comes from the Trainer, not from the weights")


# Per token, block and hidden unit: the bytes the forward pass keeps for the backward pass, in float32. Counted, not
# guessed: the tensors saved for backward by one training forward pass of the real configurations on PyTorch's meta
# device (shapes only, no memory) came to 115 x hidden bytes per block for SmolLM2-135M and -360M, 92 for DistilBERT
# and 120 for MiniLM at 128 tokens (which keeps its attention probabilities there); tests/test_train.py recounts them.
# Under fp16/bf16 mixed precision most of them are 16-bit, so the rule is an upper bound on a GPU.
ACTIVATION_BYTES = 128
# Per token and vocabulary entry of a language-model head: the float32 logits, the log-softmax kept for the backward
# pass, and its gradient (the README's "200 MB per 1,000 tokens", three times).
LOGIT_BYTES = 12
OPTIMIZER_BYTES = 12  # per trainable parameter besides the float32 weight itself: its gradient and two AdamW moments
MB = 2**20


def memory_estimate(model, batch: int = 1, length: int = 128, *, trainable: int | None = None,
                    mixed_precision: bool = False, gradient_checkpointing: bool = False,
                    vocab_logits: bool | None = None) -> dict:
    """Memory of training `model` with AdamW on `batch` sequences of `length` tokens, in MB, by part:

    * weights: each parameter in its own dtype (4 bytes in float32);
    * gradients and optimizer: 12 bytes per trainable parameter (a float32 gradient and two AdamW moments), so a
      trainable float32 parameter costs 16 bytes in all (Rajbhandari et al. 2020, ZeRO, section 3);
    * autocast copies: under mixed precision, a 16-bit copy of the weights for the forward pass (2 bytes each);
    * activations: tokens x blocks x hidden x `ACTIVATION_BYTES`; with gradient checkpointing only each block's
      input (4 bytes per unit) plus one block recomputed at a time;
    * logits: for a language-model head (causal or masked; `vocab_logits`, default: the model has one), tokens x
      vocabulary x `LOGIT_BYTES`. For a 49,152-word vocabulary that is 590 KB per token: often the largest part.

    `trainable` overrides the count read from `requires_grad` (e.g. LoRA's, before peft wraps the model).
    Attention scores are not counted: transformers 5 uses PyTorch's fused attention (SDPA), which does not keep them.
    `model` may live on the meta device (`with torch.device("meta"): AutoModel.from_config(config)`): only shapes
    are read. Check the rule against a measurement: session 07's cost table puts both side by side.
    """
    if not isinstance(batch, int) or batch < 1 or not isinstance(length, int) or length < 1:
        raise ValueError(f"batch and length must be positive whole numbers, got batch={batch!r}, length={length!r}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    seen, weights, counted = set(), 0, 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            weights += p.numel() * p.element_size()
            counted += p.numel() if p.requires_grad else 0
    trainable = counted if trainable is None else trainable
    tokens, layers, hidden = batch * length, config.num_hidden_layers, config.hidden_size
    if gradient_checkpointing:
        activations = tokens * hidden * (layers * 4 + ACTIVATION_BYTES)
    else:
        activations = tokens * layers * hidden * ACTIVATION_BYTES
    if vocab_logits is None:
        vocab_logits = base.get_output_embeddings() is not None
    parts = {"weights MB": weights, "gradients and optimizer MB": trainable * OPTIMIZER_BYTES,
             "autocast copies MB": sum(p.numel() for p in base.parameters()) * 2 if mixed_precision else 0,
             "activations MB": activations,
             "logits MB": tokens * config.vocab_size * LOGIT_BYTES if vocab_logits else 0}
    parts = {k: v / MB for k, v in parts.items()}
    return {**parts, "total MB": sum(parts.values())}


def memory_levers(model, batch: int, length: int, budget_mb: float, mixed_precision: bool = False,
                  trainable: int | None = None) -> tuple[dict, dict]:
    """How to train `batch` sequences of `length` tokens within `budget_mb`: (TrainingArguments overrides, estimate).

    The largest micro-batch (a divisor of `batch`; gradient accumulation makes up the rest, so the updates stay the
    same) whose `memory_estimate` fits, first without gradient checkpointing, then with it (a third more compute).
    A ValueError when not even one sequence with checkpointing fits."""
    divisors = [d for d in range(batch, 0, -1) if batch % d == 0]
    for checkpointing in (False, True):
        for micro in divisors:
            est = memory_estimate(model, micro, length, trainable=trainable, mixed_precision=mixed_precision,
                                  gradient_checkpointing=checkpointing)
            if est["total MB"] <= budget_mb:
                levers = {}
                if micro < batch:
                    levers.update(per_device_train_batch_size=micro, gradient_accumulation_steps=batch // micro)
                if checkpointing:
                    levers.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
                return levers, est
    raise ValueError(f"training {type(model).__name__} on {length}-token sequences needs about "
                     f"{est['total MB']:,.0f} MB even one sequence at a time with gradient checkpointing, and "
                     f"{budget_mb:,.0f} MB are free; lower max_length, train LoRA instead, or free GPU memory")


def gpu_budget_mb(model) -> float:
    """GPU memory this training may use: 90% of what is free now, counting what torch's allocator holds cached from
    earlier runs (free for this process to reuse), plus the model's weights if they already sit on the GPU (the
    estimate counts them). The other 10% is left for the allocator's fragmentation."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    resident = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "cuda")
    return (0.9 * (free + cached) + resident) / MB


def sequence_length(dataset, default: int) -> int:
    """The longest tokenized example of `dataset` (its `input_ids`), or `default` (e.g. SFT's max_length) for text."""
    if dataset is not None and "input_ids" in getattr(dataset, "column_names", ()):
        return max(len(ids) for ids in dataset["input_ids"])
    return default


def gpu_memory_levers(model, train_ds, cfg, overrides: dict, trainable: int | None = None) -> dict:
    """`overrides` plus the micro-batches and checkpointing (`memory_levers`) that fit this GPU's free memory.

    The batch is the one the run asked for; a split is printed, since it changes the speed, not the updates."""
    profile = getattr(cfg, "profile", cfg)
    if overrides.get("gradient_checkpointing"):
        return overrides
    batch = overrides.get("per_device_train_batch_size", profile.batch_size)
    length = sequence_length(train_ds, overrides.get("max_length", profile.max_length))
    levers, est = memory_levers(model, batch, length, gpu_budget_mb(model), mixed_precision=True,
                                trainable=trainable)
    if levers:
        accumulate = overrides.get("gradient_accumulation_steps", 1) * levers.get("gradient_accumulation_steps", 1)
        print(f"[ftkit] GPU memory: batch {batch} x {length} tokens would need more than is free; training "
              f"{levers.get('per_device_train_batch_size', batch)} at a time"
              + (" with gradient checkpointing" if levers.get("gradient_checkpointing") else "")
              + f" (estimate {est['total MB']:,.0f} MB; the same updates)")
        levers["gradient_accumulation_steps"] = accumulate
    return {**overrides, **levers}


# --------------------------------------------------------------------------- Trainer
SMALL_MEMORY_MICRO_BATCH = 8  # examples per forward/backward pass on a small machine (see small_memory_batches)


def batch_per_pass(cfg, micro_batch: int = SMALL_MEMORY_MICRO_BATCH) -> int:
    """Examples one forward/backward pass takes at once: the profile's batch, or at most `micro_batch` on a small
    machine, exactly as `small_memory_batches` splits it there. For code that runs its own training steps (session
    03's timing) and should fit where the Trainer fits."""
    batch = getattr(cfg, "profile", cfg).batch_size
    if not getattr(cfg, "small_memory", False):
        return batch
    return small_memory_batches({"per_device_train_batch_size": batch, "per_device_eval_batch_size": batch},
                                micro_batch)["per_device_train_batch_size"]


def training_args(cfg, output_dir: str | None = None, args_class=None, micro_batch: int = SMALL_MEMORY_MICRO_BATCH,
                  eval_micro_batch: int | None = None, **overrides):
    """TrainingArguments (or a subclass such as trl's SFTConfig) from the profile: batch size,
    epochs/max steps, learning rate, seed. On a small-memory machine (`cfg.small_memory`) the batch is split
    into micro-batches of at most `micro_batch`, and evaluation takes at most `eval_micro_batch` (default:
    `micro_batch`) rows at a time (see `small_memory_batches`)."""
    from transformers import TrainingArguments

    profile = getattr(cfg, "profile", cfg)
    device = getattr(cfg, "device", "cpu")
    args = dict(
        output_dir=output_dir or tempfile.mkdtemp(prefix="ftkit-run-"),
        per_device_train_batch_size=profile.batch_size,
        per_device_eval_batch_size=profile.batch_size * 2,
        num_train_epochs=profile.epochs,
        max_steps=profile.max_steps,
        learning_rate=profile.learning_rate,
        weight_decay=0.01,
        warmup_steps=0,
        logging_steps=max(1, min(10, profile.max_steps if profile.max_steps > 0 else 10)),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=False,
        seed=getattr(cfg, "seed", 42),
        use_cpu=device == "cpu",
        **mixed_precision(device),
        dataloader_num_workers=0,
    )
    args.update(overrides)
    if getattr(cfg, "small_memory", False):
        args = small_memory_batches(args, micro_batch, eval_micro_batch)
    return (args_class or TrainingArguments)(**args)


def small_memory_batches(args: dict, micro_batch: int = SMALL_MEMORY_MICRO_BATCH,
                         eval_micro_batch: int | None = None) -> dict:
    """The same optimizer steps in smaller pieces: a batch of 32 becomes 4 micro-batches of 8 whose gradients
    are summed before the update (gradient accumulation), and evaluation runs `eval_micro_batch` (default:
    `micro_batch`) at a time.

    Why: activations, and for a language model the vocabulary-sized logits, grow with the batch; the weights,
    gradients and optimizer state do not. Learning rate, examples per update and number of updates stay the same.
    Without dropout the updates are the same up to float rounding (tested); with dropout the masks are drawn per
    micro-batch, so a run differs from the whole-batch run as two seeds do. Measured on 2 CPU cores: about as fast
    (session 04's training 246 s instead of 318-338 s, since micro-batches pad less; session 06's classifiers 4-5%
    slower), with less peak memory (session 06's full classifier: 607 MB above start instead of 1,053 MB)."""
    if micro_batch <= 0:
        raise ValueError(f"micro_batch must be a positive number of examples, got {micro_batch!r}")
    args = dict(args)
    batch, accumulate = args["per_device_train_batch_size"], args.get("gradient_accumulation_steps", 1)
    if batch > micro_batch:
        pieces = next(n for n in range(-(-batch // micro_batch), batch + 1) if batch % n == 0)  # equal pieces
        args.update(per_device_train_batch_size=batch // pieces, gradient_accumulation_steps=accumulate * pieces)
    args["per_device_eval_batch_size"] = min(args["per_device_eval_batch_size"], eval_micro_batch or micro_batch)
    return args


def release_memory_callback(every_micro_batch: bool = False):
    """A TrainerCallback that gives freed heap memory back to the OS after every optimizer step, and with
    `every_micro_batch` after every micro-batch of a step too (`fit` asks for it on a small-memory machine).

    Why: glibc raises its mmap threshold once torch frees a large buffer, and from then on freed
    activations stay in the heap. RSS between steps then grows to several times the real working set
    (measured for MiniLM at batch 32 x 128: 2.3 GB without the trim, 0.3 GB with it). Inside a step of many
    micro-batches (session 05's causal LM trains 8 of one example each at 2 GB) the freed activations of one
    micro-batch pile up the same way unless they are handed back before the next.
    """
    from transformers import TrainerCallback

    class ReleaseFreedMemory(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            _malloc_trim()

        def on_substep_end(self, args, state, control, **kwargs):
            if every_micro_batch:
                _malloc_trim()

    return ReleaseFreedMemory()


def report_progress_to(trainer, progress) -> None:
    """Show `trainer`'s progress only through `progress` (fraction of optimizer steps done, 0..1): its own displays
    go (the console's tqdm bar; in a notebook an HTML bar and a "Step / Training Loss" table, which inside a
    panel's output area also stopped at its last throttled update, e.g. "2/8")."""
    from transformers import TrainerCallback
    from transformers import trainer as hf_trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class ReportProgress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            progress(state.global_step / max(state.max_steps, 1))

    for display in {ProgressCallback, PrinterCallback, hf_trainer.DEFAULT_PROGRESS_CALLBACK}:
        trainer.remove_callback(display)
    trainer.add_callback(ReportProgress())


# A causal LM on a small machine: one example per micro-batch, because its logits over a 49,152-token vocabulary
# take 200 MB per 1,000 tokens and the loss's backward pass holds several copies; and gradient checkpointing, which
# keeps one activation per block and recomputes the rest in the backward pass (about a third more compute).
SMALL_MEMORY_CAUSAL = {"micro_batch": 1, "gradient_checkpointing": True,
                       "gradient_checkpointing_kwargs": {"use_reentrant": False}}  # frozen inputs (LoRA) need False


def is_causal_lm(model) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def average_loss_per_batch(model) -> None:
    """Tell the Trainer that this model's loss is a plain per-batch mean, unless it is a causal LM.

    The Trainer passes `num_items_in_batch` to any model whose forward takes **kwargs and, on N processes,
    multiplies the loss by N, expecting the model to have divided by the token count of all processes. Causal
    LMs do; BERT's classification, token-classification and masked-LM heads take the mean of their own batch and
    ignore it, so under DDP their reported losses (train and eval) came out N times too large and their
    gradients too. Measured: eval loss 1.39 on 2 processes vs 0.69 on one, for the same weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not is_causal_lm(model) and not hasattr(type(base), "accepts_loss_kwargs"):
        base.accepts_loss_kwargs = False


def learning_rate_history(into: list):
    """A TrainerCallback that appends (step, learning rate) for every optimizer step to `into`: the rate that step
    used, read from the optimizer (the Trainer logs it only every `logging_steps`, too coarse to show a warm-up)."""
    from transformers import TrainerCallback

    class LearningRateHistory(TrainerCallback):
        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            into.append((state.global_step + 1, float(optimizer.param_groups[0]["lr"])))

    return LearningRateHistory()


def validation_args(eval_every: int | str = "epoch", keep_best: bool = False) -> dict:
    """TrainingArguments that evaluate the validation set during training: at the end of every epoch
    (`eval_every="epoch"`) or every `eval_every` optimizer steps (and after the last step). With `keep_best`, the
    Trainer's own best-checkpoint machinery: it saves the weights whenever the validation loss reaches a new low
    (`save_strategy="best"`, weights only, `save_total_limit=1`, so one checkpoint on disk at a time) and loads that
    checkpoint back at the end (`load_best_model_at_end`, `metric_for_best_model="loss"`). Not with DeepSpeed or
    FSDP, which cannot load weights-only checkpoints (the Trainer says so)."""
    if eval_every == "epoch":
        args = {"eval_strategy": "epoch"}
    elif isinstance(eval_every, int) and not isinstance(eval_every, bool) and eval_every >= 1:
        args = {"eval_strategy": "steps", "eval_steps": eval_every}
    else:
        raise ValueError(f'eval_every must be "epoch" or a positive whole number of optimizer steps, got {eval_every!r}')
    if keep_best:
        args.update(save_strategy="best", save_only_model=True, save_total_limit=1, load_best_model_at_end=True,
                    metric_for_best_model="loss", greater_is_better=False)
    return args


def check_validation(train_ds, eval_ds, validation_ds, keep_best: bool) -> None:
    """A ValueError for a validation setup that would choose with the test set or choose from nothing."""
    if keep_best and validation_ds is None:
        raise ValueError("keep_best=True keeps the checkpoint with the lowest validation loss: pass validation_ds "
                         "(a split held out from training and from the test set, e.g. ds['validation'])")
    if validation_ds is not None and (validation_ds is eval_ds or validation_ds is train_ds):
        which = "the test set (eval_ds)" if validation_ds is eval_ds else "the training set"
        raise ValueError(f"validation_ds is {which}: a checkpoint or setting chosen on it would be scored on the data "
                         "that chose it; pass a separate split (e.g. ds['validation'])")
    if validation_ds is not None and len(validation_ds) == 0:
        raise ValueError("validation_ds has no rows; a validation loss over nothing is not a number")


def fit(model, train_ds, eval_ds, cfg, *, name: str, tokenizer=None, compute_metrics=None,
        data_collator=None, trainer_class=None, args_class=None, trainer_kwargs=None, callbacks=None,
        resume_from_checkpoint: str | None = None, progress=None, validation_ds=None,
        eval_every: int | str = "epoch", keep_best: bool = False, **arg_overrides) -> RunResult:
    """Train `model` on `train_ds`, evaluate on `eval_ds` (if given), and return a RunResult.

    Padding is dynamic (per batch) when a tokenizer is given and no collator is. `trainer_class`
    is a Trainer subclass for a custom loss (session 03 scores masked positions only) or trl's
    SFTTrainer (session 05, with `args_class=SFTConfig`; it brings its own collator). `callbacks` are
    extra TrainerCallbacks (session 05 measures forgetting after every epoch). `resume_from_checkpoint`
    continues an interrupted run (`python -m ftkit train --resume`). `progress`, a callable taking the fraction of
    optimizer steps done (0..1), replaces the Trainer's own bar and loss table; inside a `widgets.Panel` run it
    defaults to the panel's bar, so a panel shows one bar.

    Validation during training: with `validation_ds`, the Trainer evaluates it every epoch or every `eval_every`
    steps (`validation_args`) and `RunResult.eval_history` holds one dict per evaluation (step, epoch, loss and the
    `compute_metrics` scores); `keep_best=True` ends with the weights of the lowest validation loss (`best_step`),
    saved in a temporary folder that is removed afterwards. `eval_ds` (the test set) is scored once, at the end, on
    the weights the run ends with; it never chooses anything. Every run keeps its learning rate per optimizer step
    (`lr_history`); `results.training_curves(result)` draws both.
    """
    from transformers import DataCollatorWithPadding, Trainer

    from .widgets import panel_progress

    check_validation(train_ds, eval_ds, validation_ds, keep_best)
    if data_collator is None and tokenizer is not None and trainer_class is None:
        data_collator = DataCollatorWithPadding(tokenizer)
    if validation_ds is not None:
        arg_overrides = {**validation_args(eval_every, keep_best), **arg_overrides}
    checkpoints = None
    if keep_best and "output_dir" not in arg_overrides:   # the best checkpoint lives only as long as this run
        checkpoints = tempfile.TemporaryDirectory(prefix="ftkit-best-")
        arg_overrides["output_dir"] = checkpoints.name
    average_loss_per_batch(model)
    if getattr(cfg, "small_memory", False) and is_causal_lm(model):
        arg_overrides = {**SMALL_MEMORY_CAUSAL, **arg_overrides}
    if getattr(cfg, "device", "cpu") == "cuda":     # LoRA by trl (a peft_config) trains next to nothing of the model
        arg_overrides = gpu_memory_levers(model, train_ds, cfg, arg_overrides,
                                          trainable=0 if (trainer_kwargs or {}).get("peft_config") else None)
    rates: list = []
    trainer = (trainer_class or Trainer)(model=model, args=training_args(cfg, args_class=args_class, **arg_overrides),
                                         train_dataset=train_ds,
                                         eval_dataset=validation_ds if validation_ds is not None else eval_ds,
                                         data_collator=data_collator,
                                         compute_metrics=compute_metrics, processing_class=tokenizer,
                                         callbacks=[release_memory_callback(getattr(cfg, "small_memory", False)),
                                                    learning_rate_history(rates),
                                                    *(callbacks or [])],
                                         **(trainer_kwargs or {}))
    progress = progress or panel_progress()
    if progress is not None:
        report_progress_to(trainer, progress)
    model = trainer.model
    check_trainable_float32(model)
    try:
        with measure(model, getattr(cfg, "device", "cpu")) as m, quiet_checkpoints(keep_best):
            trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    finally:
        if checkpoints is not None:
            checkpoints.cleanup()
    history = list(trainer.state.log_history)     # before the test evaluation below adds its own entry
    metrics = trainer.evaluate(eval_ds) if eval_ds is not None else {}
    if progress is not None:
        progress(1.0)       # evaluation done too
    state = trainer.state
    return RunResult(name, without_eval_prefix(metrics), m["trainable_params"], m["total_params"], m["seconds"],
                     m["peak_mem_mb"], [(h["step"], h["loss"]) for h in history if "loss" in h],
                     [{"step": h["step"], "epoch": h.get("epoch"), **without_eval_prefix(h)}
                      for h in history if "eval_loss" in h],
                     model=model, steps=state.global_step, lr_history=rates,
                     steps_per_epoch=state.global_step / state.epoch if state.epoch else 0.0,
                     best_step=state.best_global_step if keep_best else None)


@contextmanager
def quiet_checkpoints(quiet: bool = True):
    """Without transformers' "Writing model shards" / "Loading weights" bars while `quiet`: keeping the best
    checkpoint saves the weights at every new validation low, and each save would leave a bar behind in the notebook.
    The Trainer's own bar (tqdm.auto) is not affected."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    if quiet and was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_on:
            hf_logging.enable_progress_bar()


def without_eval_prefix(metrics: dict) -> dict:
    """The Trainer's evaluation metrics as `loss`, `accuracy`, ..., without timings and step counters."""
    return {k.removeprefix("eval_"): v for k, v in metrics.items()
            if not k.endswith(("runtime", "per_second")) and k not in ("epoch", "step")}
