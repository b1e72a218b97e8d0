"""Session 05: instruction tuning end to end.

- Data: `check_instruction_data`, `quality_flags` / `quality_report` / `clean`, templates (`prompt`, `messages`),
  `token_lengths` and `padding_waste`.
- The loss: `label_example` (prompt tokens get -100), `hand_loss`, `sft` (trl's SFTTrainer, completion-only loss).
- Generation and held-out loss: `generate`, `held_out_loss` (session 06 and 07 import these).
- Evaluation: `rouge_scores`, `embedding_similarity`, the judge (`judge_scores`, `judge_pairs`, `parse_score`,
  `parse_choice`), `corrupt`, error taggers (`tag_errors`).
- Forgetting: `sentiment_instructions`, `sentiment_accuracy`, `general_accuracy`, `forgetting_check` (per-epoch
  trajectory; stops a run at a matched task gain).
"""
from __future__ import annotations

import random
import re
import time
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache

import torch

from . import models

COLUMNS = ("instruction", "response")
TEMPLATE = "### Instruction:\n{instruction}\n{context_block}### Response:\n"  # Alpaca-style
TEMPLATES = ("alpaca", "chat")
WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return WORD.findall(str(text).lower())


# --------------------------------------------------------------------------- data checks
def check_instruction_data(ds) -> None:
    """A clear ValueError for data that cannot be instruction-tuned on (names the column or row)."""
    splits = ds.items() if hasattr(ds, "items") else [("data", ds)]
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
    """A DataFrame: one row per check with its count and one example, plus the category mix."""
    import pandas as pd

    rows = list(ds)
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
    """Drop the rows that any quality check flags."""
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
    that is every row is a ValueError; otherwise the number of such rows is printed once per split."""
    check_instruction_data(ds)
    cols = next(iter(ds.values())).column_names if hasattr(ds, "values") else ds.column_names
    out = ds.map(lambda row: label_example(row, tokenizer, template, max_length), remove_columns=cols)
    for split, part in (out.items() if hasattr(out, "items") else [("data", out)]):
        report_lost_responses(sum(all(l == -100 for l in labels) for labels in part["labels"]), len(part),
                              max_length, f"split {split!r}")
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


def held_out_loss(model, dataset, tokenizer, batch_size: int | None = None) -> float:
    """Mean token loss on the responses of a held-out split (tokenized with `tokenize_instructions`).

    Batches of 8, or of 1 on a small-memory machine: the logits over the 49,152-token vocabulary take 200 MB per
    1,000 tokens, and the loss holds a few copies of them.
    A split with no response token left (every response cut off by max_length) is a ValueError, not a number."""
    from torch.utils.data import DataLoader

    from .env import is_small

    batch_size = batch_size or (1 if is_small() else 8)

    model.eval()
    total, count = 0.0, 0
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=causal_collator(tokenizer))
    with torch.no_grad():
        for batch in loader:
            n = int((batch["labels"][:, 1:] != -100).sum())         # counted on the CPU, before the move
            if n == 0:          # every response cut off by max_length: nothing to score (the model's mean is 0/0)
                continue
            total += float(model(**models.on_device(batch, model)).loss) * n
            count += n
    if count == 0:
        raise ValueError(f"none of the {len(dataset)} held-out rows has a response token to score (each was cut off "
                         "by max_length, or the split is empty); tokenize with a larger max_length")
    return total / count


# --------------------------------------------------------------------------- training with trl
def sft_dataset(ds, template: str = "alpaca"):
    """trl's prompt-completion format: conversational messages for "chat", plain strings for "alpaca"."""
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


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sft(model, tokenizer, train_rows, cfg, *, name: str, template: str = "alpaca", lora_rank: int | None = None,
        max_length: int = 256, lora_alpha: float | None = None, lora_targets=None, **arg_overrides):
    """Fine-tune with trl's SFTTrainer on prompt-completion pairs, loss on the completion only.

    `lora_rank=None` trains every weight; a rank trains LoRA adapters (alpha 2 x rank unless given) on the
    attention and MLP projections (or `lora_targets`) instead; peft injects them into `model` in place.
    Returns a RunResult.

    trl cuts each row to its first `max_length` tokens and drops the rows left with no response token. Before
    training, `check_responses_fit` counts them exactly: when it is every row, a ValueError names the max_length
    that keeps them; when it is some, one line says how many and `extra["rows without response tokens"]` records it.
    """
    from trl import SFTConfig, SFTTrainer

    from .train import fit

    peft_config = None
    if lora_rank is not None:
        from peft import LoraConfig

        if not isinstance(lora_rank, int) or lora_rank <= 0:
            raise ValueError(f"lora_rank must be a positive integer or None (full fine-tuning), got {lora_rank!r}")
        peft_config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha or 2 * lora_rank, lora_dropout=0.0,
                                 task_type="CAUSAL_LM", target_modules=list(lora_targets or LORA_TARGETS))
    rows = sft_dataset(train_rows, template)
    lost = check_responses_fit(rows, tokenizer, max_length)
    result = fit(model, rows, None, cfg, name=name, tokenizer=tokenizer,
                 trainer_class=SFTTrainer, args_class=SFTConfig, trainer_kwargs={"peft_config": peft_config},
                 max_length=max_length, completion_only_loss=True, packing=False,
                 **arg_overrides)
    if lost:
        result.extra["rows without response tokens"] = lost
    return result


# --------------------------------------------------------------------------- generation
def generate(model, tokenizer, rows, max_new_tokens: int = 48, template: str = "alpaca", batch_size: int = 8) -> list[str]:
    """Greedy answers for `rows` (dicts with an instruction), batched with left padding."""
    texts = [render(row, tokenizer, template) for row in rows]
    return complete(model, tokenizer, texts, max_new_tokens, batch_size)


# On a small machine at most 4 prompts are answered at once: in session 05's cpu profile under 2 GB, batches of 8
# (prompts up to 256 tokens, 64 new) swung the kernel's RSS by up to 570 MB, and the notebook peaked at 1,922 MB
# while its panel generated and judged answers.
SMALL_MEMORY_GENERATE_BATCH = 4


def complete(model, tokenizer, texts, max_new_tokens: int = 48, batch_size: int = 8) -> list[str]:
    """Greedy continuations of raw prompt texts (left padding, so every row ends where generation starts)."""
    from .env import is_small
    from .train import release_freed_memory

    small = is_small()
    if small:
        batch_size = min(batch_size, SMALL_MEMORY_GENERATE_BATCH)
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outs = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            enc = models.on_device(enc, model)
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            outs += [t.strip() for t in tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:],
                                                               skip_special_tokens=True)]
            if small:           # hand the batch's freed buffers back, so the next batch starts from the floor
                release_freed_memory()
    finally:
        tokenizer.padding_side = side
    return outs


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
    return (a * b).sum(-1).tolist()


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


def _ask(judge, tokenizer, contents, max_new_tokens: int, prefix: str, batch_size: int = 8) -> list[str]:
    """The judge's replies. Its turn is started with `prefix` ("Score:"), a common way to steer the
    format; the prefix is part of the reply that gets parsed."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
             if getattr(tokenizer, "chat_template", None) else c + "\n" for c in contents]
    return [prefix + " " + r for r in complete(judge, tokenizer, [t + prefix for t in texts], max_new_tokens, batch_size)]


def judge_scores(judge, tokenizer, instructions, references, answers) -> dict:
    """Rubric scores 1-5 per answer. A reply that does not parse is None and is counted, never guessed."""
    replies = _ask(judge, tokenizer, [SCORE_PROMPT.format(instruction=_clip(i), reference=_clip(r), answer=_clip(a))
                                      for i, r, a in zip(instructions, references, answers)], max_new_tokens=6,
                   prefix="Score:")
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


def judge_pairs(judge, tokenizer, instructions, references, kinds=CORRUPTIONS, seed: int = 0):
    """Reference vs each corruption, asked in both orders. Returns a DataFrame per pair:
    the judge's pick in each order, whether it preferred the reference, and whether it agreed with itself."""
    import pandas as pd

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
    replies = _ask(judge, tokenizer, prompts, max_new_tokens=4, prefix="Answer:")
    for k, r in enumerate(rows):
        picks = []
        for reply in replies[2 * k:2 * k + 2]:
            try:
                picks.append(parse_choice(reply))
            except ValueError:
                picks.append(None)
        r["pick (ref=A)"], r["pick (ref=B)"] = picks
        r["parsed"] = None not in picks
        r["prefers reference"] = (picks[0] == "A") + (picks[1] == "B")  # 0, 1 or 2 of the two orders
        r["consistent"] = r["parsed"] and picks[0] != picks[1]  # the same answer wins in both orders
    return pd.DataFrame(rows)


def judge_reliability(pairs) -> dict:
    """Summary of `judge_pairs`: accuracy over both orders, self-agreement, and the share of 'A' picks."""
    if len(pairs) == 0:
        raise ValueError("no judged pairs: judge_pairs needs at least one instruction and reference")
    picks = pairs[["pick (ref=A)", "pick (ref=B)"]].to_numpy().ravel()
    parsed = [p for p in picks if p is not None]
    return {"pairs": len(pairs), "prefers reference %": 100 * pairs["prefers reference"].sum() / (2 * len(pairs)),
            "consistent when swapped %": 100 * pairs["consistent"].mean(),
            "picks A %": 100 * sum(p == "A" for p in parsed) / max(len(parsed), 1),
            "parse failures": int(sum(p is None for p in picks))}


# --------------------------------------------------------------------------- error analysis
@lru_cache(maxsize=1)
def vocabulary() -> frozenset:
    """Every word in the data pack's English text: a spelling list that needs no download."""
    from . import data

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
    """A sentiment Dataset (text, label) written as instruction/response pairs."""
    from .data import require_columns

    require_columns(ds, ["text", "label"], "sentiment data")
    return ds.map(lambda r: {"instruction": SENTIMENT_INSTRUCTION.format(text=r["text"]), "context": "",
                             "response": label_names[r["label"]]}, remove_columns=ds.column_names)


def parse_sentiment(answer: str) -> str | None:
    """'positive' or 'negative' when the answer names exactly one of them, else None (unparsed)."""
    found = {w for w in words(answer) if w in ("positive", "negative")}
    return found.pop() if len(found) == 1 else None


def sentiment_accuracy(model, tokenizer, rows, template: str = "alpaca") -> dict:
    """Accuracy of the generated, parsed label; an unparsed answer counts as wrong and is reported."""
    rows = list(rows)
    if not rows:
        raise ValueError("no sentiment rows to score")
    parsed = [parse_sentiment(a) for a in generate(model, tokenizer, rows, max_new_tokens=8, template=template,
                                                     batch_size=16)]
    right = sum(p == r["response"] for p, r in zip(parsed, rows))
    return {"task accuracy": right / len(rows), "task unparsed": sum(p is None for p in parsed)}


def general_accuracy(model, tokenizer, template: str = "alpaca", questions=GENERAL_QUESTIONS) -> dict:
    """Share of the general questions whose generated answer contains an accepted answer."""
    if not questions:
        raise ValueError("no questions to ask")
    answers = generate(model, tokenizer, [{"instruction": q} for q, _ in questions], max_new_tokens=16,
                       template=template, batch_size=10)
    hits = [any(re.search(rf"\b{re.escape(k)}\b", a.lower()) for k in keys) for a, (_, keys) in zip(answers, questions)]
    return {"general QA": sum(hits) / len(hits), "answers": answers}


def forgetting_check(tokenizer, task_rows, holdout, template: str = "alpaca", stop_at: float | None = None):
    """A TrainerCallback that measures learning and forgetting before training and after every epoch: task
    accuracy on `task_rows` (validation rows, never the test rows) and the loss on `holdout` (tokenized dolly
    responses). Its `.history` is the run's learn-vs-forget trajectory. With `stop_at`, training stops at the
    first epoch whose task accuracy reaches it: how a LoRA run is matched to full fine-tuning's task gain."""
    from transformers import TrainerCallback

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
            self.measure(model, 0)

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


def score_answers(name, answers, rows, sentence_model, judge, judge_tokenizer) -> "pd.DataFrame":  # noqa: F821
    """One row per holdout answer: ROUGE-1/2/L, embedding cosine, judge score (None = unparsed), error tags.
    `judge()` is a context that yields the judge model (e.g. `lambda: as_base(lora_model)`)."""
    import pandas as pd

    refs, ins = [r["response"] for r in rows], [r["instruction"] for r in rows]
    rouge = rouge_scores(answers, refs)
    cos = embedding_similarity(sentence_model, answers, refs)
    with judge() as j:
        judged = judge_scores(j, judge_tokenizer, ins, refs, answers)
    out = pd.DataFrame({"model": name, "item": range(len(rows)), "answer": answers,
                        "rouge1": [r["rouge1"] for r in rouge], "rouge2": [r["rouge2"] for r in rouge],
                        "rougeL": [r["rougeL"] for r in rouge], "cosine": cos, "judge": judged["scores"],
                        "judge reply": judged["replies"]})
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
        row = {"model": name, "answers": len(part), "judge parse failures": int(part["judge"].isna().sum())}
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
    """Spearman rank correlation between ROUGE-L, cosine and the judge over all scored answers."""
    return scored[["rougeL", "cosine", "judge"]].dropna().corr(method="spearman")
