"""Exercises of session 05 (course/05_instruction_tuning.ipynb): the prompt's share of the tokens, the -100 label
row of one instruction example, and an experiment of the learner's own (decoding settings vs error counts)."""
from __future__ import annotations

import math
from numbers import Integral, Real

from .core import Session, call, expect

check = Session("05_instruction_tuning")

# A word-level vocabulary that covers the fixture texts below, for a tokenizer built in memory (no download).
_WORDS = ("### Instruction Response Context : . , ? ! Name a colour Blue is the sky on clear day Give two fruits "
          "Apples and pears What capital of France Paris Translate to German Good morning Guten Morgen").split()


def tiny_tokenizer(pad_is_eos: bool = False):
    """A whitespace word-level tokenizer (a transformers PreTrainedTokenizerFast) built in memory: one id per word or
    punctuation mark, `<unk>` 0, `<pad>` 1 and the end token `</s>` 2 (with `pad_is_eos`, padding uses `</s>` too, as
    many causal LMs do). The ids of the words follow `_WORDS`, so they differ from every course model's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2}
    for word in _WORDS:
        vocab.setdefault(word, len(vocab) + 7)          # gaps: an id is not its position in the text
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()          # words and punctuation marks
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>",
                                   pad_token="</s>" if pad_is_eos else "<pad>")


# --------------------------------------------------------------------------- q1
def _labels(*rows):
    return [{"input_ids": list(range(len(r))), "labels": list(r)} for r in rows]


@check.exercise(title="The prompt's share of the tokens", tier="warm-up",
                hint="Count the labels that are -100 over all examples together, and divide by the number of all "
                     "labels: `sum(l == -100 for ex in examples for l in ex['labels'])`. A share of the tokens, not a "
                     "mean of each example's share.")
def q1(prompt_share):
    """prompt_share(examples) -> float: the share of all tokens (every example's labels together) labelled -100."""
    examples = _labels([-100, -100, -100, 5, 6], [-100, 7, 8, 9, 10, 11, 12])     # 4 of 12 tokens are prompt
    shown = "prompt_share(two examples: 3 of 5 and 1 of 7 tokens labelled -100)"
    share = call(prompt_share, examples, shown=shown)
    expect(isinstance(share, Real) and not isinstance(share, bool),
           f"{shown} returned {type(share).__name__} {share!r}; return a number (a float between 0 and 1)")
    share = float(share)
    expect(abs(share - 100 / 3) > 1e-6, f"{shown} returned {share:.2f}, a percentage: return the fraction (0.333)")
    expect(abs(share - 2 / 3) > 1e-6, f"{shown} returned {share:.3f}, the share of the graded tokens: the prompt's "
                                      "tokens are the ones labelled -100")
    mean_of_shares = (3 / 5 + 1 / 7) / 2
    expect(abs(share - mean_of_shares) > 1e-6,
           f"{shown} returned {share:.3f}, the mean of each example's share (0.600 and 0.143): a long example has "
           "more tokens, so count the tokens of all examples together (4 of 12)")
    # float32 (a tensor's .mean().item()) is right to about 1e-7 relative; a real mistake is far larger
    expect(math.isclose(share, 1 / 3, rel_tol=1e-6),
           f"{shown} returned {share:.7g}; 4 of the 12 tokens are labelled -100: 1/3 = {1 / 3:.7g}")
    none = call(prompt_share, _labels([4, 5, 6]), shown="prompt_share(one example without prompt tokens)")
    expect(float(none) == 0.0, f"prompt_share(one example whose labels are all token ids) returned {none!r}, not 0")
    return "4 of 12 tokens are prompt: 0.333, counted over the tokens of all examples"


# --------------------------------------------------------------------------- q2
PROMPT = "### Instruction:\nName a colour.\n### Response:\n"
RESPONSE = "Blue is the colour of the sky on a clear day."


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _row(label_row, tokenizer, prompt, response, length, shown):
    out = call(label_row, prompt, response, tokenizer, length, shown=shown)
    expect(isinstance(out, dict) and {"input_ids", "attention_mask", "labels"} <= set(out),
           f"{shown} returned {type(out).__name__}; return a dict with 'input_ids', 'attention_mask' and 'labels'")
    for key in ("input_ids", "attention_mask", "labels"):
        value = out[key]
        if hasattr(value, "tolist"):
            value = value.tolist()
        expect(isinstance(value, (list, tuple)) and all(isinstance(v, Integral) for v in value),
               f"{shown}: '{key}' should be a list of whole numbers, got {str(value)[:80]}")
        expect(len(value) == length, f"{shown}: '{key}' has {len(value)} entries; every row must have exactly "
                                     f"length = {length} (pad a short example, cut a long one)")
        out[key] = [int(v) for v in value]
    return out


def _response_labels(labels, p, r, tokenizer, shown) -> None:
    """The labels of the response and its end token are their ids: fail at the first position that differs."""
    got = labels[len(p):len(p) + len(r)]
    if got == r:
        return
    i = next(i for i, (g, w) in enumerate(zip(got, r)) if g != w)
    position, end = len(p) + i, i == len(r) - 1
    expect(not (end and got[i] == -100),
           f"{shown}: the end token (position {position}) is labelled -100; label it with its id "
           f"(tokenizer.eos_token_id = {tokenizer.eos_token_id}): training on it is how the model learns to stop")
    what = "the end token" if end else f"response token {i}"
    expect(False, f"{shown}: the labels of the response and its end token should be their token ids; at position "
                  f"{position} ({what}) the label should be {r[i]}, got {got[i]} (labels from the response's start: "
                  f"{got[:i + 1]}, expected {r[:i + 1]})")


@check.exercise(title="The -100 label row of one example", tier="core",
                hint="Tokenize the prompt and the response without special tokens, add `tokenizer.eos_token_id` after "
                     "the response, and put the two lists one after the other. Labels: -100 for each prompt token, "
                     "the response's own ids (not shifted: the model shifts). Cut to `length`; then pad the ids with "
                     "`tokenizer.pad_token_id`, the mask with 0 and the labels with -100.")
def q2(label_row):
    """label_row(prompt, response, tokenizer, length) -> {"input_ids", "attention_mask", "labels"}, each `length`
    long: prompt tokens, response tokens, the end token, then padding."""
    tokenizer = tiny_tokenizer()
    p, r = _ids(tokenizer, PROMPT), _ids(tokenizer, RESPONSE) + [tokenizer.eos_token_id]
    n, length = len(p) + len(r), len(p) + len(r) + 4
    shown = f"label_row(prompt, response, tokenizer, length={length})"
    out = _row(label_row, tokenizer, PROMPT, RESPONSE, length, shown)
    ids, mask, labels = out["input_ids"], out["attention_mask"], out["labels"]
    expect(ids[:len(p)] == p, f"{shown}: input_ids should start with the prompt's {len(p)} tokens "
                              "(tokenize with add_special_tokens=False)")
    expect(ids[len(p):n - 1] == r[:-1], f"{shown}: after the prompt, input_ids should hold the response's tokens")
    expect(ids[n - 1] == tokenizer.eos_token_id,
           f"{shown}: the response should end with the end token (tokenizer.eos_token_id = {tokenizer.eos_token_id}); "
           "training on it is how the model learns to stop")
    expect(labels[:len(p)] != p, f"{shown}: the prompt's labels are its token ids, so the model would be graded on "
                                 "re-typing the instruction; label every prompt token -100")
    expect(labels[len(p) - 1:n - 1] != r, f"{shown}: the labels are shifted by one (each position holds the next "
                                          "token); give each response position its own id: the model shifts itself")
    expect(all(l == -100 for l in labels[:len(p)]), f"{shown}: every prompt position must be labelled -100")
    _response_labels(labels, p, r, tokenizer, shown)
    pads = length - n
    expect(ids[n:] == [tokenizer.pad_token_id] * pads,
           f"{shown}: pad input_ids with tokenizer.pad_token_id ({tokenizer.pad_token_id}) after the end token, got "
           f"{ids[n:]}")
    expect(mask == [1] * n + [0] * pads, f"{shown}: attention_mask should be 1 on the {n} real tokens and 0 on the "
                                         f"{pads} pads, got {mask}")
    expect(labels[n:] != [tokenizer.pad_token_id] * pads, f"{shown}: the padding is labelled with the pad id, so "
                                                          "the model would learn to write padding; label pads -100")
    expect(labels[n:] == [-100] * pads, f"{shown}: label every pad -100, got {labels[n:]}")

    eos_pad = tiny_tokenizer(pad_is_eos=True)               # SmolLM2-style: padding with the end token
    out = _row(label_row, eos_pad, PROMPT, RESPONSE, length, "label_row(..., a tokenizer that pads with </s>, ...)")
    expect(out["labels"][n - 1] == eos_pad.eos_token_id and out["labels"][n:] == [-100] * pads,
           "with a tokenizer whose pad token is the end token, the real end token must keep its label and only the "
           "padding gets -100: decide by position (after the example), not by the token id")

    short = len(p) + 3
    shown = f"label_row(prompt, response, tokenizer, length={short}) (shorter than the example)"
    out = _row(label_row, tokenizer, PROMPT, RESPONSE, short, shown)
    expect(out["input_ids"] == (p + r)[:short] and out["attention_mask"] == [1] * short,
           f"{shown}: cut the example to its first {short} tokens (the end of the response goes), no padding")
    expect(out["labels"] == ([-100] * len(p) + r)[:short], f"{shown}: cut the labels exactly as the input_ids")

    prompt2, response2 = "### Instruction:\nWhat is the capital of France?\n### Response:\n", "Paris."
    p2, r2 = _ids(tokenizer, prompt2), _ids(tokenizer, response2) + [tokenizer.eos_token_id]
    out = _row(label_row, tokenizer, prompt2, response2, 20, "label_row(another example, length=20)")
    expect(out["labels"][:len(p2) + len(r2)] == [-100] * len(p2) + r2,
           "on a second example (another prompt length) the labels are wrong: count the prompt's tokens each time")
    return (f"{len(p)} prompt tokens at -100, {len(r)} response tokens (end token included) graded, "
            f"{pads} pads at -100; cutting keeps the first tokens")


# --------------------------------------------------------------------------- q3
@check.exercise(title="Fix it when decoding", tier="stretch",
                hint="`my_answers = instruct.generate(model, tok, half, NEW_TOKENS, TEMPLATE, **my_setting)` (for "
                     "`max_new_tokens`, pass it in place of NEW_TOKENS), compare with `answers['base'][:len(half)]`, "
                     "count with `instruct.error_counts(my_answers, my_instructions, my_references)`, and return the "
                     "dict the task describes. The check recounts your answers, so the counts must be theirs.")
def q3(experiment):
    """experiment: {"setting": dict of generate() arguments, "answers": your answers, "default answers": the
    default's, "instructions", "references", "counts": error counts of your answers, "default counts"}."""
    from .. import instruct

    keys = ("setting", "answers", "default answers", "instructions", "references", "counts", "default counts")
    expect(isinstance(experiment, dict) and all(k in experiment for k in keys),
           f"return a dict with the keys {list(keys)}; got "
           f"{sorted(experiment) if isinstance(experiment, dict) else type(experiment).__name__}")
    setting = experiment["setting"]
    expect(isinstance(setting, dict) and setting, "'setting' should be a non-empty dict of generate() arguments, "
                                                  "e.g. {'no_repeat_ngram_size': 3}")
    from transformers import GenerationConfig

    unknown = [k for k in setting if not hasattr(GenerationConfig(), k)]
    expect(not unknown, f"{unknown} are not generation settings (see transformers.GenerationConfig)")
    for key in ("answers", "default answers", "instructions", "references"):
        value = experiment[key]
        expect(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
               f"'{key}' is {type(value).__name__}; give a list of strings, one per instruction"
               + (" (a generator or map is used up after one pass: wrap it in list(...))"
                  if hasattr(value, "__next__") else ""))
    n = len(experiment["instructions"])
    for key in ("answers", "default answers", "references"):
        expect(len(experiment[key]) == n and n > 0, f"'{key}' has {len(experiment[key])} entries for {n} "
                                                    "instructions: one per instruction, the same instructions")
    expect(list(experiment["answers"]) != list(experiment["default answers"]),
           "your answers are the default's, word for word: either the setting did not reach generate() (pass it as "
           "**my_setting), or it changes nothing here (repetition_penalty=1.0, or max_length, which max_new_tokens "
           "overrides); try a stronger one")
    for mine, answers in (("counts", "answers"), ("default counts", "default answers")):
        recount = instruct.error_counts(experiment[answers], experiment["instructions"], experiment["references"])
        expect(dict(experiment[mine]) == recount, f"'{mine}' {dict(experiment[mine])} differ from a recount of "
                                                  f"'{answers}' {recount}: count with instruct.error_counts")
    mine, default = experiment["counts"], experiment["default counts"]
    changed = ", ".join(f"{e} {default[e]} -> {mine[e]}" for e in instruct.ERRORS if default[e] != mine[e])
    return f"{setting}: {changed or 'no error count changed'} on {n} answers"
