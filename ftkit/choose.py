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

import copy
import json
import random
import subprocess
import sys
import time

import numpy as np
import torch

from . import instruct, models
from .env import is_small
from .train import release_freed_memory

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


def check_instruction(instruction: str) -> str:
    if not isinstance(instruction, str) or "{text}" not in instruction:
        raise ValueError(f"the instruction must be a string with a {{text}} slot where the review goes, got "
                         f"{instruction!r}; e.g. 'Is this review positive or negative?\\n\\nReview: {{text}}'")
    return instruction


def few_shot_prompt(text: str, shots, tokenizer, template: str = "alpaca",
                    instruction: str = instruct.SENTIMENT_INSTRUCTION) -> str:
    """Session 05's sentiment prompt for `text` (or `instruction`, a string with a {text} slot), preceded by the k
    solved examples as earlier turns of the same template (k=0: exactly session 05's prompt), so the model sees the
    answer format it is asked for."""
    check_instruction(instruction)
    turns = [({"instruction": instruction.format(text=s["text"])}, LABEL_WORDS[s["label"]]) for s in shots]
    query = {"instruction": instruction.format(text=text)}
    if template == "chat":
        chat = [m for row, answer in turns for m in (*instruct.messages(row), {"role": "assistant", "content": answer})]
        return tokenizer.apply_chat_template(chat + instruct.messages(query), tokenize=False, add_generation_prompt=True)
    return "".join(instruct.render(row, tokenizer, template) + answer + "\n\n" for row, answer in turns) + \
        instruct.render(query, tokenizer, template)


def few_shot_prompts(texts, pool, k: int, seed: int, tokenizer, template: str = "alpaca",
                     instruction: str = instruct.SENTIMENT_INSTRUCTION) -> list[str]:
    """The exact prompt texts for `texts`, each with the same k examples drawn with `seed`."""
    shots = draw_shots(pool, k, seed)
    return [few_shot_prompt(t, shots, tokenizer, template, instruction) for t in texts]


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


def batches_by_length(lengths, batch_size: int) -> list[list[int]]:
    """Positions 0..n-1 in batches of `batch_size`, longest first: sequences of similar length share a batch, so
    little compute goes to padding. Scores are put back in the original order by these positions."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def shared_prefix_length(token_lists) -> int:
    """How many tokens every list starts with; at most the shortest length minus one, so that every prompt keeps
    at least one token of its own (the one whose next-token scores are read)."""
    token_lists = [list(t) for t in token_lists]
    if not token_lists or not all(token_lists):
        return 0
    n = min(len(t) for t in token_lists) - 1
    first = token_lists[0]
    for other in token_lists[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return n


def prefix_cache(model, prefix_ids):
    """The keys and values of every layer for `prefix_ids` (a list of token ids), computed once: transformers'
    cache object (a `DynamicCache` for SmolLM2), ready to be copied for each batch that continues the prefix."""
    ids = models.on_device(torch.tensor([list(prefix_ids)]), model)
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=True, logits_to_keep=1).past_key_values


def next_token_logits(model, token_lists, pad_id: int, prefix=None, prefix_length: int = 0) -> torch.Tensor:
    """Logits over the vocabulary for the token after each of `token_lists` (one batch, left-padded here), float32,
    shape (batch, vocabulary).

    With `prefix` (a `prefix_cache` of `prefix_length` tokens), each list is the continuation of that prefix: the
    cache is copied and repeated for the batch (the model appends to its cache, and the prefix is reused by the next
    batch), and the positions continue after the prefix, so the scores equal those of the whole prompts."""
    width = max(len(t) for t in token_lists)
    ids = torch.tensor([[pad_id] * (width - len(t)) + list(t) for t in token_lists])
    mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in token_lists])
    positions = prefix_length + (mask.cumsum(-1) - 1).clamp(min=0)        # as if each list followed the prefix alone
    if prefix is not None:
        mask = torch.cat([torch.ones(len(token_lists), prefix_length, dtype=mask.dtype), mask], dim=1)
    inputs = models.on_device({"input_ids": ids, "attention_mask": mask, "position_ids": positions}, model)
    with torch.inference_mode():
        cache = None
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(len(token_lists))
        out = model(**inputs, past_key_values=cache, use_cache=cache is not None, logits_to_keep=1)
    return out.logits[:, -1, :].float()


def label_word_scores(model, tokenizer, prompts, words=LABEL_WORDS, batch_size: int = 8,
                      cache_prefix: bool = True) -> np.ndarray:
    """log P(label word | prompt) for every prompt and label word, shape (prompts, words): one forward pass per
    batch, no generation.

    A label's probability is the sum over its spellings' first tokens (`label_word_ids`). The prediction is the
    likelier label, so the answer can never be unparseable. Prompts are scored longest first in batches
    (`batches_by_length`), left-padded, so the last position of every row is where the answer starts.

    `cache_prefix`: the tokens all prompts share (k-shot: the instruction and the k examples) go through the model
    once (`prefix_cache`); each batch runs only its own tokens on a copy of that cache (`next_token_logits`). The
    scores equal those without the cache up to float rounding (tests/test_choose.py); the time falls with the share
    of shared tokens. Hosted LLM APIs do the same with a prompt prefix sent again ("prompt caching"), and charge
    less for the cached tokens."""
    ids = label_word_ids(tokenizer, words)
    prompts = list(prompts)
    out = np.zeros((len(prompts), len(ids)))
    if not prompts:
        return out
    tokens = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    shared = shared_prefix_length(tokens) if cache_prefix else 0
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    small = is_small()
    prefix = prefix_cache(model, tokens[0][:shared]) if shared else None
    for batch in batches_by_length([len(t) for t in tokens], batch_size):
        logp = torch.log_softmax(next_token_logits(model, [tokens[i][shared:] for i in batch], pad_id, prefix,
                                                   shared), dim=-1)
        out[batch] = torch.stack([logp[:, i].logsumexp(-1) for i in ids], dim=1).cpu().numpy()
        if small:           # hand the batch's freed buffers back (glibc keeps them), so RSS stays at the floor
            release_freed_memory()
    return out


# Zero-shot, the instruct model starts its answer with this sentence, not with the label word (its likeliest first
# token is "The"), so label words scored right after "### Response:" measure the format, not the sentiment.
ANSWER_PREFIX = "The sentiment of this movie review is"


class Scored(dict):
    """A results row (a dict: accuracy, tokens, time) that also keeps what it was computed from: `.prompts`,
    `.labels` and `.scores` (log P of each label word, shape (prompts, labels))."""

    def __init__(self, row: dict, prompts, labels, scores):
        super().__init__(row)
        self.prompts, self.labels, self.scores = list(prompts), np.asarray(labels), np.asarray(scores)

    @property
    def predicted(self) -> np.ndarray:
        return self.scores.argmax(axis=1)


def kshot_eval(model, tokenizer, rows, pool, k: int, seed: int = 0, template: str = "alpaca",
               answer_prefix: str = "", instruction: str = instruct.SENTIMENT_INSTRUCTION,
               cache_prefix: bool = True) -> Scored:
    """Accuracy, prompt tokens and milliseconds per prediction of k-shot label-word scoring on `rows` (text, label),
    as a `Scored` row. `answer_prefix` is written at the start of the answer (prefilled) and the label word is scored
    after it; `instruction` replaces session 05's sentiment instruction (a {text} slot for the review);
    `cache_prefix`: see `label_word_scores` (the time includes computing the shared prefix once)."""
    rows = list(rows)
    if not rows:
        raise ValueError("no rows to score; pass at least one (text, label) row")
    prompts = [p + answer_prefix for p in few_shot_prompts([r["text"] for r in rows], pool, k, seed, tokenizer,
                                                             template, instruction)]
    counts = check_fits(prompts, tokenizer, context_length(model))
    shared = shared_prefix_length(tokenizer(prompts, add_special_tokens=False)["input_ids"]) if cache_prefix else 0
    labels = np.array([r["label"] for r in rows])
    start = time.perf_counter()
    scores = label_word_scores(model, tokenizer, prompts, cache_prefix=cache_prefix)
    seconds = time.perf_counter() - start
    row = {"k": k, "draw": seed, "accuracy": float(np.mean(scores.argmax(axis=1) == labels)),
           "prompt tokens": float(np.mean(counts)), "cached prefix tokens": shared,
           "ms per prediction": 1000 * seconds / len(rows)}
    return Scored(row, prompts, labels, scores)


# The k-shot sweep: every k, several draws of the examples. Recorded (`python -m ftkit record choose_kshot`), since
# all of it takes minutes; the notebook runs two points live and checks them against the recording.
def kshot_settings(profile) -> dict:
    """Everything that decides the k-shot sweep's rows, for a profile (`ftkit.results.SWEEPS["choose_kshot"]`)."""
    name = profile.name
    return {"model": profile.models["causal"], "test reviews": {"smoke": 8, "cpu": 100, "gpu": 1000}[name],
            "pool": 64, "k": [0, 1, 2, 4, 8], "draws": {"smoke": 1, "cpu": 5, "gpu": 5}[name],
            "instruction": instruct.SENTIMENT_INSTRUCTION, "template": "alpaca", "label words": list(LABEL_WORDS),
            "test rows": "rotten_tomatoes test, data.take(n, stratify='label')",
            "pool rows": "rotten_tomatoes train, data.take(pool, seed=1)"}


def kshot_rows(settings: dict) -> tuple[list[dict], list[dict]]:
    """(test rows, pool) of the k-shot sweep: the held-out reviews every approach is scored on, and the training
    reviews the k examples are drawn from."""
    from . import data

    rt = data.load("rotten_tomatoes")
    return (list(data.take(rt["test"], settings["test reviews"], stratify="label")),
            list(data.take(rt["train"], settings["pool"], seed=1)))


def kshot_sweep(cfg) -> list[dict]:
    """Every k of `kshot_settings`, with `draws` draws of the examples for k > 0 (one for k = 0, which has none):
    one `kshot_eval` row each."""
    settings = kshot_settings(cfg.profile)
    model, tokenizer = models.load_causal(cfg)
    test_rows, pool = kshot_rows(settings)
    return [dict(kshot_eval(model, tokenizer, test_rows, pool, k, draw, settings["template"],
                            instruction=settings["instruction"]))
            for k in settings["k"] for draw in (range(1) if k == 0 else range(settings["draws"]))]


# --------------------------------------------------------------------------- 2. a knowledge task
def check_question(question) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question is empty ({question!r}); type a question")
    return question.strip()


class AnswerIndex:
    """Every answer embedded once with the sentence model; `search` returns the top-k by cosine similarity."""

    def __init__(self, answers, sentence_model, batch_size: int = 32, cache: bool = True):
        self.answers = list(answers)
        if not self.answers:
            raise ValueError("the answer index needs at least one answer")
        self.model = sentence_model
        path = self._cache_path(sentence_model) if cache else None
        if path is not None and path.is_file():
            self.vectors = np.load(path, allow_pickle=False)
            return
        if is_small():      # start from the floor: 07 peaked at 1,826 MB here, over freed memory of earlier cells
            release_freed_memory()
        self.vectors = sentence_model.encode(self.answers, batch_size=batch_size, convert_to_numpy=True,
                                             normalize_embeddings=True)
        if is_small():
            release_freed_memory()      # the encoding's freed activations, back to the OS before the LM runs again
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, self.vectors, allow_pickle=False)
            tmp.replace(path)

    def _cache_path(self, sentence_model):
        """The vectors' file in ftkit's cache, keyed by the model (its folder or Hub id and max length) and the exact
        answers, as `tuning.embed` keys its cache: a second run of the notebook loads them instead of embedding
        again. None for a model without a name (nothing safe to key by)."""
        import hashlib

        name = getattr(getattr(sentence_model[0], "auto_model", None), "name_or_path", None) \
            if hasattr(sentence_model, "__getitem__") else None
        if not name:
            return None
        key = hashlib.sha256("\x00".join([str(name), str(getattr(sentence_model, "max_seq_length", "")),
                                          *self.answers]).encode()).hexdigest()[:20]
        return models.cache_dir() / "answer_index" / f"{key}.npy"

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


def generate_by_length(model, tokenizer, rows, max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """`instruct.generate`'s greedy answers for `rows`, in their order, generated longest prompt first: prompts of
    similar length share a batch, so little time goes to padding (RAG prompts differ by hundreds of tokens)."""
    rows = list(rows)
    lengths = [len(tokenizer(instruct.render(r, tokenizer), add_special_tokens=False)["input_ids"]) for r in rows]
    order = [i for batch in batches_by_length(lengths, batch_size) for i in batch]
    answers = instruct.generate(model, tokenizer, [rows[i] for i in order], max_new_tokens, batch_size=batch_size)
    out = [""] * len(rows)
    for i, answer in zip(order, answers):
        out[i] = answer
    return out


def bootstrap_mean(values, seed: int = 0, draws: int = 2000) -> dict:
    """Mean of `values` with its 95% bootstrap interval (percentiles of the means of `draws` resamples, with
    replacement, of the same size). The spread is over which items were drawn: with 30 items it is wide."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        raise ValueError("no values to average (all missing); score at least one item")
    means = np.random.default_rng(seed).choice(x, size=(draws, len(x))).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(x.mean()), "low": float(low), "high": float(high), "n": int(len(x))}


def paired_difference(a, b, seed: int = 0, draws: int = 2000) -> dict:
    """Mean of a - b over the same items (e.g. the same questions answered two ways), with its 95% bootstrap
    interval. `shown`: "+0.027 (-0.010 to +0.064)". `clear`: the interval excludes 0, so the sign is not a tie."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items on both sides: got {len(a)} and {len(b)}")
    d = bootstrap_mean(a - b, seed, draws)
    d["clear"] = d["low"] > 0 or d["high"] < 0
    d["shown"] = f"{d['mean']:+.3f} ({d['low']:+.3f} to {d['high']:+.3f})"
    return d


def knowledge_sets(train_split, test_split, tuned_ids, n: int, seed: int = 0) -> dict:
    """Three sets of reference answers for a teacher-forced knowledge test of a model fine-tuned on the training
    pairs `tuned_ids` (their "id" values), n answers each:

    * "trained": answers it was trained on (memorised text);
    * "seen focus, new question": other questions of the training split about a focus (disease) it was trained on,
      e.g. "How is X treated?" when "What are the symptoms of X?" was trained: facts it could have learned;
    * "unseen focus": the test split, whose diseases never appear in training: only the answers' form can help.

    Encoded knowledge shows as the "seen focus" loss falling by more than the "unseen focus" loss."""
    tuned_ids = set(tuned_ids)
    trained = [r for r in train_split if r["id"] in tuned_ids]
    focuses = {r["focus"] for r in trained}
    seen = [r for r in train_split if r["focus"] in focuses and r["id"] not in tuned_ids]
    sets = {"trained": trained, "seen focus, new question": seen, "unseen focus": list(test_split)}
    for name, rows in sets.items():
        if len(rows) < n:
            raise ValueError(f"the knowledge set {name!r} has {len(rows)} answers, fewer than n={n}; lower n or "
                             "train on more pairs")
    return {name: [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]
            for name, rows in sets.items()}


def answer_losses(model, tokenizer, rows, max_length: int) -> np.ndarray:
    """Per answer, the mean token loss (teacher forcing: one forward pass, no generation) of the reference answer
    after its question, in session 05's template, cut at `max_length` tokens: `instruct.held_out_loss` one answer
    at a time. Lower means the model finds the answer's words likelier."""
    from datasets import Dataset

    pairs = Dataset.from_list([{"instruction": r["question"], "context": "", "response": r["answer"]} for r in rows])
    tokenized = instruct.tokenize_instructions(pairs, tokenizer, max_length)
    return np.array([instruct.held_out_loss(model, tokenized.select([i]), tokenizer, batch_size=1)
                     for i in range(len(tokenized))])


def qa_scores(setup: str, answers, rows, sentence_model) -> "pd.DataFrame":  # noqa: F821
    """One row per answer: ROUGE-L, cosine to the reference, length in words, session 05's error tags."""
    import pandas as pd

    refs = [r["answer"] for r in rows]
    rouge = instruct.rouge_scores(answers, refs)
    cos = instruct.embedding_similarity(sentence_model, answers, refs)
    return pd.DataFrame([{"setup": setup, "rougeL": r["rougeL"], "cosine": c, "words": len(instruct.words(a)),
                          **instruct.tag_errors(a, row["question"], row["answer"])}
                         for a, row, r, c in zip(answers, rows, rouge, cos)])


# The medical-QA comparison: closed book, RAG, LoRA on other diseases (+ RAG), and the teacher-forced knowledge test
# before and after LoRA. Recorded (`python -m ftkit record choose_medqa`): its LoRA run and four answer sets take
# minutes on 2 cores. The notebook recomputes the closed-book answers and the losses before LoRA, checks them against
# the recording, and draws the rest from it.
def medqa_settings(profile) -> dict:
    """Everything that decides the medical-QA rows, for a profile (`ftkit.results.SWEEPS["choose_medqa"]`); a
    profile other than smoke, cpu or gpu is a KeyError. The models are the profile's ("model" records which)."""
    name = profile.name
    return {"model": profile.models["causal"], "sentence model": profile.models["sentence"],
            "test questions": {"smoke": 4, "cpu": 24, "gpu": 120}[name],
            "training pairs": {"smoke": 8, "cpu": 80, "gpu": 1500}[name],
            "answers per knowledge set": {"smoke": 2, "cpu": 20, "gpu": 60}[name], "knowledge seed": 0,
            "max length": {"smoke": 128, "cpu": 160, "gpu": 512}[name],
            "new tokens": {"smoke": 16, "cpu": 64, "gpu": 160}[name], "generation batch": 8,
            "top k": 3, "rank": 16, "lora alpha": "2 x rank (instruct.sft)", "lora targets": "all-linear (instruct.sft)",
            "learning rate": 5e-4, "batch": {"smoke": 4, "cpu": 8, "gpu": 16}[name],
            "max steps": {"smoke": 2, "cpu": -1, "gpu": -1}[name], "epochs": 1, "template": "alpaca",
            "rag instruction": RAG_INSTRUCTION,
            "test rows": "medquad_qa test, data.take(n, seed=0)", "training rows": "medquad_qa train, data.take(n, seed=0)",
            "index": "every answer of both splits" if name != "smoke" else "the test answers + 60 training answers"}


def medqa_rows(settings: dict):
    """(qa, test rows, training rows, index answers) of the medical-QA comparison, for `medqa_settings`. The index
    holds the gold answer of every test question (in the smoke profile a small index, so it builds in seconds)."""
    from . import data

    qa = data.load("medquad_qa")
    test = list(data.take(qa["test"], settings["test questions"], seed=0))
    train = data.take(qa["train"], settings["training pairs"], seed=0)
    if settings["index"].startswith("every"):
        answers = list(qa["train"]["answer"]) + list(qa["test"]["answer"])
    else:
        answers = [r["answer"] for r in test] + list(data.take(qa["train"], 60, seed=1)["answer"])
    return qa, test, train, answers


MEDQA_SETUPS = ("closed book", "RAG", "fine-tuned", "fine-tuned + RAG")


def medqa_prompts(index: "AnswerIndex", test_rows, top_k: int) -> tuple[list[dict], list[dict]]:
    """(closed-book rows, RAG rows): the same questions alone, and with their top_k retrieved passages."""
    questions = [r["question"] for r in test_rows]
    rag = [rag_row(q, [index.answers[i] for i, _ in hits]) for q, hits in zip(questions, index.search(questions, top_k))]
    return closed_book_rows(test_rows), rag


def closed_book_rows(test_rows) -> list[dict]:
    """The test questions alone, as instruction rows: what the model answers from its weights."""
    return [{"instruction": r["question"]} for r in test_rows]


def medqa_base_side(model, tokenizer, qa, test_rows, train_rows, settings: dict) -> dict:
    """What the base model contributes, recorded and recomputed live alike: its closed-book answers to the test
    questions, and the `knowledge_sets` (for LoRA on `train_rows`) with each answer's loss before LoRA.
    {"closed book": [answer, ...], "knowledge": {set: rows}, "before": {set: per-answer losses}}."""
    s = settings
    knowledge = knowledge_sets(qa["train"], qa["test"], train_rows["id"], n=s["answers per knowledge set"],
                               seed=s["knowledge seed"])
    return {"closed book": generate_by_length(model, tokenizer, closed_book_rows(test_rows), s["new tokens"],
                                              s["generation batch"]),
            "knowledge": knowledge,
            "before": {name: answer_losses(model, tokenizer, rows, s["max length"]) for name, rows in knowledge.items()}}


def medqa_sweep(cfg, settings: dict | None = None) -> list[dict]:
    """The medical-QA comparison at `medqa_settings(cfg.profile)` (or `settings`, e.g. smaller), with cfg's models,
    as rows by "part":

    * "answer": the greedy answer of each setup in `MEDQA_SETUPS` to each test question ("question": its position);
    * "knowledge": per reference answer of each `knowledge_sets` set, its mean token loss before and after LoRA;
    * "training": the LoRA run on the training pairs (other diseases than the test ones): pairs, seconds, loss."""
    s = settings or medqa_settings(cfg.profile)
    model, tok = models.load_causal(cfg)
    qa, test_rows, train_rows, index_answers = medqa_rows(s)
    closed, rag = medqa_prompts(AnswerIndex(index_answers, models.load_sentence_model(cfg)), test_rows, s["top k"])
    base = medqa_base_side(model, tok, qa, test_rows, train_rows, s)
    answers = {"closed book": base["closed book"],
               "RAG": generate_by_length(model, tok, rag, s["new tokens"], s["generation batch"])}
    pairs = [{"instruction": r["question"], "context": "", "response": r["answer"]} for r in train_rows]
    tuned = instruct.sft(model, tok, pairs, cfg, name="LoRA on medical QA", lora_rank=s["rank"],
                         max_length=s["max length"], num_train_epochs=s["epochs"], max_steps=s["max steps"],
                         per_device_train_batch_size=s["batch"], learning_rate=s["learning rate"])
    after = {name: answer_losses(tuned.model, tok, rows, s["max length"]) for name, rows in base["knowledge"].items()}
    answers["fine-tuned"] = generate_by_length(tuned.model, tok, closed, s["new tokens"], s["generation batch"])
    answers["fine-tuned + RAG"] = generate_by_length(tuned.model, tok, rag, s["new tokens"], s["generation batch"])
    rows = [{"part": "answer", "setup": setup, "question": i, "answer": a}
            for setup in MEDQA_SETUPS for i, a in enumerate(answers[setup])]
    rows += [{"part": "knowledge", "set": name, "item": i, "loss before": float(b), "loss after": float(a)}
             for name in after for i, (b, a) in enumerate(zip(base["before"][name], after[name]))]
    rows.append({"part": "training", "pairs": len(pairs), "seconds": round(tuned.seconds, 1), "steps": tuned.steps,
                 "last logged loss": tuned.loss_history[-1][1] if tuned.loss_history else None})
    return rows


def medqa_answers(rows) -> dict:
    """{setup: answers in question order} from `medqa_sweep` rows."""
    answers = {}
    for r in sorted((r for r in rows if r["part"] == "answer"), key=lambda r: r["question"]):
        answers.setdefault(r["setup"], []).append(r["answer"])
    return {setup: answers[setup] for setup in MEDQA_SETUPS}


def medqa_losses(rows, when: str) -> dict:
    """{knowledge set: per-answer losses} "before" or "after" LoRA, from `medqa_sweep` rows."""
    losses = {}
    for r in sorted((r for r in rows if r["part"] == "knowledge"), key=lambda r: r["item"]):
        losses.setdefault(r["set"], []).append(r[f"loss {when}"])
    return {name: np.array(v) for name, v in losses.items()}


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
