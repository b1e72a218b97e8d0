"""Session 07: prompting, in-context examples, retrieval or fine-tuning? Measured on the same tasks.

- A standardized task (sentiment): `draw_shots`, `few_shot_prompt(s)`, `check_fits`,
  `label_word_scores` (zero-/k-shot prediction as the likelier label word), `kshot_eval`.
- A knowledge task (MedQuAD QA): `AnswerIndex` (embed every answer, `search` top-k), `recall_at_k`,
  `rag_row` (the retrieved passages go in the prompt's context), `qa_scores` (ROUGE-L, cosine, length, errors).
- Small vs large: `costs` runs `python -m ftkit.choose costs ROLE` in a fresh process for clean memory figures (on
  the GPU when there is one), next to `ftkit.train.memory_estimate`, the rule to check them against;
  `generation_speed`.

Generation, templates, training and the error tags come from session 05 (`ftkit.instruct`).
"""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import numpy as np
import torch

from . import instruct, models

LABEL_WORDS = ("negative", "positive")  # rotten_tomatoes label ids 0 and 1


# --------------------------------------------------------------------------- 1. a standardized task
def draw_shots(pool, k: int, seed: int) -> list[dict]:
    """k labelled examples drawn at random from `pool`, in random order (the order is part of the draw)."""
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k (examples in the prompt) must be a whole number >= 0, got {k!r}")
    if k > len(pool):
        raise ValueError(f"k={k} examples asked for, but the pool to draw them from has only {len(pool)}; "
                         f"lower k or pass a larger pool")
    return [pool[i] for i in random.Random(seed).sample(range(len(pool)), k)]


def few_shot_prompt(text: str, shots, tokenizer, template: str = "alpaca") -> str:
    """Session 05's sentiment prompt for `text`, preceded by the k solved examples as earlier turns of the same
    template (k=0: exactly session 05's prompt), so the model sees the answer format it is asked for."""
    turns = [({"instruction": instruct.SENTIMENT_INSTRUCTION.format(text=s["text"])}, LABEL_WORDS[s["label"]])
             for s in shots]
    query = {"instruction": instruct.SENTIMENT_INSTRUCTION.format(text=text)}
    if template == "chat":
        chat = [m for row, answer in turns for m in (*instruct.messages(row), {"role": "assistant", "content": answer})]
        return tokenizer.apply_chat_template(chat + instruct.messages(query), tokenize=False, add_generation_prompt=True)
    return "".join(instruct.render(row, tokenizer, template) + answer + "\n\n" for row, answer in turns) + \
        instruct.render(query, tokenizer, template)


def few_shot_prompts(texts, pool, k: int, seed: int, tokenizer, template: str = "alpaca") -> list[str]:
    """The exact prompt texts for `texts`, each with the same k examples drawn with `seed`."""
    shots = draw_shots(pool, k, seed)
    return [few_shot_prompt(t, shots, tokenizer, template) for t in texts]


def context_length(model) -> int:
    """How many tokens the model can attend to (its position embeddings)."""
    return int(model.config.max_position_embeddings)


def check_fits(prompts, tokenizer, limit: int, reserve: int = 8) -> list[int]:
    """Token counts of `prompts`; a ValueError names the count when the longest does not fit `limit`."""
    counts = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if counts and max(counts) + reserve > limit:
        raise ValueError(f"the longest prompt is {max(counts)} tokens (+{reserve} for the answer), over the model's "
                         f"context of {limit} tokens; use fewer examples (lower k) or shorter ones")
    return counts


def label_word_ids(tokenizer, words=LABEL_WORDS) -> list[list[int]]:
    """For each label word, the first tokens of its spellings (positive, Positive, " positive", " Positive"): the
    model may start its answer with any of them. No token may belong to two labels."""
    ids = [sorted({tokenizer(v, add_special_tokens=False)["input_ids"][0]
                   for v in (w, w.capitalize(), " " + w, " " + w.capitalize())}) for w in words]
    if any(set(a) & set(b) for i, a in enumerate(ids) for b in ids[i + 1:]):
        raise ValueError(f"the label words {list(words)} start with the same token; choose words whose first "
                         "tokens differ")
    return ids


def label_word_scores(model, tokenizer, prompts, words=LABEL_WORDS, batch_size: int = 8) -> np.ndarray:
    """log P(label word | prompt) for every prompt and label word: one forward pass, no generation.

    A label's probability is the sum over its spellings' first tokens (`label_word_ids`). The prediction is the
    likelier label, so the answer can never be unparseable. Prompts are left-padded, so the last position of
    every row is where the answer starts."""
    ids = label_word_ids(tokenizer, words)
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = models.on_device(tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt",
                                             padding=True, add_special_tokens=False), model)
            with torch.no_grad():
                last = model(**enc, logits_to_keep=1).logits[:, -1, :].float()  # the vocabulary at one position only
            logp = torch.log_softmax(last, dim=-1)
            out.append(torch.stack([logp[:, i].logsumexp(-1) for i in ids], dim=1).cpu().numpy())
    finally:
        tokenizer.padding_side = side
    return np.concatenate(out) if out else np.zeros((0, len(ids)))


# Zero-shot, the instruct model starts its answer with this sentence, not with the label word (its likeliest first
# token is "The"), so label words scored right after "### Response:" measure the format, not the sentiment.
ANSWER_PREFIX = "The sentiment of this movie review is"


def kshot_eval(model, tokenizer, rows, pool, k: int, seed: int = 0, template: str = "alpaca",
               answer_prefix: str = "") -> dict:
    """Accuracy, prompt tokens and milliseconds per prediction of k-shot label-word scoring on `rows` (text, label).
    `answer_prefix` is written at the start of the answer (prefilled) and the label word is scored after it."""
    prompts = [p + answer_prefix for p in few_shot_prompts([r["text"] for r in rows], pool, k, seed, tokenizer, template)]
    counts = check_fits(prompts, tokenizer, context_length(model))
    start = time.perf_counter()
    predicted = label_word_scores(model, tokenizer, prompts).argmax(axis=1)
    seconds = time.perf_counter() - start
    return {"k": k, "draw": seed, "accuracy": float(np.mean(predicted == np.array([r["label"] for r in rows]))),
            "prompt tokens": float(np.mean(counts)), "ms per prediction": 1000 * seconds / len(rows)}


# --------------------------------------------------------------------------- 2. a knowledge task
def check_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question is empty ({question!r}); type a question")
    return question.strip()


class AnswerIndex:
    """Every answer embedded once with the sentence model; `search` returns the top-k by cosine similarity."""

    def __init__(self, answers, sentence_model, batch_size: int = 32):
        self.answers = list(answers)
        if not self.answers:
            raise ValueError("the answer index needs at least one answer")
        self.model = sentence_model
        self.vectors = sentence_model.encode(self.answers, batch_size=batch_size, convert_to_numpy=True,
                                             normalize_embeddings=True)

    def search(self, questions, top_k: int) -> list[list[tuple[int, float]]]:
        """For each question, the top_k (answer position, cosine similarity) pairs, best first."""
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive whole number, got {top_k!r}")
        if top_k > len(self.answers):
            raise ValueError(f"top_k={top_k} but the index holds only {len(self.answers)} answers")
        questions = [check_question(q) for q in questions]
        sims = self.model.encode(questions, convert_to_numpy=True, normalize_embeddings=True) @ self.vectors.T
        best = np.argsort(-sims, axis=1, kind="stable")[:, :top_k]
        return [[(int(i), float(s[i])) for i in row] for row, s in zip(best, sims)]


def recall_at_k(index: AnswerIndex, questions, gold_answers, ks=(1, 3, 5, 10)) -> dict:
    """Share of questions whose gold answer is among the top k retrieved. Matched by text, because MedQuAD
    repeats a few answers word for word under other questions (and its ids are not unique)."""
    hits = index.search(questions, max(ks))
    return {f"recall@{k}": float(np.mean([gold in {index.answers[i] for i, _ in found[:k]}
                                          for found, gold in zip(hits, gold_answers)])) for k in ks}


RAG_INSTRUCTION = "Answer the question using the passages in the context.\n\nQuestion: {question}"


def rag_row(question: str, passages) -> dict:
    """An instruction row whose context holds the retrieved passages (Alpaca's ### Context: slot)."""
    context = "\n\n".join(f"Passage {i + 1}: {p}" for i, p in enumerate(passages))
    return {"instruction": RAG_INSTRUCTION.format(question=check_question(question)), "context": context}


def qa_scores(setup: str, answers, rows, sentence_model) -> "pd.DataFrame":  # noqa: F821
    """One row per answer: ROUGE-L, cosine to the reference, length in words, session 05's error tags."""
    import pandas as pd

    refs = [r["answer"] for r in rows]
    rouge = instruct.rouge_scores(answers, refs)
    cos = instruct.embedding_similarity(sentence_model, answers, refs)
    return pd.DataFrame([{"setup": setup, "rougeL": r["rougeL"], "cosine": c, "words": len(instruct.words(a)),
                          **instruct.tag_errors(a, row["question"], row["answer"])}
                         for a, row, r, c in zip(answers, rows, rouge, cos)])


# --------------------------------------------------------------------------- 3. small vs large
def generation_speed(model, tokenizer, new_tokens: int = 64) -> dict:
    """Greedy answer latency for one prompt, and tokens per second (EOS is suppressed to count every token)."""
    enc = models.on_device(tokenizer(instruct.prompt({"instruction": "Explain what a vaccine does."}),
                                     return_tensors="pt", add_special_tokens=False), model)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        seconds = time.perf_counter() - start
    made = out.shape[1] - enc["input_ids"].shape[1]
    return {"latency s (64 tokens)": seconds, "tokens/s": made / seconds}


def costs(role: str, name: str | None = None, profile: str | None = None, steps: int = 2, batch: int = 4,
          length: int = 128, timeout: float = 900) -> dict:
    """A role's model: parameters, checkpoint dtype and disk size, the memory to load it, and the peak memory of a few
    full and LoRA training steps, each next to `train.memory_estimate`'s figure for the same steps. On a GPU the
    memory is torch's allocated GPU memory, elsewhere the process RAM (the "memory measured" column says which).
    Each method runs in a fresh Python process, so nothing this kernel (or the other method) holds distorts the
    figures."""
    row = {}
    for method in ("LoRA", "full"):
        cmd = [sys.executable, "-m", "ftkit.choose", "costs", role, method, "--steps", str(steps), "--batch",
               str(batch), "--length", str(length)] + (["--name", name] if name else []) + \
              (["--profile", profile] if profile else [])
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"measuring {role} ({method}) failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        measured = json.loads(lines[-1])
        measured[f"{method} trainable"] = measured.pop("trainable")
        row = {**measured, **row} if method == "full" else measured    # load figures: the first process's
    return row


def disk_mb(path) -> float | None:
    """Size of a model folder's safetensors files in MB (None for a Hub id that is not a local folder)."""
    import os

    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if f.endswith(".safetensors")) / 2**20 if os.path.isdir(path) else None


def counted_costs(role: str, cfg, model, name: str | None = None) -> dict:
    """The cost-table row of a model this kernel already holds, on a machine too small for `costs`' extra
    processes: parameters, checkpoint dtype and disk size are counted; the memory columns stay empty (not measured),
    never guessed."""
    from .train import count_params

    path = models.resolve(role, cfg, name)
    return {"role": role, "model": models.describe(path), "parameters": count_params(model)[1],
            "checkpoint dtype": models.checkpoint_dtype(path), "disk MB": disk_mb(path),
            "memory measured": "not measured: small machine", "to load MB": None, "fine-tune LoRA MB": None,
            "fine-tune full MB": None, "setting": "memory not measured: small machine"}


def _measure_costs(role: str, method: str, name, profile, steps: int, batch: int, length: int) -> dict:
    """Runs in its own process (see `costs`): on the GPU if there is one (torch's allocated bytes), else on the CPU
    (process RSS sampled by ftkit.train.PeakMemory). The model loads in float32, as every model ftkit trains."""
    from contextlib import nullcontext
    from pathlib import Path

    from peft import LoraConfig, get_peft_model

    from .env import get_profile, quiet_logs
    from .train import PeakMemory, count_params, memory_estimate, mixed_precision

    quiet_logs()
    cfg = get_profile(profile)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    path = models.resolve(role, cfg, name)

    def load():
        if role in ("causal", "judge"):     # to be trained: the causal loader's float32, for the judge's model too
            return models.load_causal(cfg, path)[0]
        return models.load_classifier(["a", "b"], cfg, name)

    with PeakMemory(device) as loading:
        model = load().to(device)
        with torch.no_grad():       # safetensors maps the file lazily: one forward pass reads every weight
            model(input_ids=models.on_device(torch.randint(100, 1000, (1, 16)), model))
    folder = path if Path(path).is_dir() else models.cached_hub_snapshot(path)
    total = count_params(model)[1]
    row = {"role": role, "model": models.describe(path), "parameters": total,
           "checkpoint dtype": models.checkpoint_dtype(folder) if folder else None,
           "disk MB": disk_mb(folder) if folder else None,
           "memory measured": "GPU: torch allocated" if device == "cuda" else "process RAM (RSS)",
           "to load MB": loading.peak_mb}
    ids = torch.randint(100, 1000, (batch, length))
    batch_inputs = models.on_device({"input_ids": ids, "labels": ids if role in ("causal", "judge")
                                     else torch.zeros(batch, dtype=torch.long)}, model)
    precision = mixed_precision(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16 if precision["bf16"] else torch.float16) \
        if device == "cuda" else nullcontext()

    def train_steps(m):
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
        m.train()
        with PeakMemory(device) as peak:
            for _ in range(steps):
                with autocast:
                    loss = m(**batch_inputs).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        del opt
        return peak.peak_mb

    if method == "LoRA":
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32,
                                                 target_modules=models.lora_targets(model, "all-linear")))
    row["trainable"] = count_params(model)[0]
    estimate = memory_estimate(model, batch, length, mixed_precision=device == "cuda")
    row[f"fine-tune {method} MB"] = train_steps(model)
    row[f"estimate: fine-tune {method} MB"] = estimate["total MB"] - estimate["weights MB"]   # above the loaded model
    row["setting"] = (f"{steps} AdamW steps, batch {batch} x {length} tokens, float32 weights"
                      + (f", {'bf16' if precision['bf16'] else 'fp16'} autocast on the GPU" if device == "cuda" else
                         ", on the CPU"))
    return row


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ftkit.choose")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("costs", help="measure a model role's size and memory, print one JSON line")
    c.add_argument("role")
    c.add_argument("method", choices=["LoRA", "full"])
    c.add_argument("--name")
    c.add_argument("--profile")
    c.add_argument("--steps", type=int, default=2)
    c.add_argument("--batch", type=int, default=4)
    c.add_argument("--length", type=int, default=128)
    args = parser.parse_args(argv)
    import ftkit  # noqa: F401  (sets offline mode before any Hub access)

    print(json.dumps(_measure_costs(args.role, args.method, args.name, args.profile, args.steps, args.batch, args.length)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
