"""Session 03: masked-language-model domain adaptation, token vs whole-word masking.

- `masking_collator`: transformers' own `DataCollatorForLanguageModeling`, by scheme ("token" or "whole_word").
- `word_ids`, `mask_table`, `highlight_html`, `partial_word_rate`: what each scheme hides, shown and counted.
- `eval_set`, `masked_accuracy`, `pseudo_perplexity`: fixed, seeded evaluation on held-out text.
- `adapt`: continue masked-LM training on the medical corpus (masked positions only in the loss).
- `fill_mask`, `fill_mask_panel`, `adaptation_panel`: what the learner drives.
"""
from __future__ import annotations

import html
import random
import time

import torch
from transformers import DataCollatorForLanguageModeling, Trainer

from . import data, models, train

SCHEMES = ("token", "whole_word")


# --------------------------------------------------------------------------- checks
def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown masking scheme {scheme!r}; use one of {SCHEMES}")


def check_probability(probability: float) -> None:
    if not isinstance(probability, (int, float)) or not 0 < probability < 1:
        raise ValueError(f"masking probability must be between 0 and 1 (exclusive), got {probability!r}")


# --------------------------------------------------------------------------- masking
class MaskingCollator(DataCollatorForLanguageModeling):
    """transformers' masked-LM collator, plus padding of `offset_mapping`.

    Whole-word masking reads word boundaries from the offsets, but `tokenizer.pad` (transformers 5.23)
    pads every other field and not this one, so a batch of unequal lengths fails. We pad it first.
    """

    def torch_call(self, examples):
        if examples and "offset_mapping" in examples[0]:
            longest = max(len(e["input_ids"]) for e in examples)
            examples = [{**e, "offset_mapping": [tuple(o) for o in e["offset_mapping"]]
                         + [(0, 0)] * (longest - len(e["offset_mapping"]))} for e in examples]
        return super().torch_call(examples)


def masking_collator(tokenizer, scheme: str = "token", probability: float = 0.15, seed: int | None = None,
                     mask_token_only: bool | None = None):
    """The collator that hides tokens for masked-LM training.

    "token": every word piece is chosen independently with `probability`; BERT's 80/10/10 rule then
    replaces a chosen piece by [MASK] (80%), a random piece (10%) or leaves it (10%).
    "whole_word": a word is chosen with `probability` and all its pieces are hidden. transformers 5
    supports only [MASK] replacement here, so `mask_token_only` defaults to True for this scheme.
    Pass `mask_token_only=True` to both schemes to compare like with like.
    """
    check_scheme(scheme)
    check_probability(probability)
    whole = scheme == "whole_word"
    only = whole if mask_token_only is None else mask_token_only
    if whole and not only:
        raise ValueError("whole-word masking in transformers 5 replaces every chosen piece by [MASK]; "
                         "use mask_token_only=True (or None) with scheme='whole_word'")
    replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if only else {}
    return MaskingCollator(tokenizer, mlm_probability=float(probability), whole_word_mask=whole, seed=seed,
                           **replace)


def encode(tokenizer, texts, max_length: int = 128) -> list[dict]:
    """Token ids plus what the collators need: the special-token mask and character offsets."""
    texts = data.check_texts(texts)
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_special_tokens_mask=True,
                    return_offsets_mapping=True)
    return [{k: enc[k][i] for k in ("input_ids", "attention_mask", "special_tokens_mask", "offset_mapping")}
            for i in range(len(texts))]


def word_ids(offsets, special) -> list[int]:
    """Which word each token belongs to (-1 for special tokens), the way the collator decides it.

    A new word starts where a token does not touch the previous one (there is a gap, i.e. a space):
    "hypothyroidism," is one word of seven pieces, the comma included.
    """
    ids, current, prev_end = [], -1, None
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            ids.append(-1)
            prev_end = None
            continue
        if prev_end is None or start != prev_end:
            current += 1
        ids.append(current)
        prev_end = end
    return ids


def mask_table(sentence: str, tokenizer, scheme: str, probability: float = 0.15, seed: int = 0,
               mask_token_only: bool | None = None):
    """One row per token: its word, whether it was chosen, and what the model reads in its place."""
    import pandas as pd

    row = encode(tokenizer, [sentence])[0]
    batch = masking_collator(tokenizer, scheme, probability, seed, mask_token_only)([row])
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    seen = tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    words = word_ids(row["offset_mapping"], row["special_tokens_mask"])
    chosen = (batch["labels"][0] != -100).tolist()
    return pd.DataFrame({"token": tokens, "word": words, "chosen": chosen,
                         "model reads": [s if c else "" for s, c in zip(seen, chosen)]})


def highlight_html(table, title: str = "") -> str:
    """The sentence's word pieces, chosen ones highlighted with what the model reads instead."""
    spans = []
    for _, r in table.iterrows():
        if r["word"] == -1:
            continue
        token = html.escape(r["token"])
        if r["chosen"]:
            spans.append(f'<span style="background:#fde68a;border-radius:3px;padding:1px 3px" '
                         f'title="reads {html.escape(r["model reads"])}"><b>{token}</b>'
                         f'<sub>{html.escape(r["model reads"])}</sub></span>')
        else:
            spans.append(f'<span style="padding:1px 3px">{token}</span>')
    head = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    return f'{head}<div style="line-height:2.2;font-family:monospace">{" ".join(spans)}</div>'


def partial_word_rate(texts, tokenizer, scheme: str = "token", probability: float = 0.15, seed: int = 0,
                      max_length: int = 128, batch_size: int = 64) -> dict:
    """Over a corpus: of the multi-piece words that masking touched, how many were hidden only in part?"""
    rows = encode(tokenizer, texts, max_length)
    collator = masking_collator(tokenizer, scheme, probability, seed, mask_token_only=True)
    multi = touched = partial = chosen = candidates = 0
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        masked = (collator(part)["labels"] != -100).tolist()
        for row, m in zip(part, masked):
            words: dict = {}
            for w, is_masked in zip(word_ids(row["offset_mapping"], row["special_tokens_mask"]), m):
                if w >= 0:
                    words.setdefault(w, []).append(is_masked)
                    candidates += 1
                    chosen += is_masked
            for pieces in words.values():
                if len(pieces) > 1:
                    multi += 1
                    if any(pieces):
                        touched += 1
                        partial += not all(pieces)
    return {"scheme": scheme, "multi-piece words": multi, "touched by masking": touched,
            "hidden only in part": partial, "partial %": 100.0 * partial / max(touched, 1),
            "tokens masked %": 100.0 * chosen / max(candidates, 1)}


# --------------------------------------------------------------------------- data
def split_corpus(texts, heldout: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) paragraphs; the held-out share is never trained on."""
    texts = data.check_texts(texts)
    if not 0 < heldout < 1:
        raise ValueError(f"heldout must be a fraction between 0 and 1, got {heldout}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(len(texts) * heldout))
    return [texts[i] for i in order[cut:]], [texts[i] for i in order[:cut]]


def medical_corpus(seed: int = 0) -> tuple[list[str], list[str]]:
    """MedQuAD paragraphs (the pack's corpus.txt), split 90/10 into train and held-out."""
    lines = [t for t in data.load("medquad_corpus")["train"]["text"] if t.strip()]
    return split_corpus(lines, 0.1, seed)


# --------------------------------------------------------------------------- evaluation
def eval_set(tokenizer, texts, unit: str = "token", probability: float = 0.15, seed: int = 1234,
             max_length: int = 128) -> list[dict]:
    """A fixed, seeded evaluation mask: the same positions are hidden (by [MASK]) for every model.

    unit="token" hides single pieces; unit="word" hides whole words, so a model trained with
    whole-word masking is asked what it was trained to do.
    """
    scheme = {"token": "token", "word": "whole_word"}.get(unit)
    if scheme is None:
        raise ValueError(f"unit must be 'token' or 'word', not {unit!r}")
    rows = encode(tokenizer, texts, max_length)
    collator = masking_collator(tokenizer, scheme, probability, seed, mask_token_only=True)
    out = []
    for i in range(0, len(rows), 64):
        part = rows[i:i + 64]
        batch = collator(part)
        for j, row in enumerate(part):
            n = len(row["input_ids"])
            out.append({"input_ids": batch["input_ids"][j, :n], "labels": batch["labels"][j, :n],
                        "words": torch.tensor(word_ids(row["offset_mapping"], row["special_tokens_mask"]))})
    return out


def masked_accuracy(model, examples, batch_size: int = 32) -> dict:
    """Top-1 and top-5 accuracy over the hidden pieces, and the share of hidden words whose every piece
    was guessed right (top-1)."""
    from torch.nn.utils.rnn import pad_sequence

    model.eval()
    top1 = top5 = n = words_right = words = 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            part = examples[i:i + batch_size]
            batch = models.on_device({
                "input_ids": pad_sequence([e["input_ids"] for e in part], batch_first=True),
                "attention_mask": pad_sequence([torch.ones_like(e["input_ids"]) for e in part], batch_first=True),
                "labels": pad_sequence([e["labels"] for e in part], batch_first=True, padding_value=-100)}, model)
            labels = batch.pop("labels")
            hidden = model.base_model(**batch).last_hidden_state
            where = labels != -100
            best = models.head_logits(model, hidden[where]).topk(5, dim=-1).indices
            gold = labels[where]
            top1 += int((best[:, 0] == gold).sum())
            top5 += int((best == gold[:, None]).any(-1).sum())
            n += len(gold)
            right = torch.full_like(labels, -1)
            right[where] = (best[:, 0] == gold).long()
            for e, r in zip(part, right):
                hidden_words: dict = {}
                for w, ok in zip(e["words"].tolist(), r[: len(e["words"])].tolist()):
                    if ok >= 0:
                        hidden_words[w] = hidden_words.get(w, True) and bool(ok)
                words += len(hidden_words)
                words_right += sum(hidden_words.values())
    return {"top1": top1 / max(n, 1), "top5": top5 / max(n, 1), "word top1": words_right / max(words, 1),
            "hidden pieces": n, "hidden words": words}


def pseudo_perplexity(model, tokenizer, texts, max_length: int = 48, batch_size: int = 128) -> float:
    """Salazar et al. (2020): hide each piece in turn, score it, and take exp(-mean log-probability).

    One forward pass per piece, so keep `texts` short; the head runs on the hidden position only.
    """
    texts = data.check_texts(texts)
    model.eval()
    copies, targets, positions = [], [], []
    for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]:
        for pos in range(1, len(ids) - 1):  # every piece but [CLS] and [SEP]
            masked = list(ids)
            masked[pos] = tokenizer.mask_token_id
            copies.append(torch.tensor(masked))
            targets.append(ids[pos])
            positions.append(pos)
    from torch.nn.utils.rnn import pad_sequence

    total = 0.0
    with torch.no_grad():
        for i in range(0, len(copies), batch_size):
            ids = pad_sequence(copies[i:i + batch_size], batch_first=True, padding_value=tokenizer.pad_token_id)
            batch = models.on_device({"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long(),
                                      "rows": torch.arange(len(ids)),
                                      "positions": torch.tensor(positions[i:i + batch_size]),
                                      "targets": torch.tensor(targets[i:i + batch_size])}, model)
            hidden = model.base_model(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).last_hidden_state
            rows = batch["rows"]
            logp = models.head_logits(model, hidden[rows, batch["positions"]]).log_softmax(-1)
            total += float(logp[rows, batch["targets"]].sum())
    return float(torch.exp(torch.tensor(-total / max(len(targets), 1))))


def evaluate(model, tokenizer, sets: dict, ppl_texts: dict | None = None) -> dict:
    """Accuracy on each fixed evaluation set (and pseudo-perplexity where texts are given), one flat row."""
    row = {}
    for name, examples in sets.items():
        scores = masked_accuracy(model, examples)
        row[f"{name} top1"], row[f"{name} top5"] = scores["top1"], scores["top5"]
        if name.endswith("word"):
            row[f"{name} whole-word top1"] = scores["word top1"]
    for name, texts in (ppl_texts or {}).items():
        row[f"{name} pseudo-ppl"] = pseudo_perplexity(model, tokenizer, texts)
    return row


# --------------------------------------------------------------------------- domain adaptation
class MaskedOnlyTrainer(Trainer):
    """The Trainer, with the loss computed from the masked positions only (see models.masked_lm_loss)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = models.masked_lm_loss(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        return (loss, None) if return_outputs else loss


# On a small machine a masked-LM step takes 4 sequences at a time, not the 8 of train.small_memory_batches: measured
# for MiniLM at 128 tokens, 640 MB above start for the model, its gradients and AdamW state plus 35 MB per sequence
# (+1,063 MB at 8, +829 MB at 4), at the same speed (4.9 vs 4.7 s per batch of 32).
SMALL_MEMORY_MICRO_BATCH = 4


def adapt(cfg, texts, scheme: str = "whole_word", probability: float = 0.15, epochs: float | None = None,
          learning_rate: float = 1e-4, max_length: int = 128, model=None, name: str | None = None, **overrides):
    """Continue masked-LM training on `texts`: (adapted model, RunResult with seconds and peak RAM).

    Starts from `model` or a fresh `models.load_masked_lm(cfg)`. Both schemes replace every chosen
    piece by [MASK], so the comparison changes one thing only: what is chosen.
    """
    from datasets import Dataset

    tokenizer = models.load_tokenizer("encoder", cfg)
    model = model if model is not None else models.load_masked_lm(cfg)
    rows = encode(tokenizer, texts, max_length)
    dataset = Dataset.from_list(rows)
    collator = masking_collator(tokenizer, scheme, probability, seed=cfg.seed, mask_token_only=True)
    args = {"remove_unused_columns": False, "learning_rate": learning_rate, "warmup_steps": 0,
            "micro_batch": SMALL_MEMORY_MICRO_BATCH, **overrides}      # micro_batch applies on a small machine only
    if epochs is not None:
        args["num_train_epochs"] = epochs
    result = train.fit(model, dataset, None, cfg, name=name or f"{scheme}, p={probability}", data_collator=collator,
                       trainer_class=MaskedOnlyTrainer, **args)
    result.extra.update(scheme=scheme, probability=probability)
    return model.eval(), result


def encoder_state(mlm_model) -> dict:
    """The adapted encoder's weights, to start a classifier from (`tuning.fine_tune(encoder_state=...)`).

    Detached views, not copies (90 MB saved): `load_state_dict` copies them into each new classifier."""
    return {k: v.detach() for k, v in mlm_model.base_model.state_dict().items()}


# --------------------------------------------------------------------------- cost of the two schemes
def masking_cost(tokenizer, texts, model=None, batch_size: int = 32, max_length: int = 128, batches: int = 10,
                 probability: float = 0.15, seed: int = 0) -> list[dict]:
    """Seconds per batch for each scheme's collator and (with `model`) one training step, measured in turn."""
    rows = encode(tokenizer, texts, max_length)
    out = {s: {"scheme": s, "collate ms": 0.0, "step ms": 0.0, "hidden per batch": 0.0} for s in SCHEMES}
    params = [p for p in model.parameters() if p.requires_grad] if model is not None else []
    opt = torch.optim.AdamW(params, lr=0.0) if params else None  # lr 0: time the step, leave the weights
    for b in range(batches):
        part = rows[b * batch_size % len(rows):][:batch_size]
        for scheme in SCHEMES:  # interleaved, so drift in machine speed hits both alike
            collator = masking_collator(tokenizer, scheme, probability, seed + b, mask_token_only=True)
            start = time.perf_counter()
            batch = collator(part)
            out[scheme]["collate ms"] += 1000 * (time.perf_counter() - start) / batches
            out[scheme]["hidden per batch"] += float((batch["labels"] != -100).sum()) / batches
            if model is not None:
                model.train()
                start = time.perf_counter()
                batch = models.on_device(batch, model)
                loss = models.masked_lm_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
                loss.backward()
                opt.step()
                opt.zero_grad()
                out[scheme]["step ms"] += 1000 * (time.perf_counter() - start) / batches
    if model is not None:
        model.eval()
    return list(out.values())


# --------------------------------------------------------------------------- fill-mask
def fill_mask(model, tokenizer, sentence: str, k: int = 5) -> list[list[tuple[str, float]]]:
    """The top-k words and probabilities for each [MASK] in `sentence`."""
    if not isinstance(sentence, str) or tokenizer.mask_token not in sentence:
        raise ValueError(f"the sentence needs at least one {tokenizer.mask_token}, e.g. "
                         f"'Insulin is made in the {tokenizer.mask_token}.'")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    enc = models.on_device(tokenizer(sentence, return_tensors="pt", truncation=True, max_length=128), model)
    model.eval()
    with torch.no_grad():
        hidden = model.base_model(**enc).last_hidden_state[0]
        where = enc["input_ids"][0] == tokenizer.mask_token_id
        probs = models.head_logits(model, hidden[where]).softmax(-1)
    top = probs.topk(k, dim=-1)
    return [[(tokenizer.convert_ids_to_tokens(int(i)), float(p)) for p, i in zip(ps, ids)]
            for ps, ids in zip(top.values, top.indices)]


def fill_mask_table(models_by_name: dict, tokenizer, sentence: str, k: int = 5):
    """Side by side: for every [MASK], each model's top-k with probabilities."""
    import pandas as pd

    columns = {}
    for name, model in models_by_name.items():
        for m, cands in enumerate(fill_mask(model, tokenizer, sentence, k)):
            columns[f"{name} (mask {m + 1})" if sentence.count(tokenizer.mask_token) > 1 else name] = \
                [f"{tok} {p:.2f}" for tok, p in cands]
    return pd.DataFrame(columns, index=[f"#{i + 1}" for i in range(k)])


def fill_mask_panel(models_by_name: dict, tokenizer, sentence: str = "The patient was given [MASK] to lower blood pressure."):
    """A text box: type a sentence with [MASK], press Fill, see every model's top-5 side by side."""
    import ipywidgets as w
    from IPython.display import display

    from .widgets import Panel

    def fill(sentence):
        table = fill_mask_table(models_by_name, tokenizer, sentence)
        display(table)
        return table

    box = w.Text(value=sentence, description="sentence", layout={"width": "90%"})
    return Panel(fill, {"sentence": box}, title="Type a sentence with [MASK] and press Fill", button="Fill")


def adaptation_panel(cfg, train_texts, sets: dict, table, learning_rate: float, max_length: int):
    """Scheme, masking probability and epochs; every Run adapts a fresh copy of the general model and adds
    a row (medical and general held-out accuracy, seconds, peak RAM) to `table`."""
    from . import widgets

    def run(scheme, probability, epochs):
        model, result = adapt(cfg, train_texts, scheme, probability, epochs, learning_rate, max_length,
                              name=f"{scheme}, p={probability:.2f}, {epochs:g} ep")
        result.metrics.update(evaluate(model, None, sets))
        table.add(result)
        return result.numbers_only()

    def plot(_panel):
        return table.scatter("general token top1", "medical token top1",
                             title="each run: medical vs general held-out accuracy (top-1, token masks)")

    controls = {"scheme": widgets.dropdown(list(SCHEMES), "whole_word", "masking"),
                "probability": widgets.float_slider(0.15, 0.05, 0.5, "mask probability", step=0.05),
                "epochs": widgets.float_slider(1.0, 0.5, 5.0, "epochs", step=0.5)}
    return widgets.Panel(run, controls, plot=plot, title="Domain adaptation you drive")
