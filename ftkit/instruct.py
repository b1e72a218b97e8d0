"""Session 05: instruction tuning end to end.

- Data: `check_instruction_data`, `quality_flags` / `quality_report` / `clean`, templates (`prompt`, `messages`),
  `token_lengths` and `padding_waste`.
- The loss: `label_example` (prompt tokens get -100), `hand_loss`, `teacher_forced`, `prompt_share`, `sft` (trl's
  SFTTrainer, completion-only loss, optional validation rows and best checkpoint).
- Generation and held-out loss: `generate`, `held_out_loss`, `response_losses` (session 06 and 07 import these).
- Evaluation: `rouge_scores`, `embedding_similarity`, the judge (`judge_scores`, `judge_pairs`, `parse_score`,
  `parse_choice`), `corrupt`, error taggers (`tag_errors`), `by_length`, `blind_rating` (human evaluation).
- Error analysis to a data fix: `data_fix`, `plan_data_fix`.
- Forgetting: `sentiment_instructions`, `sentiment_accuracy`, `general_accuracy`, `forgetting_check` (per-epoch
  trajectory; can stop a run at a target task accuracy), `narrow_run`.
- The session's runs: `sizes` (per profile), `session_data`, `dolly_lora`, `recorded_runs` (the recorded sweep).
"""
from __future__ import annotations

import hashlib
import random
import re
import time
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache

import torch

from . import data, models
from .env import is_small

COLUMNS = ("instruction", "response")
TEMPLATE = "### Instruction:\n{instruction}\n{context_block}### Response:\n"  # Alpaca-style
TEMPLATES = ("alpaca", "chat")
WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return WORD.findall(str(text).lower())


# --------------------------------------------------------------------------- data checks
def as_dataset(rows, what: str = "rows"):
    """Instruction rows as one `datasets.Dataset`: a Dataset as it is, a list of dicts through `Dataset.from_list`.
    A DatasetDict (pass one split), one row given alone, an empty list or anything else is a ValueError."""
    from datasets import Dataset

    if isinstance(rows, Dataset):
        return rows
    if data.is_splits(rows):
        raise ValueError(f"{what} is a DatasetDict of splits {list(rows)}, but one set of rows is expected: pass one "
                         f"split, e.g. ds[{next(iter(rows))!r}]")
    if isinstance(rows, dict):
        raise ValueError(f"{what} is one row (a dict with keys {list(rows)[:5]}); pass a list of rows: [row]")
    if isinstance(rows, (list, tuple)):
        if not rows:
            raise ValueError(f"{what} is an empty list: give at least one instruction/response row")
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise ValueError(f"{what}[{bad}] is a {type(rows[bad]).__name__}; every row must be a dict with "
                             f"{list(COLUMNS)}")
        return Dataset.from_list(list(rows))
    raise ValueError(f"{what} is a {type(rows).__name__}; expected a datasets.Dataset or a list of dicts with "
                     f"{list(COLUMNS)}")


def check_instruction_data(ds) -> None:
    """A clear ValueError for data that cannot be instruction-tuned on (names the column or row). `ds` is a
    DatasetDict (every split is checked), a Dataset or a list of dicts (`as_dataset`)."""
    splits = ds.items() if data.is_splits(ds) else [("data", as_dataset(ds, "data"))]
    for split, part in splits:
        missing = [c for c in COLUMNS if c not in part.column_names]
        if missing:
            raise ValueError(f"{split}: instruction data needs columns {list(COLUMNS)}; missing {missing} "
                             f"(columns are {part.column_names}; rename with ds.rename_column(old, new))")
        for i, (ins, resp) in enumerate(zip(part["instruction"], part["response"])):
            if not str(ins or "").strip():
                raise ValueError(f"{split} row {i}: the instruction is empty")
            if not str(resp or "").strip():
                raise ValueError(f"{split} row {i}: the response is empty (instruction: {str(ins)[:60]!r}); "
                                 "drop the row or write a response")


def copies_instruction(answer: str, instruction: str) -> bool:
    """The answer opens by repeating the instruction word for word: the same first two words and 80% of its words
    in the same positions. "A bubble vest is ..." or "Paris is the capital of France" reuse the question's words,
    which good answers do, but do not copy it."""
    a, ins = words(answer), words(instruction)
    return len(ins) >= 3 and a[:2] == ins[:2] and sum(x == y for x, y in zip(a, ins)) >= 0.8 * len(ins)


def quality_flags(rows) -> list[dict]:
    """Per row: near-empty response, exact duplicate, length outlier, response that restates the instruction.

    Near-empty means fewer than 2 letters or digits: one-word answers ("Vermeer", "2013") are often right."""
    import numpy as np

    if len(rows) == 0:
        raise ValueError("no rows to check: the quality checks need at least one instruction/response row")

    lengths = np.array([len(words(r["response"])) for r in rows])
    q1, q3 = np.percentile(lengths, [25, 75])
    too_long = q3 + 3 * (q3 - q1)  # Tukey's far-out fence
    seen, flags = set(), []
    for r, n in zip(rows, lengths):
        key = (r["instruction"].strip().lower(), (r.get("context") or "").strip().lower(), r["response"].strip().lower())
        flags.append({"near-empty": len(re.sub(r"[^A-Za-z0-9]", "", r["response"])) < 2, "duplicate": key in seen,
                      "length outlier": bool(n > too_long),
                      "restates instruction": copies_instruction(r["response"], r["instruction"])})
        seen.add(key)
    return flags


def quality_report(ds):
    """A DataFrame: one row per check with its count and one example, plus the category mix. `ds`: a Dataset or a list
    of dicts (one split, not a DatasetDict)."""
    import pandas as pd

    rows = list(as_dataset(ds, "ds"))
    flags = quality_flags(rows)
    report = []
    for check in flags[0]:
        hits = [r for r, f in zip(rows, flags) if f[check]]
        example = f"{hits[0]['instruction'][:50]!r} -> {hits[0]['response'][:50]!r}" if hits else ""
        report.append({"check": check, "rows": len(hits), "share %": round(100 * len(hits) / len(rows), 1),
                       "example": example})
    mix = pd.Series(Counter(r.get("category", "?") for r in rows)).sort_values(ascending=False)
    return pd.DataFrame(report), mix


def clean(ds):
    """Drop the rows that any quality check flags. `ds`: a Dataset, or a list of dicts (returned as a Dataset)."""
    ds = as_dataset(ds, "ds")
    flags = quality_flags(list(ds))
    return ds.select([i for i, f in enumerate(flags) if not any(f.values())])


# --------------------------------------------------------------------------- templates
def check_template(template: str) -> None:
    if "{instruction}" not in template:
        raise ValueError(f"the template has no {{instruction}} slot, so the instruction would be lost: {template!r}")


def prompt(row, template: str = TEMPLATE) -> str:
    """The Alpaca-style text prompt (the response follows it)."""
    check_template(template)
    context = f"### Context:\n{row['context']}\n" if row.get("context") else ""
    return template.format(instruction=row["instruction"], context_block=context)


def messages(row) -> list[dict]:
    """The user turn for a chat template; the context, if any, follows the instruction."""
    context = f"\n\n{row['context']}" if row.get("context") else ""
    return [{"role": "user", "content": row["instruction"] + context}]


def render(row, tokenizer, template: str = "alpaca") -> str:
    """The exact prompt text the model sees before its answer, for template "alpaca" or "chat"."""
    if template == "alpaca":
        return prompt(row)
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; use template='alpaca'")
        return tokenizer.apply_chat_template(messages(row), tokenize=False, add_generation_prompt=True)
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")


def ending(tokenizer, template: str) -> str:
    """What closes a response: the chat template's end-of-turn, or EOS after an Alpaca response."""
    if template == "chat":
        rendered = tokenizer.apply_chat_template(messages({"instruction": "x"}) + [{"role": "assistant", "content": "y"}],
                                                 tokenize=False)
        return rendered.split("y")[-1]
    return tokenizer.eos_token


# --------------------------------------------------------------------------- tokens and labels
def label_example(row, tokenizer, template: str = "alpaca", max_length: int | None = None) -> dict:
    """Prompt + response tokens; labels are -100 on the prompt, so only the response is learned."""
    p_ids = tokenizer(render(row, tokenizer, template), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(row["response"] + ending(tokenizer, template), add_special_tokens=False)["input_ids"]
    ids, labels = p_ids + r_ids, [-100] * len(p_ids) + r_ids
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def tokenize_instructions(ds, tokenizer, max_length: int, template: str = "alpaca"):
    """`label_example` over a Dataset or DatasetDict; the text columns are dropped.

    A row whose prompt fills `max_length` keeps no response token: it has nothing to learn or score. A split where
    that is every row is a ValueError; otherwise the number of such rows is printed once per split. A list of dicts is
    read as a Dataset (`as_dataset`)."""
    if not data.is_splits(ds):
        ds = as_dataset(ds, "ds")
    check_instruction_data(ds)
    cols = next(iter(ds.values())).column_names if hasattr(ds, "values") else ds.column_names
    out = ds.map(lambda row: label_example(row, tokenizer, template, max_length), remove_columns=cols)
    parts = {f"split {k!r}": v for k, v in out.items()} if hasattr(out, "items") else {"the tokenized rows": out}
    for what, part in parts.items():
        report_lost_responses(sum(all(l == -100 for l in labels) for labels in part["labels"]), len(part),
                              max_length, what)
    return out


def report_lost_responses(lost: int, rows: int, max_length: int, what: str, hint: str = "") -> None:
    """Say how many rows lost every response token to `max_length`: a ValueError when all did (nothing is left to
    learn or score), one printed line when some did. `hint` says what max_length would keep them."""
    if rows == 0:
        raise ValueError(f"{what} has no rows")
    if lost == 0:
        return
    hint = hint or "raise max_length, or drop the rows with the longest prompts"
    if lost == rows:
        raise ValueError(f"{what}: max_length={max_length} cuts every response off: all {rows} rows lose every "
                         f"response token (their prompts alone fill max_length), so nothing is left to learn or "
                         f"score; {hint}")
    note = (f"[ftkit] {what}: {lost} of {rows} rows lose every response token at max_length={max_length} and add "
            f"nothing to the loss; {hint}")
    if note not in _NOTES_SHOWN:        # once: a recipe checks its data before training, and training checks again
        _NOTES_SHOWN.add(note)
        print(note)


_NOTES_SHOWN: set = set()


def label_table(example: dict, tokenizer):
    """One row per token: the token, its id and its label (-100 = not learned)."""
    import pandas as pd

    return pd.DataFrame({"token": tokenizer.convert_ids_to_tokens(example["input_ids"]),
                         "input id": example["input_ids"], "label": example["labels"]})


def hand_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy by hand: position t predicts token t+1; -100 labels are skipped."""
    logits, labels = logits[:, :-1, :], labels[:, 1:]
    keep = labels != -100
    if not keep.any():
        raise ValueError("every label is -100: no response token to compute a loss on (raise max_length?)")
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked[keep]).mean()


def token_lengths(ds, tokenizer, template: str = "alpaca") -> list[int]:
    return [len(label_example(row, tokenizer, template)["input_ids"]) for row in ds]


def padding_waste(lengths, batch_size: int, max_length: int, seed: int = 0) -> dict:
    """Share of pad tokens when every batch is padded to max_length vs to its own longest row."""
    if len(lengths) == 0 or batch_size < 1 or max_length < 1:
        raise ValueError(f"padding_waste needs rows, a batch size >= 1 and max_length >= 1; got {len(lengths)} rows, "
                         f"batch_size={batch_size}, max_length={max_length}")
    lengths = [min(n, max_length) for n in lengths]
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches = [[lengths[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    real = sum(lengths)
    fixed = sum(len(b) * max_length for b in batches)
    dynamic = sum(len(b) * max(b) for b in batches)
    return {"real tokens": real, "fixed padding %": 100 * (1 - real / fixed),
            "dynamic padding %": 100 * (1 - real / dynamic), "compute saved %": 100 * (1 - dynamic / fixed)}


def causal_collator(tokenizer):
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def graded_token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sums, graded-token counts), each (batch,): per row, the next-token cross-entropy summed over the
    positions whose next label is not -100, and how many there are. `batch` holds input_ids, attention_mask and labels
    on the model's device. Logits are computed only at those positions (transformers' `logits_to_keep` as a boolean
    mask), so a batch's logits are (graded tokens, vocabulary), not (batch, sequence, vocabulary): the prompt's
    positions, about half of session 05's tokens, cost no projection onto the 49,152-token vocabulary."""
    labels = batch["labels"]
    targets = labels[:, 1:]
    graded = torch.zeros_like(labels, dtype=torch.bool)
    graded[:, :-1] = targets != -100
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=graded).logits.float()
    token_loss = torch.nn.functional.cross_entropy(logits, targets[targets != -100], reduction="none")
    sums = torch.zeros(len(labels), device=token_loss.device).index_add_(0, graded.nonzero()[:, 0], token_loss)
    return sums, graded.sum(1)


# Rows scored at once on a small machine: on session 05's 60 holdout rows (up to 256 tokens) in the cpu profile, 4 at
# a time took 24 s against 50 s one at a time, and 8 at a time gained nothing more but 270 MB of peak memory.
SMALL_MEMORY_SCORE_BATCH = 4


def response_losses(model, dataset, tokenizer, batch_size: int | None = None) -> list[tuple[float, int]]:
    """Per held-out row (tokenized with `tokenize_instructions`): (the sum of its response tokens' losses, how many
    there are). A row whose response was cut away by max_length gives (0.0, 0).

    Next-token cross-entropy as the model computes it (position t predicts token t + 1, -100 skipped), with logits
    only where a response token is predicted (`graded_token_losses`). Rows go longest first in batches of 8, or of
    `SMALL_MEMORY_SCORE_BATCH` on a small-memory machine, padded on the right (left padding would shift the positions
    the model sees)."""
    from .train import release_freed_memory

    small = is_small()
    batch_size = batch_size or (SMALL_MEMORY_SCORE_BATCH if small else 8)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number of rows, or None, got {batch_size!r}")
    model.eval()
    collate = causal_collator(tokenizer)
    lengths = [len(ids) for ids in dataset["input_ids"]]       # one column read, not a row read per row
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i])
    sums = {}
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = collate([dataset[i] for i in rows])
                if not (batch["labels"][:, 1:] != -100).any():     # every response cut off: nothing to score
                    sums.update({i: (0.0, 0) for i in rows})
                    continue
                losses, counts = graded_token_losses(model, models.on_device(batch, model))
                sums.update({i: (float(l), int(n)) for i, l, n in zip(rows, losses.cpu(), counts.cpu())})
                del losses, counts
                if small:       # hand the batch's freed buffers back (glibc keeps freed memory for reuse)
                    release_freed_memory()
    finally:
        tokenizer.padding_side = side
    return [sums[i] for i in range(len(dataset))]


def held_out_loss(model, dataset, tokenizer, batch_size: int | None = None, losses=None) -> float:
    """Mean token loss on the responses of a held-out split (tokenized with `tokenize_instructions`): every response
    token of every row weighs the same. `losses` are the rows' `response_losses` if you already have them.

    A split with no response token left (every response cut off by max_length) is a ValueError, not a number."""
    losses = response_losses(model, dataset, tokenizer, batch_size) if losses is None else losses
    count = sum(n for _, n in losses)
    if count == 0:
        raise ValueError(f"none of the {len(dataset)} held-out rows has a response token to score (each was cut off "
                         "by max_length, or the split is empty); tokenize with a larger max_length")
    return sum(l for l, _ in losses) / count


def example_loss(losses) -> float:
    """The mean over rows of each row's mean response-token loss (rows with no response token left out): what the
    Trainer reports as a validation loss when it scores one example at a time (`sft(validation_rows=...)`)."""
    means = [l / n for l, n in losses if n]
    if not means:
        raise ValueError("no row has a response token to score; tokenize with a larger max_length")
    return sum(means) / len(means)


# --------------------------------------------------------------------------- training with trl
def sft_dataset(ds, template: str = "alpaca"):
    """trl's prompt-completion format: conversational messages for "chat", plain strings for "alpaca". `ds` is one set
    of rows: a Dataset, or a list of dicts (converted with `Dataset.from_list`); a DatasetDict is a ValueError."""
    ds = as_dataset(ds, "rows")
    check_instruction_data(ds)
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")

    def convert(row):
        if template == "chat":
            return {"prompt": messages(row), "completion": [{"role": "assistant", "content": row["response"]}]}
        return {"prompt": prompt(row), "completion": row["response"]}

    return ds.map(convert, remove_columns=ds.column_names)


def prompt_token_counts(sft_rows, tokenizer, rows=None) -> list[int]:
    """Tokens before the first response token, per row of `sft_dataset(...)` (or the rows numbered in `rows`),
    counted the way trl's SFTTrainer counts them (trl 1.x, `SFTTrainer._prepare_dataset`): it tokenizes the prompt
    alone and the prompt + completion (`tokenizer(text)`, or the chat template for messages; a plain completion gets
    EOS appended), and the completion starts where the two first differ."""
    from trl.data_utils import common_prefix_length

    rows = range(len(sft_rows)) if rows is None else rows
    counts = []
    for i in rows:
        prompt, completion = sft_rows[i]["prompt"], sft_rows[i]["completion"]
        if isinstance(prompt, list):            # conversational ("chat"): messages through the chat template
            p_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"]
            full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
        else:
            eos = tokenizer.eos_token
            p_ids = tokenizer(text=prompt)["input_ids"]
            full = tokenizer(text=prompt + completion + ("" if completion.endswith(eos) else eos))["input_ids"]
        counts.append(common_prefix_length(p_ids, full))
    return counts


def rows_without_response(sft_rows, tokenizer, max_length: int) -> list[int]:
    """Rows of `sft_dataset(...)` that keep no response token when cut to their first `max_length` tokens (trl's
    truncation, `truncation_mode="keep_start"`); trl drops them from training. Exact, and cheap: the prompts are
    tokenized in one batch, and only rows whose prompt alone reaches `max_length` are counted as trl counts them."""
    prompts = list(sft_rows["prompt"])
    if prompts and isinstance(prompts[0], list):
        alone = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True,
                                              return_dict=True)["input_ids"]
    else:
        alone = tokenizer(text=prompts)["input_ids"]
    # trl's prompt length is the common prefix with prompt + completion, at most the prompt alone
    maybe = [i for i, ids in enumerate(alone) if len(ids) >= max_length]
    return [i for i, n in zip(maybe, prompt_token_counts(sft_rows, tokenizer, maybe)) if n >= max_length]


def check_responses_fit(sft_rows, tokenizer, max_length: int | None) -> int:
    """How many training rows lose every response token to `max_length` (see `rows_without_response`); a
    ValueError when that is every row, naming the max_length that would keep a response token in every row
    (and in 90% of them). Returns the count (0: every row has something to learn)."""
    if len(sft_rows) == 0:
        raise ValueError("the training data has no rows")
    if max_length is None:
        return 0
    lost = rows_without_response(sft_rows, tokenizer, max_length)
    if not lost:
        return 0
    counts = sorted(prompt_token_counts(sft_rows, tokenizer))
    keep_all, keep_most = counts[-1] + 1, counts[-(-9 * len(counts) // 10) - 1] + 1   # every row; at least 90%
    hint = f"max_length={keep_all} keeps at least one response token in every row" + \
        (f" ({keep_most} in 90% of them)" if keep_most < keep_all else "")
    report_lost_responses(len(lost), len(sft_rows), max_length, "training data", hint)
    return len(lost)


def example_loss_trainer():
    """trl's SFTTrainer, whose validation loss is `example_loss`: the mean over validation rows of each row's mean
    response-token loss, whatever the batch. The Trainer's own is the token mean of each batch, so it would change
    with the evaluation batch size; this one lets the rows be scored several at a time (twice as fast on 2 cores as
    one at a time). Training is trl's, unchanged."""
    from trl import SFTTrainer

    class ExampleLossSFTTrainer(SFTTrainer):
        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            if not prediction_loss_only or "attention_mask" not in inputs:  # logits asked for, or packed rows
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            inputs = self._prepare_inputs(inputs)
            batch = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels") if k in inputs}
            with torch.no_grad(), self.compute_loss_context_manager():
                losses, counts = graded_token_losses(model, {**batch, "use_cache": False})
            # The batch's mean over rows: the Trainer repeats it once per row of a full batch, and accelerate's
            # gather_for_metrics cuts a short last batch's copies to its rows, so the final mean weighs every row
            # alike (tested with a short last batch). Every row has a graded token: trl drops the rows that have none.
            return (losses / counts.clamp(min=1)).mean().detach(), None, None

    return ExampleLossSFTTrainer


def sft(model, tokenizer, train_rows, cfg, *, name: str, template: str = "alpaca", lora_rank: int | None = None,
        max_length: int = 256, lora_alpha: float | None = None, lora_targets=None, validation_rows=None,
        keep_best: bool = False, completion_only_loss: bool = True, **arg_overrides):
    """Fine-tune with trl's SFTTrainer on prompt-completion pairs, loss on the completion only.

    `lora_rank=None` trains every weight; a rank trains LoRA adapters (alpha 2 x rank unless given) on every Linear
    layer of the transformer blocks (`models.lora_targets(model, "all-linear")`: attention and MLP projections), or
    on `lora_targets`, instead; peft injects them into `model` in place. Returns a RunResult.
    `train_rows` and `validation_rows` are each a Dataset or a list of dicts with "instruction" and "response" (and
    optionally "context"); a list is converted with `Dataset.from_list`, a DatasetDict is refused (pass one split).

    `validation_rows` (instruction rows held out from training and from the test set) are scored after every epoch
    (`train.fit`'s validation: `RunResult.eval_history`, one "loss" per epoch, the mean over validation examples of
    each example's mean response-token loss, whatever the evaluation batch: `example_loss_trainer`). `keep_best=True`
    ends with the epoch of the lowest validation loss. `completion_only_loss=False`
    grades the prompt's tokens too (trl's default for plain text): the variant quiz question 1 asks about.

    trl cuts each row to its first `max_length` tokens and drops the rows left with no response token. Before
    training, `check_responses_fit` counts them exactly: when it is every row, a ValueError names the max_length
    that keeps them; when it is some, one line says how many and `extra["rows without response tokens"]` records it.
    """
    from trl import SFTConfig

    from .train import fit

    peft_config = None
    if lora_rank is not None:
        from peft import LoraConfig

        if not isinstance(lora_rank, int) or isinstance(lora_rank, bool) or lora_rank <= 0:
            raise ValueError(f"lora_rank must be a positive integer or None (full fine-tuning), got {lora_rank!r}")
        if lora_alpha is not None and (isinstance(lora_alpha, bool) or not isinstance(lora_alpha, (int, float))
                                       or lora_alpha <= 0):
            raise ValueError(f"lora_alpha must be a positive number, or None for 2 * lora_rank, got {lora_alpha!r}")
        targets = list(lora_targets or models.lora_targets(model, "all-linear"))
        peft_config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha if lora_alpha is not None else 2 * lora_rank,
                                 lora_dropout=0.0,
                                 task_type="CAUSAL_LM", target_modules=targets)
    rows = sft_dataset(as_dataset(train_rows, "train_rows"), template)
    lost = check_responses_fit(rows, tokenizer, max_length)
    validation = {}
    if validation_rows is not None:
        validation_ds = sft_dataset(as_dataset(validation_rows, "validation_rows"), template)
        if not len(validation_ds) or (max_length is not None and len(
                rows_without_response(validation_ds, tokenizer, max_length)) == len(validation_ds)):
            # trl drops rows without a response token: a validation loss over none of them would silently not exist
            raise ValueError(f"validation_rows: at max_length={max_length} no validation row keeps a response token "
                             "(or there are none), so there is no validation loss; raise max_length or pass rows "
                             "with shorter prompts")
        validation = {"validation_ds": validation_ds, "keep_best": keep_best,
                      "per_device_eval_batch_size": 8, "eval_micro_batch": SMALL_MEMORY_SCORE_BATCH}
    elif keep_best:
        raise ValueError("keep_best=True keeps the epoch with the lowest validation loss: pass validation_rows "
                         "(rows held out from training and from the test set)")
    result = fit(model, rows, None, cfg, name=name, tokenizer=tokenizer,
                 trainer_class=example_loss_trainer(), args_class=SFTConfig, trainer_kwargs={"peft_config": peft_config},
                 max_length=max_length, completion_only_loss=completion_only_loss, packing=False,
                 **validation, **arg_overrides)
    if lost:
        result.extra["rows without response tokens"] = lost
    return result


# --------------------------------------------------------------------------- generation
def generate(model, tokenizer, rows, max_new_tokens: int = 48, template: str = "alpaca", batch_size: int = 8,
             **generate_kwargs) -> list[str]:
    """Greedy answers for `rows` (dicts with an instruction), batched with left padding; `generate_kwargs` go to
    `model.generate`."""
    texts = [render(row, tokenizer, template) for row in rows]
    return complete(model, tokenizer, texts, max_new_tokens, batch_size, **generate_kwargs)


# On a small machine at most 4 prompts are answered at once: in session 05's cpu profile under 2 GB, batches of 8
# (prompts up to 256 tokens, 64 new) swung the kernel's RSS by up to 570 MB, and the notebook peaked at 1,922 MB
# while its panel generated and judged answers.
SMALL_MEMORY_GENERATE_BATCH = 4


def longest_first(tokenizer, texts) -> list[int]:
    """The indices of `texts`, longest prompt first (ties keep their order): the order `complete` answers them in,
    batch by batch, so its last batch holds the shortest prompts."""
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]] if texts else []
    return sorted(range(len(texts)), key=lambda i: -lengths[i])


def generate_batch_size(batch_size: int) -> int:
    """The prompts `complete` answers at once: `batch_size`, at most `SMALL_MEMORY_GENERATE_BATCH` on a small
    machine."""
    return min(batch_size, SMALL_MEMORY_GENERATE_BATCH) if is_small() else batch_size


def complete(model, tokenizer, texts, max_new_tokens: int = 48, batch_size: int = 8, **generate_kwargs) -> list[str]:
    """Greedy continuations of raw prompt texts (left padding, so every row ends where generation starts), in the
    order of `texts`. Prompts are batched by length (longest first), so a batch pads little; `generate_kwargs` go to
    `model.generate` (e.g. `no_repeat_ngram_size=3`)."""
    from .train import release_freed_memory

    small = is_small()
    batch_size = generate_batch_size(batch_size)
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    order = longest_first(tokenizer, texts)
    outs = {}
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = models.on_device(enc, model)
            with torch.inference_mode():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
            answers = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            outs.update({i: t.strip() for i, t in zip(rows, answers)})
            if small:           # hand the batch's freed buffers back, so the next batch starts from the floor
                release_freed_memory()
    finally:
        tokenizer.padding_side = side
    return [outs[i] for i in range(len(texts))]


def side_by_side(instruction: str, answers: dict):
    """An HTML table: the instruction, then one column per model's answer."""
    import html

    from IPython.display import HTML

    if not str(instruction or "").strip():
        raise ValueError("type an instruction first")
    cells = "".join(f"<td style='vertical-align:top;white-space:pre-wrap'>{html.escape(a)}</td>" for a in answers.values())
    heads = "".join(f"<th>{html.escape(k)}</th>" for k in answers)
    return HTML(f"<p><b>Instruction:</b> {html.escape(instruction)}</p><table><tr>{heads}</tr><tr>{cells}</tr></table>")


# --------------------------------------------------------------------------- evaluation
def check_pairs(predictions, references) -> None:
    """One reference per prediction, and at least one: zip would silently score fewer, and a mean over none is no
    number."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} answers but {len(references)} references; they must pair up")
    if len(predictions) == 0:
        raise ValueError("no answers to score")


def rouge_scores(predictions, references) -> list[dict]:
    """ROUGE-1/2/L F1 per answer, with ftkit's offline rouge module."""
    from . import metrics

    predictions, references = list(predictions), list(references)
    check_pairs(predictions, references)
    rouge = metrics.load("rouge")
    return [rouge.compute(predictions=[p], references=[r]) for p, r in zip(predictions, references)]


def embedding_similarity(sentence_model, predictions, references) -> list[float]:
    """Cosine similarity between each answer's and its reference's sentence embedding."""
    predictions, references = list(predictions), list(references)
    check_pairs(predictions, references)
    a = sentence_model.encode(list(predictions), convert_to_tensor=True, normalize_embeddings=True)
    b = sentence_model.encode(list(references), convert_to_tensor=True, normalize_embeddings=True)
    cosines = (a * b).sum(-1).tolist()
    if is_small():      # the encoder's freed activations back to the OS (glibc keeps them), before the LM runs again
        from .train import release_freed_memory

        release_freed_memory()
    return cosines


# --------------------------------------------------------------------------- the judge
SCORE_PROMPT = (
    "You are grading an answer to an instruction against a reference answer.\n\n"
    "Instruction: {instruction}\n\nReference answer: {reference}\n\nAnswer to grade: {answer}\n\n"
    "Rate how helpful and correct the answer is compared with the reference, from 1 (wrong or unhelpful) "
    "to 5 (as good as the reference). Reply with the score only, as 'Score: N'.")
PAIR_PROMPT = (
    "Which answer to the instruction is better? Use the instruction only.\n\n"
    "Instruction: {instruction}\n\nAnswer A: {a}\n\nAnswer B: {b}\n\n"
    "Reply with the letter of the better answer only: A or B.")


def parse_score(text: str) -> int:
    """The 1-5 score in a judge's reply ("Score: 4", "4", "**4/5**"); anything else is a ValueError."""
    t = str(text).strip()
    m = re.search(r"score\s*(?:is|of)?\s*[:=]?\s*\**\s*([0-9]+)", t, re.I) or re.fullmatch(r"\W*([0-9]+)\s*(?:/\s*5)?\W*", t)
    if not m:
        raise ValueError(f"no score in the judge's reply {t[:80]!r}")
    score = int(m.group(1))
    if not 1 <= score <= 5:
        raise ValueError(f"the judge's score {score} is outside 1..5 (reply {t[:80]!r})")
    return score


def parse_choice(text: str) -> str:
    """'A' or 'B' from a pairwise judge's reply ("B", "Answer A", "A."); anything else is a ValueError."""
    t = str(text).strip()
    m = re.fullmatch(r"\W*(?:answer\s*:?\s*)?([AB])\W*", t, re.I)
    if m:
        return m.group(1).upper()
    letters = set(re.findall(r"\b([AB])\b", t))  # capital letters only: "a" is also an article
    if len(letters) != 1:
        raise ValueError(f"no single choice of A or B in the judge's reply {t[:80]!r}")
    return letters.pop()


def _clip(text: str, n_words: int = 80) -> str:
    w = str(text).split()
    return " ".join(w[:n_words]) + (" ..." if len(w) > n_words else "")


def _ask(judge, tokenizer, contents, max_new_tokens: int, prefix: str, batch_size: int = 8,
         replies: "JudgeReplies | None" = None) -> list[str]:
    """The judge's replies. Its turn is started with `prefix` ("Score:"), a common way to steer the
    format; the prefix is part of the reply that gets parsed. With `replies` (a `JudgeReplies`), a recorded call with
    the same prompts is reused."""
    chat = getattr(tokenizer, "chat_template", None)
    texts = [(tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                            add_generation_prompt=True) if chat else c + "\n") + prefix
             for c in contents]
    ask = complete if replies is None else replies.complete
    return [prefix + " " + r for r in ask(judge, tokenizer, texts, max_new_tokens, batch_size)]


class JudgeReplies:
    """The judge's replies, one entry per call (the prompts it asked together, their replies, its batch size).

    Calls recorded for the base model (`base_side`'s "judge" rows, read back by `recorded_base_side`) are reused when
    a call asks exactly a recorded call's prompts, in the same order: its last batch in `complete`'s order (the
    shortest prompts) is asked again now at the recorded batch size and compared. If fewer than three in four of them
    match, the whole call is asked now. Any other call is asked now and kept in `.calls` (that is how `base_side`
    records them). `.reused` and `.asked_now` hold one entry per distinct call (running a cell again adds nothing);
    `.line` sums them up; `source` names where the recorded calls came from."""

    def __init__(self, recorded=(), source: str = "the recording"):
        self.recorded = [dict(c) for c in recorded]
        self.source = source
        self.calls: list[dict] = []
        self.reused: dict[tuple, dict] = {}      # prompt keys -> {"replies", "identical", "checked"}
        self.asked_now: dict[tuple, int] = {}    # prompt keys -> replies asked now
        self.rejected: dict[tuple, tuple] = {}   # prompt keys -> (identical, checked) of a recorded call asked now

    @staticmethod
    def key(text: str, max_new_tokens: int) -> str:
        """A short hash of a judge prompt and its reply length: what a recorded reply is looked up by."""
        return hashlib.sha1(f"{max_new_tokens}\n{text}".encode()).hexdigest()[:16]

    def complete(self, judge, tokenizer, texts, max_new_tokens: int, batch_size: int = 8) -> list[str]:
        keys = tuple(self.key(t, max_new_tokens) for t in texts)
        call = next((c for c in self.recorded if tuple(c["keys"]) == keys), None) if keys else None
        if call is not None:
            size = call["batch"]
            last = longest_first(tokenizer, texts)[-(len(texts) % size or size):]
            again = complete(judge, tokenizer, [texts[i] for i in last], max_new_tokens, size)
            same = sum(a == call["replies"][i] for a, i in zip(again, last))
            if 4 * same >= 3 * len(last):   # greedy replies: on another processor one may flip at a near tie
                self.reused[keys] = {"replies": len(keys), "identical": same, "checked": len(last),
                                     "batches": (size, generate_batch_size(size))}
                self.asked_now.pop(keys, None)
                self.rejected.pop(keys, None)
                return list(call["replies"])
            self.rejected[keys] = (same, len(last))
        out = complete(judge, tokenizer, texts, max_new_tokens, batch_size)
        self.calls = [c for c in self.calls if tuple(c["keys"]) != keys]      # a cell run again replaces its call
        self.calls.append({"keys": keys, "replies": out, "batch": generate_batch_size(batch_size)})
        self.reused.pop(keys, None)
        self.asked_now[keys] = len(keys)
        return out

    @property
    def identical(self) -> int:
        return sum(r["identical"] for r in self.reused.values())

    @property
    def checked(self) -> int:
        return sum(r["checked"] for r in self.reused.values())

    @property
    def line(self) -> str:
        parts = []
        if self.reused:
            parts.append(f"{sum(r['replies'] for r in self.reused.values())} replies from {self.source} (each "
                         f"call's shortest prompts asked again now: {self.identical} of {self.checked} identical)")
        for recorded, now in {r["batches"] for r in self.reused.values() if r["batches"][0] != r["batches"][1]}:
            parts.append(f"recorded {recorded} prompts at a time, asked again {now} at a time on this machine, so "
                         "a reply may differ at a near tie")
        if self.asked_now:
            parts.append(f"{sum(self.asked_now.values())} replies asked now")
        for same, checked in self.rejected.values():
            parts.append(f"a recorded call's shortest {checked} prompts gave {same} identical replies now, so the "
                         "whole call was asked now")
        return "judge replies: " + ("; ".join(parts) or "none asked yet")

    def rows(self) -> list[dict]:
        """The calls asked now as recording rows: {"part": "judge", "call", "row", "key", "reply", "batch"}."""
        return [{"part": "judge", "call": c, "row": i, "key": k, "reply": r, "batch": call["batch"]}
                for c, call in enumerate(self.calls) for i, (k, r) in enumerate(zip(call["keys"], call["replies"]))]


def judge_scores(judge, tokenizer, instructions, references, answers,
                 judge_replies: JudgeReplies | None = None) -> dict:
    """Rubric scores 1-5 per answer. A reply that does not parse is None and is counted, never guessed. With
    `judge_replies`, a recorded call with the same prompts is reused (`JudgeReplies`)."""
    replies = _ask(judge, tokenizer, [SCORE_PROMPT.format(instruction=_clip(i), reference=_clip(r), answer=_clip(a))
                                      for i, r, a in zip(instructions, references, answers)], max_new_tokens=6,
                   prefix="Score:", replies=judge_replies)
    scores = []
    for reply in replies:
        try:
            scores.append(parse_score(reply))
        except ValueError:
            scores.append(None)
    return {"scores": scores, "replies": replies, "parse failures": sum(s is None for s in scores)}


def corrupt(answer: str, kind: str, other: str = "", seed: int = 0) -> str:
    """A worse version of a reference answer: truncated, repeated, another question's answer, or misspelled."""
    w = str(answer).split()
    if kind == "truncated":
        return " ".join(w[:max(1, len(w) // 3)])
    if kind == "repeated":
        first = " ".join(w[:max(3, len(w) // 2)])
        return " ".join([first] * 3)
    if kind == "other answer":
        if not other or other == answer:
            raise ValueError("the 'other answer' corruption needs a different answer in `other`")
        return other
    if kind == "misspelled":
        rng = random.Random(seed)
        return " ".join(_swap_letters(x, rng) if len(x) > 3 and rng.random() < 0.5 else x for x in w)
    raise ValueError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")


CORRUPTIONS = ("truncated", "repeated", "other answer", "misspelled")


def _swap_letters(word: str, rng) -> str:
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def judge_pairs(judge, tokenizer, instructions, references, kinds=CORRUPTIONS, seed: int = 0,
                judge_replies: JudgeReplies | None = None):
    """Reference vs each corruption, asked in both orders. Returns a DataFrame per pair: the judge's pick in each
    order, the share of the two orders in which it preferred the reference (0, 0.5 or 1), and whether it agreed with
    itself. With `judge_replies`, a recorded call with the same prompts is reused (`JudgeReplies`)."""
    import pandas as pd

    if len(instructions) != len(references) or len(references) < 2:
        raise ValueError(f"judge_pairs needs at least 2 references, one instruction each (the 'other answer' "
                         f"corruption takes the next reference); got {len(instructions)} instructions and "
                         f"{len(references)} references. In session 05, set N_PAIRS between 2 and N_EVAL")
    rows = []
    for i, (ins, ref) in enumerate(zip(instructions, references)):
        other = references[(i + 1) % len(references)]
        for kind in kinds:
            rows.append({"item": i, "corruption": kind, "instruction": ins, "reference": ref,
                         "corrupted": corrupt(ref, kind, other, seed + i)})
    prompts = []
    for r in rows:  # order 1: reference is A; order 2: reference is B
        prompts += [PAIR_PROMPT.format(instruction=_clip(r["instruction"]), a=_clip(r["reference"]), b=_clip(r["corrupted"])),
                    PAIR_PROMPT.format(instruction=_clip(r["instruction"]), a=_clip(r["corrupted"]), b=_clip(r["reference"]))]
    replies = _ask(judge, tokenizer, prompts, max_new_tokens=4, prefix="Answer:", replies=judge_replies)
    for k, r in enumerate(rows):
        picks = []
        for reply in replies[2 * k:2 * k + 2]:
            try:
                picks.append(parse_choice(reply))
            except ValueError:
                picks.append(None)
        r["pick (ref=A)"], r["pick (ref=B)"] = picks
        r["parsed"] = None not in picks
        r["prefers reference"] = ((picks[0] == "A") + (picks[1] == "B")) / 2  # share of the two orders
        r["consistent"] = r["parsed"] and picks[0] != picks[1]  # the same answer wins in both orders
    return pd.DataFrame(rows)


def judge_reliability(pairs) -> dict:
    """Summary of `judge_pairs`: accuracy over both orders, self-agreement, the share of 'A' among the parsed picks,
    and the replies (two per pair) that named no single answer."""
    if len(pairs) == 0:
        raise ValueError("no judged pairs: judge_pairs needs at least one instruction and reference")
    picks = pairs[["pick (ref=A)", "pick (ref=B)"]].to_numpy().ravel()
    parsed = [p for p in picks if isinstance(p, str)]   # an unparsed pick is None, or NaN in a pandas string column
    return {"pairs": len(pairs), "prefers reference %": 100 * float(pairs["prefers reference"].mean()),
            "consistent when swapped %": 100 * float(pairs["consistent"].mean()),
            "picks A %": 100 * sum(p == "A" for p in parsed) / len(parsed) if parsed else float("nan"),
            "unparsed replies": len(picks) - len(parsed)}


# --------------------------------------------------------------------------- error analysis
@lru_cache(maxsize=1)
def vocabulary() -> frozenset:
    """Every word in the data pack's English text: a spelling list that needs no download."""

    found = set()
    for split in ("train", "test"):
        for text in data.general_corpus(split):
            found.update(words(text))
    found.update(words(" ".join(data.load("medquad_corpus")["train"]["text"])))
    return frozenset(found)


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Share of the text's n-grams that already occurred earlier in it."""
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def non_word_rate(text: str) -> float:
    alpha = [x for x in words(text) if x.isalpha()]
    vocab = vocabulary()
    return sum(x not in vocab for x in alpha) / len(alpha) if alpha else 0.0


ERRORS = ("empty", "too long", "repetitive", "non-words", "copies instruction")


def tag_errors(answer: str, instruction: str, reference: str) -> dict:
    """Which error categories an answer falls into (several can apply)."""
    a = words(answer)
    return {"empty": not a,
            "too long": len(a) > max(2 * len(words(reference)), len(words(reference)) + 20),
            "repetitive": repeated_ngram_rate(answer) > 0.2,
            "non-words": len(a) >= 3 and non_word_rate(answer) > 0.2,
            "copies instruction": copies_instruction(answer, instruction)}


def error_counts(answers, instructions, references) -> dict:
    tags = [tag_errors(a, i, r) for a, i, r in zip(answers, instructions, references)]
    return {e: sum(t[e] for t in tags) for e in ERRORS}


# --------------------------------------------------------------------------- catastrophic forgetting
SENTIMENT_QUESTION = "Is the sentiment of this movie review positive or negative? Answer with one word."
SENTIMENT_INSTRUCTION = SENTIMENT_QUESTION + "\n\nReview: {text}"

# General questions with checkable answers: what the model could do before the narrow fine-tune.
GENERAL_QUESTIONS = (
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Italy?", ("rome",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("What is the largest planet in the solar system?", ("jupiter",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("How many days are there in a week?", ("seven", "7")),
    ("How many legs does a spider have?", ("eight", "8")),
    ("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
    ("What colour is the sky on a clear day?", ("blue",)),
    ("What is the opposite of hot?", ("cold",)),
    ("What language is mainly spoken in Spain?", ("spanish",)),
    ("In which country are the pyramids of Giza?", ("egypt",)),
    ("What gas do plants absorb from the air for photosynthesis?", ("carbon dioxide", "co2")),
    ("What is the chemical symbol for gold?", ("au",)),
    ("What is the freezing point of water in degrees Celsius?", ("0", "zero")),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("How many continents are there on Earth?", ("seven", "7")),
    ("What do bees make?", ("honey",)),
)


def sentiment_instructions(ds, label_names=("negative", "positive")):
    """A sentiment Dataset (text, label) written as instruction/response pairs. The response is the label's word:
    `label_names[label]` for a class id, or the label itself when it is already one of `label_names` (string
    labels, e.g. "positive"). Anything else is a ValueError naming the row and the labels it accepts."""
    from .data import require_columns

    require_columns(ds, ["text", "label"], "sentiment data")
    names = list(label_names)

    def word(label, row):
        if isinstance(label, str) and label in names:
            return label
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(names):
            return names[label]
        raise ValueError(f"sentiment data row {row}: label {label!r} is neither a class id 0..{len(names) - 1} nor "
                         f"one of the label words {names}; map your labels to these (ds.map) or pass label_names")

    def convert(r, i):
        return {"instruction": SENTIMENT_INSTRUCTION.format(text=r["text"]), "context": "",
                "response": word(r["label"], i)}

    return ds.map(convert, with_indices=True, remove_columns=ds.column_names)


def parse_sentiment(answer: str) -> str | None:
    """'positive' or 'negative' when the answer names exactly one of them, else None (unparsed)."""
    found = {w for w in words(answer) if w in ("positive", "negative")}
    return found.pop() if len(found) == 1 else None


def sentiment_answers(model, tokenizer, rows, template: str = "alpaca") -> list[str]:
    """The model's greedy answers (8 new tokens) to sentiment instructions (`sentiment_instructions`)."""
    rows = list(rows)
    if not rows:
        raise ValueError("no sentiment rows to score")
    return generate(model, tokenizer, rows, max_new_tokens=8, template=template, batch_size=16)


def sentiment_scores(answers, rows) -> dict:
    """Accuracy of the parsed labels of `answers` against `rows`' responses; an unparsed answer counts as wrong and
    is reported."""
    rows = list(rows)
    if not rows or len(answers) != len(rows):
        raise ValueError(f"{len(answers)} answers for {len(rows)} sentiment rows; need one per row, and some rows")
    parsed = [parse_sentiment(a) for a in answers]
    right = sum(p == r["response"] for p, r in zip(parsed, rows))
    return {"task accuracy": right / len(rows), "task unparsed": sum(p is None for p in parsed)}


def sentiment_accuracy(model, tokenizer, rows, template: str = "alpaca") -> dict:
    """`sentiment_scores` of the model's `sentiment_answers`."""
    return sentiment_scores(sentiment_answers(model, tokenizer, rows, template), rows)


def general_answers(model, tokenizer, template: str = "alpaca", questions=GENERAL_QUESTIONS) -> list[str]:
    """The model's greedy answers (16 new tokens) to general questions ((question, accepted answers) pairs)."""
    if not questions:
        raise ValueError("no questions to ask")
    return generate(model, tokenizer, [{"instruction": q} for q, _ in questions], max_new_tokens=16,
                    template=template, batch_size=10)


def general_scores(answers, questions=GENERAL_QUESTIONS) -> dict:
    """Share of `answers` that contain an accepted answer to their question."""
    if not questions or len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions; need one per question, and some")
    hits = [any(re.search(rf"\b{re.escape(k)}\b", a.lower()) for k in keys) for a, (_, keys) in zip(answers, questions)]
    return {"general QA": sum(hits) / len(hits), "answers": list(answers)}


def general_accuracy(model, tokenizer, template: str = "alpaca", questions=GENERAL_QUESTIONS) -> dict:
    """`general_scores` of the model's `general_answers`."""
    return general_scores(general_answers(model, tokenizer, template, questions), questions)


def forgetting_check(tokenizer, task_rows, holdout, template: str = "alpaca", stop_at: float | None = None,
                     before: dict | None = None):
    """A TrainerCallback that measures learning and forgetting before training and after every epoch: task
    accuracy on `task_rows` (validation rows, never the test rows) and the loss on `holdout` (tokenized dolly
    responses). Its `.history` is the run's learn-vs-forget trajectory. With `stop_at`, training stops at the
    first epoch whose task accuracy reaches it: how a LoRA run is matched to full fine-tuning's task gain.
    `before` ({"validation accuracy": ..., "dolly loss": ...}) is the untrained model's measurement, when it is
    already known (the same rows, template and model): it becomes epoch 0 instead of being measured again."""
    from transformers import TrainerCallback

    if before is not None and not {"validation accuracy", "dolly loss"} <= set(before):
        raise ValueError(f"before needs 'validation accuracy' and 'dolly loss', got {sorted(before)}")

    class ForgettingCheck(TrainerCallback):
        def __init__(self):
            self.history, self.seconds = [], 0.0   # seconds spent measuring, to subtract from the run's time

        def measure(self, model, epoch):
            start, training = time.perf_counter(), model.training
            acc = sentiment_accuracy(model, tokenizer, task_rows, template)["task accuracy"]
            self.history.append({"epoch": epoch, "validation accuracy": acc,
                                 "dolly loss": held_out_loss(model, holdout, tokenizer)})
            model.train(training)       # generation switched the model to eval mode (dropout off)
            self.seconds += time.perf_counter() - start
            return acc

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if before is None:
                self.measure(model, 0)
            else:
                self.history.append({"epoch": 0, "validation accuracy": float(before["validation accuracy"]),
                                     "dolly loss": float(before["dolly loss"])})

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            if self.measure(model, round(state.epoch, 2)) >= (stop_at if stop_at is not None else float("inf")):
                control.should_training_stop = True

    return ForgettingCheck()


# --------------------------------------------------------------------------- one table for every model
@contextmanager
def as_base(model):
    """Yields `model` answering as its base model: a peft model's adapters are switched off inside the block
    (LoRA leaves the base weights untouched, so no second copy is needed); any other model is yielded as is."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


@contextmanager
def with_adapter(model, adapter_dir):
    """`model` with a saved LoRA adapter put back in for the block (a few MB read from disk) and taken out after
    it, so one copy of the base weights serves the base and every adapter."""
    from peft import PeftModel

    tuned = PeftModel.from_pretrained(model, adapter_dir)
    try:
        yield tuned.eval()
    finally:
        tuned.unload()


def score_answers(name, answers, rows, sentence_model=None, judge=None, judge_tokenizer=None,
                  judge_replies: JudgeReplies | None = None) -> "pd.DataFrame":  # noqa: F821
    """One row per holdout answer: ROUGE-1/2/L, embedding cosine, judge score (None = unparsed), error tags, and the
    answer's and reference's length in words. `judge()` is a context that yields the judge model (e.g.
    `lambda: as_base(lora_model)`); without a judge (or a sentence model) that column is left empty (None).
    `judge_replies` (a `JudgeReplies`) reuses recorded replies to the same prompts."""
    import pandas as pd

    refs, ins = [r["response"] for r in rows], [r["instruction"] for r in rows]
    rouge = rouge_scores(answers, refs)
    cos = embedding_similarity(sentence_model, answers, refs) if sentence_model is not None else [None] * len(refs)
    judged = {"scores": [None] * len(refs), "replies": [None] * len(refs)}
    if judge is not None:
        with judge() as j:
            judged = judge_scores(j, judge_tokenizer, ins, refs, answers, judge_replies)
    out = pd.DataFrame({"model": name, "item": range(len(rows)), "answer": answers,
                        "rouge1": [r["rouge1"] for r in rouge], "rouge2": [r["rouge2"] for r in rouge],
                        "rougeL": [r["rougeL"] for r in rouge], "cosine": cos, "judge": judged["scores"],
                        "judge reply": judged["replies"], "answer words": [len(words(a)) for a in answers],
                        "reference words": [len(words(r)) for r in refs]})
    tags = pd.DataFrame([tag_errors(a, i, r) for a, i, r in zip(answers, ins, refs)])
    return pd.concat([out, tags], axis=1)


def summarize(scored, seed: int = 0, draws: int = 1000) -> "pd.DataFrame":  # noqa: F821
    """Per model: the mean of each metric with a 95% bootstrap interval over holdout items, and parse failures.
    Decoding is greedy, so the spread shown is over which holdout items were drawn, not over sampling."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for name, part in scored.groupby("model", sort=False):
        asked = part["judge reply"].notna() if "judge reply" in part else True    # no judge: nothing failed
        row = {"model": name, "answers": len(part), "judge parse failures": int((part["judge"].isna() & asked).sum())}
        for metric in ("rouge1", "rouge2", "rougeL", "cosine", "judge"):
            x = part[metric].dropna().to_numpy(dtype=float)
            if len(x) == 0:
                row[metric] = float("nan")
                continue
            means = rng.choice(x, size=(draws, len(x))).mean(axis=1)
            lo, hi = np.percentile(means, [2.5, 97.5])
            row[metric] = x.mean()
            row[f"{metric} 95% CI"] = f"{lo:.3f}-{hi:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def metric_agreement(scored) -> "pd.DataFrame":  # noqa: F821
    """Spearman rank correlation between ROUGE-L, cosine and the judge over all scored answers. A metric with no value
    at all is left out (no judge, or a judge none of whose replies parsed); so are rows where the judge did not
    parse."""
    return scored[["rougeL", "cosine", "judge"]].dropna(axis=1, how="all").dropna().corr(method="spearman")


# --------------------------------------------------------------------------- what the tuned model gets wrong, fixed in the data
def data_fix(rows, error: str):
    """The training rows without those whose *response* shows `error` (one of `ERRORS`), the course's "fix errors in
    the data space": (kept rows, what was dropped, in words). Rows are any Dataset or list of instruction rows.

    * too long: responses over twice the median response length (in words);
    * repetitive: responses over 10% of whose word trigrams repeat an earlier one;
    * non-words: responses over 10% of whose words are not in `vocabulary()`;
    * copies instruction: responses that restate the instruction (`copies_instruction`);
    * empty: responses under two words.

    A ValueError when no row shows it (then the error does not come from the data: look at decoding or the
    template) or when every row does."""
    import statistics

    if error not in ERRORS:
        raise ValueError(f"unknown error category {error!r}; use one of {ERRORS}")
    data = list(rows)
    if not data:
        raise ValueError("no training rows to fix")
    median = statistics.median(len(words(r["response"])) for r in data)
    rules = {
        "too long": (lambda r: len(words(r["response"])) > 2 * median,
                     f"responses over twice the median length ({2 * median:.0f} words)"),
        "repetitive": (lambda r: repeated_ngram_rate(r["response"]) > 0.1,
                       "responses over 10% of whose word trigrams repeat"),
        "non-words": (lambda r: non_word_rate(r["response"]) > 0.1, "responses with over 10% non-words"),
        "copies instruction": (lambda r: copies_instruction(r["response"], r["instruction"]),
                               "responses that restate the instruction"),
        "empty": (lambda r: len(words(r["response"])) < 2, "responses under two words"),
    }
    shows, what = rules[error]
    keep = [i for i, r in enumerate(data) if not shows(r)]
    if len(keep) == len(data):
        raise ValueError(f"no training row has {what}: the '{error}' answers do not come from the training data "
                         "(look at decoding, the template or max_new_tokens instead)")
    if not keep:
        raise ValueError(f"every training row has {what}: dropping them leaves nothing to train on")
    kept = rows.select(keep) if hasattr(rows, "select") else [data[i] for i in keep]
    return kept, f"dropped {len(data) - len(keep)} of {len(data)} training pairs: {what}"


def most_frequent_error(scored, model: str) -> tuple[str | None, int]:
    """The error category most frequent in `model`'s scored answers (ties: the first in `ERRORS`), and its count;
    (None, 0) when no answer has an error."""
    ranked = ranked_errors(scored, model)
    return ranked[0] if ranked else (None, 0)


def ranked_errors(scored, model: str) -> list[tuple[str, int]]:
    """(error category, answers of `model` with it), most frequent first (ties: `ERRORS` order), zeros left out."""
    part = scored[scored["model"] == model]
    if part.empty:
        raise ValueError(f"no scored answers of {model!r}; models: {sorted(scored['model'].unique())}")
    counts = [(e, int(part[e].sum())) for e in ERRORS]
    return sorted([c for c in counts if c[1]], key=lambda c: -c[1])      # sorted() is stable: ties keep ERRORS order


def plan_data_fix(scored, model: str, rows) -> dict:
    """The course's loop, one turn: take `model`'s errors from the most frequent down, and fix the first one that the
    training data can explain (`data_fix` finds training responses with the same fault). An error that no training
    response shows is skipped with the reason: it comes from elsewhere (decoding, the template, the length limit).
    Returns {"error", "count", "rows" (the kept training rows), "fix" (what was dropped), "skipped": [(error, count,
    why)]}; "error" is None when no error can be fixed in the data."""
    plan = {"error": None, "count": 0, "rows": None, "fix": None, "skipped": []}
    for error, count in ranked_errors(scored, model):
        try:
            kept, what = data_fix(rows, error)
        except ValueError as why:
            plan["skipped"].append((error, count, str(why)))
            continue
        return {**plan, "error": error, "count": count, "rows": kept, "fix": what}
    return plan


# --------------------------------------------------------------------------- teacher forcing, lengths, the prompt's share
def teacher_forced(logits, labels, tokenizer) -> "pd.DataFrame":  # noqa: F821
    """What one training forward pass predicts: for every graded position, the right next token (the label) and the
    model's most likely token there, having read the *right* tokens before it (teacher forcing). One example
    (logits 1 x T x V, labels 1 x T)."""
    import pandas as pd

    gold, predicted = labels[0, 1:].cpu(), logits[0, :-1].argmax(-1).cpu()
    keep = gold != -100
    if not keep.any():
        raise ValueError("every label is -100: no response token to show")
    return pd.DataFrame({"right token": tokenizer.convert_ids_to_tokens(gold[keep].tolist()),
                         "predicted": tokenizer.convert_ids_to_tokens(predicted[keep].tolist()),
                         "match": (gold[keep] == predicted[keep]).tolist()})


def prompt_share(examples) -> float:
    """The share of all tokens (every example's labels together) labelled -100: the prompt's share."""
    labels = [l for ex in examples for l in ex["labels"]]
    if not labels:
        raise ValueError("no tokens to count")
    return sum(l == -100 for l in labels) / len(labels)


def by_length(values: dict, lengths, groups: int = 3) -> "pd.DataFrame":  # noqa: F821
    """Means of each series in `values` ({name: one number per row}) over `groups` equal-sized groups of rows, from
    the shortest `lengths` to the longest: does a longer output score worse?"""
    import pandas as pd

    frame = pd.DataFrame({"length": list(lengths), **{k: list(v) for k, v in values.items()}})
    if len(frame) < groups:
        raise ValueError(f"{len(frame)} rows cannot make {groups} length groups")
    frame["group"] = pd.qcut(frame["length"].rank(method="first"), groups, labels=False)
    table = frame.groupby("group").agg(rows=("length", "size"), shortest=("length", "min"),
                                       longest=("length", "max"), **{k: (k, "mean") for k in values})
    table.index = ["short", "medium", "long"] if groups == 3 else list(table.index)
    return table


# --------------------------------------------------------------------------- the session's runs, live and recorded
# The sizes of each profile: the notebook's defaults, and the sizes its recorded runs used.
SIZES = {
    "smoke": {"eval every": 1, "train pairs": 8, "validation pairs": 4, "loss pairs": 4, "answers": 4, "judge pairs": 2,
              "max length": 96, "new tokens": 8, "batch": 4, "epochs": 1, "steps": 2, "task pairs": 8,
              "task test": 4, "task validation": 4, "general questions": 3, "forgetting answers": 4},
    "cpu": {"eval every": 5, "train pairs": 160, "validation pairs": 40, "loss pairs": 60, "answers": 24, "judge pairs": 12,
            "max length": 256, "new tokens": 64, "batch": 8, "epochs": 1, "steps": -1, "task pairs": 256,
            "task test": 200, "task validation": 64, "general questions": 20, "forgetting answers": 12},
    "gpu": {"eval every": 10, "train pairs": None, "validation pairs": 60, "loss pairs": 60, "answers": 40, "judge pairs": 20,
            "max length": 512, "new tokens": 128, "batch": 16, "epochs": 3, "steps": -1, "task pairs": 2000,
            "task test": 1000, "task validation": 200, "general questions": 20, "forgetting answers": 20},
}
RANK, LR_FULL, LR_LORA = 16, 5e-5, 5e-4
MAX_ANSWER_WORDS = 60       # holdout instructions answered and scored: references that fit the new tokens


def sizes(profile) -> dict:
    """The sizes of session 05 in `profile` (a name, a Profile or ftkit.setup()'s cfg)."""
    name = profile if isinstance(profile, str) else getattr(getattr(profile, "profile", profile), "name", None)
    if name not in SIZES:
        raise ValueError(f"no session 05 sizes for profile {name!r}; profiles: {sorted(SIZES)}")
    return dict(SIZES[name])


def fitting(ds, lengths, max_length: int):
    """The rows of `ds` whose prompt + response (`lengths`, from `token_lengths`) fit in `max_length` tokens."""
    if len(lengths) != len(ds):
        raise ValueError(f"{len(lengths)} lengths for {len(ds)} rows")
    return ds.select([i for i, n in enumerate(lengths) if n <= max_length])


def split_validation(rows, n_train: int | None, n_validation: int, seed: int = 0):
    """(training rows, validation rows): `n_validation` rows drawn with `seed` are held out, and `n_train` (None:
    all) of the others train. The validation rows choose an epoch or a setting; the test split only scores."""
    if not 0 < n_validation < len(rows):
        raise ValueError(f"n_validation must be between 1 and {len(rows) - 1} (the rows that fit), got {n_validation}")
    shuffled = rows.shuffle(seed=seed)
    rest = len(rows) - n_validation
    n_train = rest if n_train is None else n_train
    if not 0 < n_train <= rest:
        raise ValueError(f"n_train must be between 1 and {rest} (the rows left after validation), got {n_train}")
    return (shuffled.select(range(n_validation, n_validation + n_train)), shuffled.select(range(n_validation)))


def answerable(test, n: int, max_words: int = MAX_ANSWER_WORDS) -> list[dict]:
    """The first `n` test rows whose reference answer has at most `max_words` words (so it fits the new tokens)."""
    return [r for r in test if len(str(r["response"]).split()) <= max_words][:n]


def narrow_task(train, probe, test, holdout, forget_rows, questions, new_tokens: int):
    """What section 5's narrow fine-tunes train on and are measured with (a SimpleNamespace): the sentiment
    instructions to train on, the validation reviews that choose when to stop (`probe`), the test reviews that score,
    the tokenized dolly holdout (dolly loss), the holdout instructions whose answers get a ROUGE-L, the general
    questions, and the new tokens per answer."""
    from types import SimpleNamespace

    return SimpleNamespace(train=train, probe=list(probe), test=list(test), holdout=holdout,
                           forget_rows=list(forget_rows), questions=tuple(questions), new_tokens=new_tokens)


def session_data(tokenizer, profile, template: str = "alpaca"):
    """Everything session 05 trains and scores on, at `profile`'s sizes, built as the notebook builds it: dolly's
    cleaned training pairs that fit, split into training and validation rows; the tokenized holdout (held-out loss)
    and validation rows; the holdout instructions answered; section 5's `narrow_task`. A SimpleNamespace."""
    from types import SimpleNamespace


    S = sizes(profile)
    dolly = data.load("dolly")
    train_clean = clean(dolly["train"])
    fits = fitting(train_clean, token_lengths(train_clean, tokenizer, template), S["max length"])
    train_rows, val_rows = split_validation(fits, S["train pairs"], S["validation pairs"])
    holdout = tokenize_instructions(dolly["test"].select(range(S["loss pairs"])), tokenizer, S["max length"], template)
    eval_rows = answerable(dolly["test"], S["answers"])
    rt = data.load("rotten_tomatoes")
    task = narrow_task(sentiment_instructions(data.take(rt["train"], S["task pairs"], stratify="label")),
                       sentiment_instructions(data.take(rt["validation"], S["task validation"], stratify="label")),
                       sentiment_instructions(data.take(rt["test"], S["task test"], stratify="label")),
                       holdout, eval_rows[:S["forgetting answers"]], GENERAL_QUESTIONS[:S["general questions"]],
                       S["new tokens"])
    return SimpleNamespace(sizes=S, train_rows=train_rows, val_rows=val_rows, holdout=holdout,
                           val_enc=tokenize_instructions(val_rows, tokenizer, S["max length"], template),
                           eval_rows=eval_rows, task=task)


def fine_tune(model, tokenizer, rows, cfg, *, method: str = "LoRA", rank: int = RANK, epochs: float | None = None,
              lr: float | None = None, name: str | None = None, template: str = "alpaca", max_length: int | None = None,
              batch: int | None = None, steps: int | None = None, **sft_kwargs):
    """One run of session 05: full fine-tuning of `model` (pass a fresh copy) or LoRA rank `rank` beside its frozen
    weights, with learning rate `LR_FULL` or `LR_LORA` unless given, logging every step. Max length, batch, epochs
    and steps default to the profile's `sizes` (given epochs run whole: no step limit). `sft_kwargs` go to `sft`
    (validation_rows, keep_best, completion_only_loss, callbacks, ...). Returns sft's RunResult."""
    if method not in ("full", "LoRA"):
        raise ValueError(f"method must be 'full' or 'LoRA', got {method!r}")
    S = sizes(cfg)
    lr = lr or (LR_FULL if method == "full" else LR_LORA)
    name = name or (f"LoRA r={rank}" if method == "LoRA" else "full")
    steps = steps if steps is not None else (S["steps"] if epochs is None else -1)
    result = sft(model, tokenizer, rows, cfg, name=name, template=template,
                 lora_rank=rank if method == "LoRA" else None, max_length=max_length or S["max length"],
                 num_train_epochs=epochs or S["epochs"], max_steps=steps,
                 per_device_train_batch_size=batch or S["batch"], learning_rate=lr, logging_steps=1, **sft_kwargs)
    result.metrics["lr"] = lr
    return result


def what_it_can_do(model, tokenizer, task, name: str, known: dict | None = None, template: str = "alpaca") -> dict:
    """Section 5's forgetting row for `model` on `task` (`narrow_task`): sentiment accuracy on the test reviews,
    dolly loss, dolly ROUGE-L of the forgetting rows' answers, general questions. `known` holds what was already
    measured on the same rows and model (e.g. {"dolly loss": ...} from the last epoch's check): not measured again."""
    known = dict(known or {})
    row = {"setup": name, **sentiment_accuracy(model, tokenizer, task.test, template)}
    if "dolly loss" not in known:
        known["dolly loss"] = held_out_loss(model, task.holdout, tokenizer)
    if "dolly ROUGE-L" not in known:
        answers = generate(model, tokenizer, task.forget_rows, task.new_tokens, template)
        known["dolly ROUGE-L"] = mean_rouge_l(answers, task.forget_rows)
    if "general QA" not in known:
        known["general QA"] = general_accuracy(model, tokenizer, template, task.questions)["general QA"]
    return {**row, **{k: known[k] for k in ("dolly loss", "dolly ROUGE-L", "general QA")}}


def mean_rouge_l(answers, rows) -> float:
    """The mean ROUGE-L of `answers` against the rows' reference responses."""
    return sum(s["rougeL"] for s in rouge_scores(answers, [r["response"] for r in rows])) / len(rows)


def narrow_run(model, tokenizer, cfg, task, method: str, epochs: float, name: str, before: dict,
               stop_at: float | None = None, template: str = "alpaca"):
    """Section 5's narrow fine-tune: `method` on the sentiment instructions for up to `epochs`, learning and
    forgetting measured after every epoch (`forgetting_check`; `before` is the untrained model's epoch 0), then its
    forgetting row (`what_it_can_do`, reusing the last epoch's dolly loss). LoRA trains beside `model` and is taken
    out again afterwards; full fine-tuning trains `model` itself (pass a fresh copy). Returns (row, trajectory
    DataFrame, the last validation accuracy)."""
    import pandas as pd

    check = forgetting_check(tokenizer, task.probe, task.holdout, template, stop_at=stop_at, before=before)
    run = fine_tune(model, tokenizer, task.train, cfg, method=method, epochs=epochs, name=name, template=template,
                    callbacks=[check])
    last = check.history[-1]
    row = {**what_it_can_do(run.model, tokenizer, task, name, {"dolly loss": last["dolly loss"]}, template),
           "epochs": last["epoch"], "seconds": round(run.seconds - check.seconds, 1),
           "% trainable": round(run.trainable_pct, 2)}
    if method == "LoRA":
        run.model.unload()      # `model` is the base again (LoRA never changed its weights)
    run.model = None
    return row, pd.DataFrame(check.history), last["validation accuracy"]


def answer_summary(scored) -> dict:
    """One model's scored answers in a row: mean ROUGE-L, answer words and cosine (when scored), error counts."""
    out = {"rougeL": float(scored["rougeL"].mean()), "answer words": float(scored["answer words"].mean())}
    if scored["cosine"].notna().all():
        out["cosine"] = float(scored["cosine"].mean())
    return {**out, **{e: int(scored[e].sum()) for e in ERRORS}}


def recorded_settings(profile) -> dict:
    """What decides session 05's recorded runs (`ftkit.results.SWEEPS["instruct_runs"]`): the profile's sizes and
    the runs' settings."""
    return {"sizes": sizes(profile), "rank": RANK, "lr LoRA": LR_LORA, "template": "alpaca",
            "answer words": MAX_ANSWER_WORDS, "fixes": "data_fix v1", "runs": "dolly LoRA + data fix, narrow LoRA"}


def dolly_lora(model, tokenizer, rows, val_rows, cfg, name: str | None = None, **kwargs):
    """Session 05's dolly run: LoRA rank `RANK` beside `model`'s frozen weights at the profile's sizes, the
    validation rows scored every `sizes(cfg)["eval every"]` optimizer steps and the checkpoint of the lowest
    validation loss kept. The notebook's live run, its data-fix retrain and the recording all train through here,
    so they are the same run. `kwargs` override `fine_tune`'s (the panel's epochs, rank, learning rate)."""
    settings = {"validation_rows": val_rows, "keep_best": True, "eval_every": sizes(cfg)["eval every"], **kwargs}
    return fine_tune(model, tokenizer, rows, cfg, name=name, **settings)


def best_validation_loss(result) -> float:
    """The validation loss of the checkpoint a run ended with: the best one with `keep_best`, else the last."""
    if not result.eval_history:
        raise ValueError(f"run {result.name!r} scored no validation rows (pass validation_rows)")
    if result.best_step is None:
        return result.eval_history[-1]["loss"]
    return next(h["loss"] for h in result.eval_history if h["step"] == result.best_step)


def dolly_scores(name: str, model, tokenizer, d, result=None, **extra):
    """(row, scored answers) of one model on session 05's dolly holdout (`d`: `session_data`): held-out loss,
    ROUGE-L, answer length and error counts of its greedy answers; with the run's `result`, its time, trainable
    share, steps, best validation loss and best step. The recorded runs' "dolly" rows."""
    scored = score_answers(name, generate(model, tokenizer, d.eval_rows, d.sizes["new tokens"]), d.eval_rows)
    row = {"part": "dolly", "run": name, "held-out loss": held_out_loss(model, d.holdout, tokenizer),
           **answer_summary(scored), **extra}
    if result is not None:
        row.update({"seconds": round(result.seconds, 1), "% trainable": round(result.trainable_pct, 3),
                    "steps": result.steps, "validation loss": best_validation_loss(result),
                    "best step": result.best_step})
    return row, scored


# The untrained model's side: section 1's template check (its answers to the sentiment probe and the general
# questions, per template), section 3's base row (its held-out and validation losses per row, its answers to the
# holdout instructions) and section 4's judge replies (its scores of those answers and the reliability pairs). The
# same for every learner, so recorded (`python -m ftkit record instruct_base`, about 4 minutes on 2 cores) and
# checked in the notebook on a few rows, answered, scored and judged again.
def base_settings(profile) -> dict:
    """What decides the base model's recorded side (`ftkit.results.SWEEPS["instruct_base"]`)."""
    p = getattr(profile, "profile", profile)
    S = sizes(profile)
    return {"model": p.models["causal"], "judge": p.models["judge"], "template": "alpaca",
            "answer words": MAX_ANSWER_WORDS, "templates": list(TEMPLATES),
            "judge prompts": hashlib.sha1((SCORE_PROMPT + PAIR_PROMPT).encode()).hexdigest()[:12],
            **{k: S[k] for k in ("train pairs", "validation pairs", "loss pairs", "answers", "max length", "new tokens",
                                 "task validation", "general questions", "judge pairs")}}


def base_side(cfg) -> list[dict]:
    """The base model's side, one row each: "held-out" and "validation" rows (`response_losses`: loss sum and
    tokens per row), "answer" rows (`generate`'s greedy answer to each of `session_data`'s holdout instructions), and
    section 1's template check: per template, "sentiment" rows (`sentiment_answers` to the validation reviews) and
    "general" rows (`general_answers`); and the judge's "judge" rows (`JudgeReplies.rows`: its replies when it
    scores those answers, `judge_scores`, and to the reliability pairs of the first "judge pairs" of them,
    `judge_pairs`)."""
    model, tok = models.load_causal(cfg)
    d = session_data(tok, cfg)
    rows = [{"part": part, "row": i, "loss sum": l, "tokens": n}
            for part, split in (("held-out", d.holdout), ("validation", d.val_enc))
            for i, (l, n) in enumerate(response_losses(model, split, tok))]
    answers = generate(model, tok, d.eval_rows, d.sizes["new tokens"])
    rows += [{"part": "answer", "row": i, "instruction": r["instruction"], "answer": a}
             for i, (r, a) in enumerate(zip(d.eval_rows, answers))]
    for template in TEMPLATES:
        rows += [{"part": "sentiment", "template": template, "row": i, "answer": a}
                 for i, a in enumerate(sentiment_answers(model, tok, d.task.probe, template))]
        rows += [{"part": "general", "template": template, "row": i, "answer": a}
                 for i, a in enumerate(general_answers(model, tok, template, d.task.questions))]
    same_model = models.resolve("judge", cfg) == models.resolve("causal", cfg)
    judge, judge_tok = (model, tok) if same_model else models.load_causal(cfg, role="judge")
    replies = JudgeReplies()
    instructions, references = [r["instruction"] for r in d.eval_rows], [r["response"] for r in d.eval_rows]
    judge_scores(judge, judge_tok, instructions, references, answers, replies)
    n = d.sizes["judge pairs"]
    judge_pairs(judge, judge_tok, instructions[:n], references[:n], judge_replies=replies)
    return rows + replies.rows()


def recorded_base_side(recorded):
    """`base_side`'s rows (`results.sweep_rows("instruct_base", cfg)`) read back: `.losses` and `.validation_losses`
    ([(loss sum, tokens)] per row, as `response_losses` gives them), `.answers` and `.instructions` (one per holdout
    instruction, in order), `.sentiment` and `.general` (the template check's answers, per template), `.judge` (the
    judge's recorded calls, for `JudgeReplies`), `.settings` (the recording's `base_settings`) and `.live` (whether
    it was computed now, by `ftkit.setup(live=True)`)."""
    from types import SimpleNamespace

    provenance = getattr(recorded, "provenance", {})

    def part(name, *keys, template=None):
        rows = sorted((r for r in recorded if r["part"] == name and r.get("template") == template),
                      key=lambda r: r["row"])
        return [tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]] for r in rows]

    return SimpleNamespace(losses=part("held-out", "loss sum", "tokens"),
                           validation_losses=part("validation", "loss sum", "tokens"), answers=part("answer", "answer"),
                           instructions=part("answer", "instruction"),
                           sentiment={t: part("sentiment", "answer", template=t) for t in TEMPLATES},
                           general={t: part("general", "answer", template=t) for t in TEMPLATES},
                           judge=judge_calls(recorded), settings=dict(provenance.get("settings", {})),
                           live=bool(provenance.get("live")))


def judge_calls(recorded) -> list[dict]:
    """`JudgeReplies.rows` read back: one {"keys", "replies", "batch"} per recorded call, in order."""
    calls: dict[int, dict] = {}
    for r in sorted((r for r in recorded if r["part"] == "judge"), key=lambda r: (r["call"], r["row"])):
        call = calls.setdefault(r["call"], {"keys": [], "replies": [], "batch": r["batch"]})
        call["keys"].append(r["key"])
        call["replies"].append(r["reply"])
    return list(calls.values())


def template_table(base, probe, questions) -> "pd.DataFrame":  # noqa: F821
    """Section 1's template check from the base model's recorded answers (`recorded_base_side`): per template, the
    sentiment accuracy on `probe` and the share of `questions` answered, one row each."""
    import pandas as pd

    return pd.DataFrame([{"template": t, **sentiment_scores(base.sentiment[t], probe),
                          "general QA": general_scores(base.general[t], questions)["general QA"]}
                         for t in TEMPLATES]).set_index("template")


def check_templates(model, tokenizer, base, probe, questions, rows: int = 4) -> dict:
    """The recorded template answers against the base `model` now: the last `rows` reviews and questions in
    `generate`'s order (longest prompt first), answered again with each template, in one batch each, as recorded."""
    same = checked = 0
    for template in TEMPLATES:
        for part, items in (("sentiment", list(probe)), ("general", [{"instruction": q} for q, _ in questions])):
            recorded = getattr(base, part)[template]
            if len(recorded) != len(items):
                raise ValueError(f"the recording answered {len(recorded)} {part} prompts with the {template} template, "
                                 f"not {len(items)}; start with ftkit.setup(live=True) to answer them all now")
            picked = longest_first(tokenizer, [render(r, tokenizer, template) for r in items])[-rows:]
            again = (sentiment_answers(model, tokenizer, [items[i] for i in picked], template) if part == "sentiment"
                     else general_answers(model, tokenizer, template, [questions[i] for i in picked]))
            same += sum(a == recorded[i] for a, i in zip(again, picked))
            checked += len(picked)
    return {"answers identical": same, "answers checked": checked,
            "line": f"template check: {same} of {checked} answers identical to the recording"}


def base_model_side(model, tokenizer, base, holdout, val_enc, eval_rows, new_tokens: int, template: str = "alpaca"):
    """The base model's losses and answers for section 3 (a SimpleNamespace like `recorded_base_side`'s, with
    `.check`, `.line` and `.judge`, a `JudgeReplies` for section 4): the recorded ones, checked on a few rows now
    (`check_base_side`), when the recording scored the same rows, cut alike, and answered the same instructions with
    the same template and new tokens; else all computed now, with a line that says which setting differs (N_LOSS,
    N_EVAL, MAX_LEN, NEW_TOKENS, TEMPLATE). Either way the judge's recorded calls serve every call whose prompts still
    match (the reliability pairs, unless N_PAIRS changed)."""
    from types import SimpleNamespace

    def graded(split):
        return [sum(label != -100 for label in row["labels"][1:]) for row in split]

    differs = [what for what, same in (
        ("NEW_TOKENS", base.settings.get("new tokens") == new_tokens),
        ("TEMPLATE", base.settings.get("template") == template),
        ("the holdout rows (N_LOSS, MAX_LEN)", [n for _, n in base.losses] == graded(holdout)),
        ("the validation rows (N_VAL, MAX_LEN)", [n for _, n in base.validation_losses] == graded(val_enc)),
        ("the instructions answered (N_EVAL)", base.instructions == [r["instruction"] for r in eval_rows])) if not same]
    # the judge's recorded replies are looked up by their exact prompts, so they serve whatever still matches
    judge = JudgeReplies(base.judge, "the base side computed at the start" if base.live else "the recording")
    if not differs:
        check = check_base_side(model, tokenizer, base, holdout, eval_rows, new_tokens, template)
        return SimpleNamespace(losses=base.losses, validation_losses=base.validation_losses, answers=base.answers,
                               check=check, line=check["line"], judge=judge)
    return SimpleNamespace(losses=response_losses(model, holdout, tokenizer),
                           validation_losses=response_losses(model, val_enc, tokenizer),
                           answers=generate(model, tokenizer, eval_rows, new_tokens, template), check=None,
                           line=f"base side: {', '.join(differs)} {'differs' if len(differs) == 1 else 'differ'} "
                                f"from the recording's, so it was computed now",
                           judge=judge)


def check_base_side(model, tokenizer, base, holdout, eval_rows, new_tokens: int, template: str = "alpaca",
                    rows: int = 4) -> dict:
    """The recorded base side against the base `model` now: the `rows` shortest holdout instructions answered again
    (one batch, as the recording's last when it answered 4 at a time) and the first `rows` holdout rows with response
    tokens scored again. A ValueError if the recording answered other instructions."""
    if base.instructions != [r["instruction"] for r in eval_rows]:
        raise ValueError("the recorded base answers are for other instructions than eval_rows; start the notebook with "
                         "ftkit.setup(live=True) to answer them all now")
    shortest = longest_first(tokenizer, [render(r, tokenizer, template) for r in eval_rows])[-rows:]
    again = generate(model, tokenizer, [eval_rows[i] for i in shortest], new_tokens, template)
    same = sum(a == base.answers[i] for a, i in zip(again, shortest))
    scored = [i for i, (_, n) in enumerate(base.losses) if n][:rows]
    losses = response_losses(model, holdout.select(scored), tokenizer)
    gap = max((abs(l / n - base.losses[i][0] / base.losses[i][1]) for (l, n), i in zip(losses, scored) if n),
              default=float("inf"))
    return {"answers identical": same, "answers checked": len(shortest), "largest loss gap": gap,
            "line": f"base side: {same} of {len(shortest)} answers identical to the recording; held-out loss per token "
                    f"of {len(scored)} rows within {gap:.1e} of the recording's"}


def recorded_runs(cfg) -> list[dict]:
    """Session 05's longer runs, trained by the functions the notebook calls (`python -m ftkit record instruct_runs`).

    Rows, by "part":
    * "dolly": base, LoRA (`dolly_lora`: the notebook's live run, so its live held-out loss can be checked against
      this one) and the data-fix retrain (`plan_data_fix` on the LoRA run's answers, then `dolly_lora` on the kept
      rows): held-out loss, validation loss, ROUGE-L, answer length and error counts of the holdout answers;
    * "forgetting" and "trajectory": the narrow sentiment fine-tune (LoRA, one epoch) next to the base model, and
      its per-epoch learn-vs-forget trajectory."""
    S = sizes(cfg)
    model, tok = models.load_causal(cfg)
    d = session_data(tok, cfg)
    rows = []
    base_val = example_loss(response_losses(model, d.val_enc, tok))
    row, base_scored = dolly_scores("base", model, tok, d, **{"validation loss": base_val})
    rows.append(row)
    base_loss = row["held-out loss"]
    lora = dolly_lora(model, tok, d.train_rows, d.val_rows, cfg)
    row, scored = dolly_scores(lora.name, lora.model, tok, d, lora, **{"training pairs": len(d.train_rows)})
    rows.append(row)
    plan = plan_data_fix(scored, lora.name, d.train_rows)
    lora.model.unload()
    if plan["error"] is not None:
        retrain = dolly_lora(model, tok, plan["rows"], d.val_rows, cfg, name=f"{lora.name}, data fix")
        rows.append(dolly_scores(retrain.name, retrain.model, tok, d, retrain, **{
            "fixed error": plan["error"], "fix": plan["fix"], "training pairs": len(plan["rows"])})[0])
        retrain.model.unload()

    # forgetting: a narrow sentiment fine-tune. The base model's numbers are those the notebook has by then: its
    # validation accuracy and general questions from the template check, its first answers' ROUGE-L.
    task = d.task
    before = {"validation accuracy": sentiment_accuracy(model, tok, task.probe)["task accuracy"],
              "dolly loss": base_loss}
    known = {"dolly loss": base_loss, "general QA": general_accuracy(model, tok, "alpaca", task.questions)["general QA"],
             "dolly ROUGE-L": mean_rouge_l(list(base_scored["answer"][:len(task.forget_rows)]), task.forget_rows)}
    rows.append({"part": "forgetting", **what_it_can_do(model, tok, task, "base", known)})
    row, trajectory, _ = narrow_run(model, tok, cfg, task, "LoRA", 1, "LoRA, one epoch", before)
    rows.append({"part": "forgetting", **row})
    rows += [{"part": "trajectory", "run": "LoRA, one epoch", **t} for t in trajectory.to_dict("records")]
    return rows


# Two more runs next to the recorded LoRA run, same data and settings: three times the epochs (overfitting and the
# best checkpoint), and the loss on the prompt's tokens too (quiz question 1). Recorded: about 25 minutes on 2 cores.
def variant_settings(profile) -> dict:
    """What decides session 05's variant runs (`ftkit.results.SWEEPS["instruct_variants"]`): `recorded_settings`'
    sizes and run settings, and the long run's epochs (three times the profile's)."""
    shared = {k: v for k, v in recorded_settings(profile).items() if k not in ("fixes", "runs")}
    return {**shared, "long run epochs": 3 * sizes(profile)["epochs"],
            "runs": "LoRA for 3x the epochs (validated every 'eval every' steps, best kept); LoRA with loss on the "
                    "prompt too (the profile's epochs, last checkpoint)"}


def loss_windows(result) -> list[dict]:
    """One row per validation of a run: its step and epoch, the validation loss, and the mean training loss over
    the steps since the previous validation (the same window), so the two curves can be compared point by point."""
    import numpy as np

    rows, last = [], 0
    for h in result.eval_history:
        window = [loss for step, loss in result.loss_history if last < step <= h["step"]]
        rows.append({"step": h["step"], "epoch": h["epoch"],
                     "training loss": float(np.mean(window)) if window else None, "validation loss": h["loss"]})
        last = h["step"]
    return rows


def variant_runs(cfg) -> list[dict]:
    """Session 05's variant runs, trained by `dolly_lora` on the recorded LoRA run's data (`session_data`), rows by
    "part":

    * "epochs": LoRA for `variant_settings`' long-run epochs, one row per validation (`loss_windows`): over-fitting
      shows as the validation loss turning up while the training loss keeps falling;
    * "dolly": that run (its best checkpoint), and LoRA for the profile's epochs with the prompt's tokens graded too
      (`completion_only_loss=False`), ending at its last step as the recorded LoRA run did (its Trainer's validation
      loss grades the prompt too, so it chooses no checkpoint). Scored like the recorded runs (`dolly_scores`); the
      held-out and validation losses count response tokens only in every row, so the rows compare."""
    model, tok = models.load_causal(cfg)
    d = session_data(tok, cfg)
    epochs = variant_settings(cfg)["long run epochs"]
    long_run = dolly_lora(model, tok, d.train_rows, d.val_rows, cfg, name=f"LoRA, {epochs} epochs", epochs=epochs)
    rows = [{"part": "epochs", "run": long_run.name, **w} for w in loss_windows(long_run)]
    rows.append(dolly_scores(long_run.name, long_run.model, tok, d, long_run, epochs=epochs)[0])
    long_run.model.unload()
    prompt_too = dolly_lora(model, tok, d.train_rows, d.val_rows, cfg, name="LoRA, loss on the prompt too",
                            completion_only_loss=False, keep_best=False)
    row = dolly_scores(prompt_too.name, prompt_too.model, tok, d, prompt_too, epochs=d.sizes["epochs"])[0]
    row["validation loss"] = example_loss(response_losses(prompt_too.model, d.val_enc, tok))
    rows.append(row)
    prompt_too.model.unload()
    return rows


# --------------------------------------------------------------------------- human evaluation
def blind_rating(scored, rows, n: int = 10, seed: int = 0):
    """A form to rate `n` of the scored answers 1-5 without seeing which model wrote them (shuffled with `seed`, every
    model's answers together), then compare: who wrote each, and the Spearman correlation of your ratings with
    ROUGE-L, cosine and the judge. Returns the ipywidgets box; its `.ratings` maps a scored row's index to your
    rating."""
    import html

    import ipywidgets as w
    import pandas as pd
    from IPython.display import display

    if len(scored) == 0:
        raise ValueError("no scored answers to rate")
    picked = scored.sample(n=min(n, len(scored)), random_state=seed)
    buttons, items = {}, []
    for k, (index, r) in enumerate(picked.iterrows()):
        row = rows[int(r["item"])]
        buttons[index] = w.ToggleButtons(options=[1, 2, 3, 4, 5], value=None, style={"button_width": "32px"})
        items.append(w.VBox([w.HTML(f"<b>{k + 1}. {html.escape(row['instruction'])}</b><br><i>reference:</i> "
                                    f"{html.escape(row['response'])}<br><i>answer:</i> {html.escape(str(r['answer']))}"),
                             buttons[index]]))
    out, compare = w.Output(), w.Button(description="Compare", button_style="primary")

    def on_compare(_):
        ratings = {i: b.value for i, b in buttons.items() if b.value is not None}
        box.ratings = ratings
        out.clear_output()
        with out:
            if len(ratings) < 3:
                print(f"rate at least 3 answers first ({len(ratings)} rated)")
                return
            table = scored.loc[list(ratings)].assign(you=pd.Series(ratings))
            display(table[["model", "you", "rougeL", "cosine", "judge"]].round(3))
            print("Spearman correlation with your ratings:",
                  table[["you", "rougeL", "cosine", "judge"]].corr(method="spearman")["you"].drop("you").round(2).to_dict())

    compare.on_click(on_compare)
    box = w.VBox([*items, compare, out])
    box.ratings = {}
    return box
