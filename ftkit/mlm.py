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


def shown_instead(examples, tokenizer, replace: str, seed: int = 1234) -> list[dict]:
    """The same hidden positions as `examples` (an `eval_set`), with something other than [MASK] put there: the
    original piece ("keep") or a random piece of the vocabulary ("random"). The two cases BERT's 80/10/10 rule trains
    for, and a model trained with [MASK] only never meets: scoring them shows what it does with a visible piece."""
    if replace not in ("keep", "random"):
        raise ValueError(f"replace must be 'keep' or 'random', not {replace!r}")
    generator = torch.Generator().manual_seed(seed)
    out = []
    for e in examples:
        where = e["labels"] != -100
        ids = e["input_ids"].clone()
        if replace == "keep":
            ids[where] = e["labels"][where]
        else:
            ids[where] = torch.randint(len(tokenizer), (int(where.sum()),), generator=generator)
        out.append({**e, "input_ids": ids})
    return out


def hidden_topk(model, examples, k: int = 5, batch_size: int = 32) -> list:
    """For each example, the model's k best pieces at its hidden positions (labels != -100), best first: a LongTensor
    [hidden, k] per example, in the examples' order.

    Batches are made of examples of similar length (longest first), so a batch pads little; the 30k-way head runs at
    the hidden positions only."""
    from torch.nn.utils.rnn import pad_sequence

    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    out = [None] * len(examples)
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            part = order[i:i + batch_size]
            ids = [examples[j]["input_ids"] for j in part]
            batch = models.on_device({
                "input_ids": pad_sequence(ids, batch_first=True),
                "attention_mask": pad_sequence([torch.ones_like(x) for x in ids], batch_first=True),
                "labels": pad_sequence([examples[j]["labels"] for j in part], batch_first=True, padding_value=-100)},
                model)
            labels = batch.pop("labels")
            hidden = model.base_model(**batch).last_hidden_state
            where = labels != -100
            best = models.head_logits(model, hidden[where]).topk(k, dim=-1).indices.cpu()
            for j, piece in zip(part, best.split(where.sum(-1).tolist())):
                out[j] = piece
    return out


def predictions(model, examples) -> list:
    """The model's top-1 piece at each example's hidden positions, and -100 elsewhere: one LongTensor per example, as
    long as its `input_ids` (compare it with the example's `labels`)."""
    out = []
    for e, best in zip(examples, hidden_topk(model, examples, k=1)):
        guess = torch.full_like(e["labels"], -100)
        guess[e["labels"] != -100] = best[:, 0]
        out.append(guess)
    return out


def masked_accuracy(model, examples, batch_size: int = 32) -> dict:
    """Top-1 and top-5 accuracy over the hidden pieces, and the share of hidden words whose every piece
    was guessed right (top-1)."""
    top1 = top5 = n = words_right = words = 0
    for e, best in zip(examples, hidden_topk(model, examples, 5, batch_size)):
        where = e["labels"] != -100
        gold = e["labels"][where]
        right = best[:, 0] == gold
        top1 += int(right.sum())
        top5 += int((best == gold[:, None]).any(-1).sum())
        n += len(gold)
        hidden_words: dict = {}
        for w, ok in zip(e["words"][where].tolist(), right.tolist()):
            hidden_words[w] = hidden_words.get(w, True) and ok
        words += len(hidden_words)
        words_right += sum(hidden_words.values())
    if n == 0:
        raise ValueError(f"none of the {len(examples)} examples has a hidden piece (labels != -100): build them with "
                         "mlm.eval_set, on texts long enough to mask")
    return {"top1": top1 / n, "top5": top5 / n, "word top1": words_right / words, "hidden pieces": n,
            "hidden words": words}


def pseudo_perplexity(model, tokenizer, texts, max_length: int = 48, batch_size: int = 128) -> float:
    """Salazar et al. (2020): hide each piece in turn, score it, and take exp(-mean log-probability).

    One forward pass per piece, so keep `texts` short (they are cut at `max_length` pieces, shorter than the 128 of
    training, to keep the copies cheap). The copies are batched by length and the head runs on the hidden position
    only."""
    from torch.nn.utils.rnn import pad_sequence

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
    if not copies:
        raise ValueError("the texts have no word pieces to score")
    order = sorted(range(len(copies)), key=lambda i: -len(copies[i]))
    total = 0.0
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            part = order[i:i + batch_size]
            ids = pad_sequence([copies[j] for j in part], batch_first=True, padding_value=tokenizer.pad_token_id)
            batch = models.on_device({"input_ids": ids, "attention_mask": (ids != tokenizer.pad_token_id).long(),
                                      "rows": torch.arange(len(ids)),
                                      "positions": torch.tensor([positions[j] for j in part]),
                                      "targets": torch.tensor([targets[j] for j in part])}, model)
            hidden = model.base_model(input_ids=batch["input_ids"],
                                      attention_mask=batch["attention_mask"]).last_hidden_state
            rows = batch["rows"]
            logp = models.head_logits(model, hidden[rows, batch["positions"]]).log_softmax(-1)
            total += float(logp[rows, batch["targets"]].sum())
    return float(torch.exp(torch.tensor(-total / len(targets))))


def evaluate(model, tokenizer, sets: dict, ppl_texts: dict | None = None, probes: dict | None = None) -> dict:
    """Accuracy on each fixed evaluation set, pseudo-perplexity where texts are given, and top-1 on each probe
    (`shown_instead`: what the model guesses when the original or a random piece is shown), as one flat row."""
    row = {}
    for name, examples in sets.items():
        scores = masked_accuracy(model, examples)
        row[f"{name} top1"], row[f"{name} top5"] = scores["top1"], scores["top5"]
        if name.endswith("word"):
            row[f"{name} whole-word top1"] = scores["word top1"]
    for name, examples in (probes or {}).items():
        row[f"{name} top1"] = masked_accuracy(model, examples)["top1"]
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
          learning_rate: float = 1e-4, max_length: int = 128, model=None, name: str | None = None,
          mask_token_only: bool = True, seed: int | None = None, **overrides):
    """Continue masked-LM training on `texts`: (adapted model, RunResult with seconds and peak RAM).

    Starts from `model` or a fresh `models.load_masked_lm(cfg)`. By default both schemes replace every chosen
    piece by [MASK], so the comparison changes one thing only: what is chosen. `mask_token_only=False` (token
    masking only) trains with BERT's 80/10/10 rule, transformers' default. `seed` (default `cfg.seed`) draws the
    masks and the order of the paragraphs.
    """
    from datasets import Dataset

    seed = cfg.seed if seed is None else seed
    tokenizer = models.load_tokenizer("encoder", cfg)
    collator = masking_collator(tokenizer, scheme, probability, seed=seed, mask_token_only=mask_token_only)
    dataset = Dataset.from_list(encode(tokenizer, texts, max_length))
    model = model if model is not None else models.load_masked_lm(cfg)
    args = {"remove_unused_columns": False, "learning_rate": learning_rate, "warmup_steps": 0, "seed": seed,
            "micro_batch": SMALL_MEMORY_MICRO_BATCH, **overrides}      # micro_batch applies on a small machine only
    if epochs is not None:
        args["num_train_epochs"] = epochs
    result = train.fit(model, dataset, None, cfg, name=name or f"{scheme}, p={probability}", data_collator=collator,
                       trainer_class=MaskedOnlyTrainer, **args)
    result.extra.update(scheme=scheme, probability=probability, replacement=replacement_name(mask_token_only),
                        seed=seed)
    return model.eval(), result


def encoder_state(mlm_model) -> dict:
    """The adapted encoder's weights, to start a classifier from (`tuning.fine_tune(encoder_state=...)`).

    Detached views, not copies (90 MB saved): `load_state_dict` copies them into each new classifier."""
    return {k: v.detach() for k, v in mlm_model.base_model.state_dict().items()}


# --------------------------------------------------------------------------- the notebook's runs, and their recording
# Per profile: paragraphs to train on (None: all), held-out medical paragraphs to score (twice as many general
# sentences), texts for pseudo-perplexity, and tokens per paragraph in training.
SIZES = {"smoke": {"train": 64, "heldout": 24, "ppl": 4, "max_length": 64},
         "cpu": {"train": 1600, "heldout": 200, "ppl": 32, "max_length": 128},
         "gpu": {"train": None, "heldout": 564, "ppl": 64, "max_length": 256}}
ADAPT_LR = 1e-4                 # the same for every run and for the panel
ADAPT_PROBABILITY = 0.15
# What a chosen piece becomes: [MASK] always, or BERT's rule (80% [MASK], 10% a random piece, 10% left as it is).
REPLACEMENTS = {"[MASK] only": True, "80/10/10": False}          # name -> mask_token_only
# The recorded runs: both schemes with [MASK] only (like for like), and token masking with 80/10/10 (transformers'
# default; its whole-word masking supports [MASK] only). The notebook's live run uses the setup's seed (42); the
# recording uses another one, so the live whole-word run next to the recorded one shows how far a seed moves the
# numbers (cpu: one recorded seed, about 15 minutes on 2 cores; smoke: the live seed, 8 steps cannot show more).
RUNS = (("whole_word", "[MASK] only"), ("token", "[MASK] only"), ("token", "80/10/10"))
SWEEP_SEEDS = {"smoke": [42], "cpu": [43], "gpu": [43, 44]}


def replacement_name(mask_token_only: bool) -> str:
    return "[MASK] only" if mask_token_only else "80/10/10"


def _profile_name(cfg) -> str:
    return getattr(getattr(cfg, "profile", cfg), "name", cfg)


def evaluation_data(cfg, tokenizer) -> dict:
    """Everything the adaptation runs are trained and scored on, the same for every run of a profile:
    "train" (medical paragraphs), "sets" (fixed [MASK] evaluation masks: medical and general, token and word),
    "probes" (the medical token positions with the original piece or a random piece shown instead of [MASK]) and
    "ppl" (texts for pseudo-perplexity)."""
    sizes = SIZES[_profile_name(cfg)]
    med_train, med_heldout = medical_corpus()
    heldout, general = med_heldout[: sizes["heldout"]], data.general_corpus("test")[: sizes["heldout"] * 2]
    sets = {"medical token": eval_set(tokenizer, heldout, "token"), "medical word": eval_set(tokenizer, heldout, "word"),
            "general token": eval_set(tokenizer, general, "token"), "general word": eval_set(tokenizer, general, "word")}
    probes = {f"medical {shown}": shown_instead(sets["medical token"], tokenizer, shown) for shown in ("keep", "random")}
    return {"train": med_train[: sizes["train"]], "sets": sets, "probes": probes,
            "ppl": {"medical": heldout[: sizes["ppl"]], "general": general[: sizes["ppl"]]}}


def run_row(masked_lm, tokenizer, evaluation: dict, result=None, **labels) -> dict:
    """One row of the adaptation table for `masked_lm`: `labels` (e.g. model="...", scheme, replacement, seed), every
    evaluation of `evaluate` on `evaluation_data`, and from a training `result` its seconds, peak RAM, steps and
    first and last logged loss."""
    row = {**labels, **evaluate(masked_lm, tokenizer, evaluation["sets"], evaluation["ppl"], evaluation["probes"])}
    if result is not None:
        losses = [loss for _, loss in result.loss_history]
        row.update({"seconds": result.seconds, "peak RAM MB": result.peak_mem_mb, "steps": result.steps,
                    "first loss": losses[0] if losses else None, "last loss": losses[-1] if losses else None})
    return row


def adaptation_settings(profile) -> dict:
    """What decides the recorded adaptation runs of a profile (ftkit.results.SWEEPS["mlm_adaptation"])."""
    prof = getattr(profile, "profile", profile)
    return {"sizes": SIZES[prof.name], "runs": [list(r) for r in RUNS], "seeds": SWEEP_SEEDS[prof.name],
            "probability": ADAPT_PROBABILITY, "epochs": 1.0, "learning_rate": ADAPT_LR,
            "batch_size": prof.batch_size, "max_steps": prof.max_steps}


def adaptation_sweep(cfg) -> list[dict]:
    """Every run of `RUNS` for every seed of the profile, each from a fresh general model, scored on the same
    `evaluation_data`: one row per run (recorded with `python -m ftkit record mlm_adaptation`)."""
    name = _profile_name(cfg)
    tokenizer = models.load_tokenizer("encoder", cfg)
    evaluation = evaluation_data(cfg, tokenizer)
    rows = []
    for seed in SWEEP_SEEDS[name]:
        for scheme, replacement in RUNS:
            model, result = adapt(cfg, evaluation["train"], scheme, ADAPT_PROBABILITY, epochs=1.0,
                                  learning_rate=ADAPT_LR, max_length=SIZES[name]["max_length"],
                                  mask_token_only=REPLACEMENTS[replacement], seed=seed)
            rows.append(run_row(model, tokenizer, evaluation, result, scheme=scheme, replacement=replacement,
                                seed=seed))
            del model, result
    return rows


# --------------------------------------------------------------------------- part 3: does it pay off downstream?
# Question-type classifiers from the original and the whole-word-adapted encoder, with the same budget, seeds,
# learning rate and head initialisation: only the encoder weights differ. Per profile: labels per class when they
# are scarce, training examples when plentiful (None: all), test questions (None: all), seeds, and epochs (None: the
# profile's steps). Recorded (`python -m ftkit record mlm_downstream`: about 11 minutes on 2 cores, the adaptation
# included); the notebook trains the first seed's scarce-label pair live and checks it against the recording.
DOWNSTREAM = {"smoke": {"scarce": 4, "plentiful": 64, "test": 64, "seeds": [0], "epochs scarce": None,
                        "epochs plentiful": None},
              "cpu": {"scarce": 8, "plentiful": 1000, "test": 800, "seeds": [0, 1, 2], "epochs scarce": 10,
                      "epochs plentiful": 2},
              "gpu": {"scarce": 8, "plentiful": None, "test": None, "seeds": [0, 1, 2, 3, 4], "epochs scarce": 10,
                      "epochs plentiful": 3}}
DOWNSTREAM_LR = 1e-4
ENCODERS = ("original", "adapted (whole word)")
ADAPTATION_SEED = 42            # the live whole-word run's seed (ftkit.setup's default), so both adapt alike


def downstream_settings(profile) -> dict:
    """What decides part 3's rows (ftkit.results.SWEEPS["mlm_downstream"]), the whole-word adaptation included."""
    prof = getattr(profile, "profile", profile)
    return {**DOWNSTREAM[prof.name], "learning rate": DOWNSTREAM_LR, "encoder": prof.models["encoder"],
            "batch_size": prof.batch_size, "max_steps": prof.max_steps,
            "adaptation": {"scheme": "whole_word", "probability": ADAPT_PROBABILITY, "epochs": 1.0,
                           "learning_rate": ADAPT_LR, "seed": ADAPTATION_SEED, "sizes": SIZES[prof.name]},
            "test rows": "medquad_qtype test, data.take(test, seed=0, stratify='label')",
            "training rows": "medquad_qtype train, data.take(size, seed=seed, stratify='label')"}


def downstream_data(settings: dict):
    """(medquad_qtype DatasetDict, label names, the test rows every classifier is scored on) for part 3."""
    qtype = data.load("medquad_qtype")
    return (qtype, qtype["train"].features["label"].names,
            data.take(qtype["test"], settings["test"], seed=0, stratify="label"))


def downstream_run(cfg, qtype, test_rows, label_names, labels: str, seed: int, encoder: str, state,
                   settings: dict) -> dict:
    """One row of part 3: a question-type classifier fine-tuned (`tuning.fine_tune`, every block trained) from the
    encoder weights `state` (None: the original encoder), on `labels` = "scarce" (settings' labels per class) or
    "plentiful" training questions drawn with `seed`; its test accuracy and macro-F1."""
    from datasets import DatasetDict

    from . import tuning

    size = settings["scarce"] * len(label_names) if labels == "scarce" else settings["plentiful"]
    sample = data.take(qtype["train"], size, seed=seed, stratify="label")
    encoded, tokenizer = tuning.tokenize(DatasetDict(train=sample, test=test_rows), cfg)
    scores = tuning.fine_tune(cfg, encoded, tokenizer, label_names, 0, epochs=settings[f"epochs {labels}"],
                              learning_rate=settings["learning rate"], encoder_state=state, seed=seed,
                              name=f"{encoder}, {labels}").metrics
    return {"labels": labels, "train examples": len(sample), "encoder": encoder, "seed": seed,
            "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}


def downstream_sweep(cfg) -> list[dict]:
    """Part 3 in full: the whole-word adaptation (as the live run trains it), then a classifier from each encoder
    for every seed with scarce labels and for the first seed with plentiful ones: one `downstream_run` row each."""
    s = downstream_settings(cfg)
    a = s["adaptation"]
    tokenizer = models.load_tokenizer("encoder", cfg)
    adapted, _ = adapt(cfg, evaluation_data(cfg, tokenizer)["train"], a["scheme"], a["probability"],
                       epochs=a["epochs"], learning_rate=a["learning_rate"], max_length=a["sizes"]["max_length"],
                       seed=a["seed"])
    states = {"original": None, "adapted (whole word)": encoder_state(adapted)}
    qtype, names, test_rows = downstream_data(s)
    return [downstream_run(cfg, qtype, test_rows, names, labels, seed, encoder, states[encoder], s)
            for labels, seeds in (("scarce", s["seeds"]), ("plentiful", s["seeds"][:1]))
            for seed in seeds for encoder in ENCODERS]


TABLE_COLUMNS = ["medical token top1", "medical word whole-word top1", "general token top1",
                 "general word whole-word top1", "medical pseudo-ppl", "general pseudo-ppl", "medical keep top1",
                 "medical random top1", "first loss", "last loss", "seconds"]
RUN_NAMES = {("whole_word", "[MASK] only"): "whole word", ("token", "[MASK] only"): "token",
             ("token", "80/10/10"): "token, 80/10/10"}


def adaptation_table(live_rows: list[dict], recorded) -> "pd.DataFrame":
    """The adaptation table: the live rows as they are (each with a "model" name), then each recorded run, named
    "<run> (recorded, seed S)", or as the mean over its seeds, "<run> (recorded, mean of N seeds)", with
    "medical top1 range" (min..max over those seeds). One column per `TABLE_COLUMNS` entry that some row has."""
    import pandas as pd

    rows = [dict(r) for r in live_rows]
    frame = pd.DataFrame(list(recorded))
    for (scheme, replacement), part in frame.groupby(["scheme", "replacement"], sort=False):
        name = RUN_NAMES.get((scheme, replacement), f"{scheme}, {replacement}")
        means = part.mean(numeric_only=True).to_dict()
        if len(part) == 1:
            rows.append({"model": f"{name} (recorded, seed {int(part['seed'].iloc[0])})", **means})
            continue
        low, high = part["medical token top1"].min(), part["medical token top1"].max()
        rows.append({"model": f"{name} (recorded, mean of {len(part)} seeds)", **means,
                     "medical top1 range": f"{low:.3f}..{high:.3f}"})
    table = pd.DataFrame(rows).set_index("model")
    return table[[c for c in TABLE_COLUMNS + ["medical top1 range"] if c in table]]


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
