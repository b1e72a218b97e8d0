"""Exercises of session 07 (course/07_choosing_an_approach.ipynb): how many examples fit a context, a k-shot prompt
that fits a token budget, and the learner's own prompt, measured."""
from __future__ import annotations

from numbers import Integral

from .core import Session, call, expect

check = Session("07_choosing_an_approach")


# --------------------------------------------------------------------------- q1
@check.exercise(title="How many examples fit in the context", tier="warm-up",
                hint="The examples get what is left of the context after the bare prompt and the tokens kept for the "
                     "answer: `(context - reserve - base_tokens) / tokens_per_example`, rounded down (a part of an "
                     "example does not fit), and never below 0.")
def q1(max_k):
    """max_k(base_tokens, tokens_per_example, context, reserve) -> int: the most examples that fit."""
    cases = [((55, 57.2, 8192, 8), 142, "session 07's prompt, 55 + 57.2 x k tokens, in SmolLM2's context"),
             ((55, 57.2, 2048, 8), 34, "a 2,048-token context"),
             ((100, 50, 1000, 30), 17, "100 + 17 x 50 + 30 = 980 tokens; one more example is 1,030"),
             ((1000, 10, 1000, 8), 0, "a bare prompt that already fills the context"),
             ((1100, 10, 1000, 8), 0, "a bare prompt 108 tokens over the context, more than an example's 10")]
    for args, want, why in cases:
        shown = f"max_k{args}"
        got = call(max_k, *args, shown=shown)
        expect(isinstance(got, Integral) and not isinstance(got, bool),
               f"{shown} returned {type(got).__name__} {got!r}; return a whole number of examples (`int(...)` or "
               "`//` rounds down)")
        base, per, context, reserve = args
        expect(got >= 0, f"{shown} returned {got}, a negative number of examples: k can't be negative. When not "
                         "even the bare prompt fits, no example fits: return 0 (`max(0, ...)`)")
        if got == round((context - reserve - base) / per) and got != want:
            expect(False, f"{shown} returned {got}, rounded to the nearest; round down: {want} examples fit, one "
                          "more would not")
        if got != want and got == int((context - base) // per):
            expect(False, f"{shown} returned {got}: keep `reserve` tokens free for the answer; {want} fit")
        if got != want and got == int((context - reserve) // per):
            expect(False, f"{shown} returned {got}: the bare prompt (base_tokens) takes space too; {want} fit")
        expect(got == want, f"{shown} returned {got}; {want} examples fit ({why})")
    return "142 examples fit in SmolLM2's 8,192 tokens: space does not limit k = 8 here, time does"


# --------------------------------------------------------------------------- q2
class WordTokenizer:
    """A tokenizer fixture with one token per whitespace-separated word (or per character with `chars=True`),
    called as a Hugging Face tokenizer is: `tok(text, add_special_tokens=False)["input_ids"]`, `tok.encode(text)`,
    `tok.tokenize(text)`. Like BERT's, it adds two special tokens (start, end) unless `add_special_tokens=False`."""

    def __init__(self, chars: bool = False):
        self.chars = chars
        self.calls = 0

    def tokenize(self, text, **kwargs):
        self.calls += 1
        return list(text) if self.chars else text.split()

    def __call__(self, text, add_special_tokens=True, **kwargs):
        if isinstance(text, (list, tuple)):
            return {"input_ids": [self(t, add_special_tokens)["input_ids"] for t in text]}
        ids = list(range(1, len(self.tokenize(text)) + 1))
        return {"input_ids": [0] + ids + [0] if add_special_tokens else ids}     # 0: start and end, as BERT's

    def encode(self, text, add_special_tokens=True, **kwargs):
        return self(text, add_special_tokens)["input_ids"]


POOL = [{"text": t, "label": y} for t, y in [
    ("a warm, funny and moving film", 1), ("dull and far too long", 0), ("the best thing I saw this year", 1),
    ("a mess of a movie", 0), ("sharp writing and a great cast", 1), ("I checked my watch every ten minutes", 0),
    ("quietly brilliant", 1), ("flat jokes, flat acting", 0), ("a joy from start to finish", 1),
    ("not worth the ticket", 0)]]
QUERY = "an uneven but likable comedy"


# (count characters?, budget, seed): 3 and 4 examples fit by words, 2 by characters, and the whole pool. A budget
# (k, spare) is the token count of the k-example prompt plus `spare`: with 1 spare, counting the tokenizer's two special
# tokens loses the k-th example; with none, the k-example prompt fits exactly (`<` instead of `<=` loses it)
CASES_Q2 = ((False, 100, 0), (False, 130, 3), (True, 500, 1), (False, 10_000, 0), (False, (3, 1), 2), (False, (3, 0), 2))


def _n(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _examples_in(prompt: str) -> int:
    return prompt.count("### Response:") - 1


def _largest_k(shown: str, k: int, n: int, more: int, more_with_specials: int, budget: int) -> None:
    """Fail when k + 1 examples (`more` tokens, `more_with_specials` with the tokenizer's special tokens) fit too."""
    if more > budget:
        return
    expect(more < budget, f"{shown} stopped at {k} examples ({n} tokens), but {k + 1} take exactly {budget} tokens, "
                          f"which fits: the count must be at most the budget (`<=`, not `<`)")
    expect(more_with_specials <= budget,
           f"{shown} stopped at {k} examples, but {k + 1} fit: {more} tokens, counted as the task says, "
           f"`len(tokenizer(text, add_special_tokens=False)['input_ids'])`. You counted the tokenizer's special "
           f"tokens too ({more_with_specials}); the prompt is a part of the model's input, so count without them")
    expect(False, f"{shown} stopped at {k} examples ({n} tokens), but {k + 1} fit too ({more} of {budget} tokens): "
                  "take the largest k that fits")


@check.exercise(title="A k-shot prompt that fits a token budget", tier="core",
                hint="Start from the bare prompt `choose.few_shot_prompt(query, [], tokenizer)`; then for k = 1, 2, "
                     "... build `choose.few_shot_prompt(query, choose.draw_shots(pool, k, seed), tokenizer)` and count "
                     "its tokens with the tokenizer you were given (`add_special_tokens=False`); keep the last one that fits. If the bare prompt "
                     "is already over the budget, raise a ValueError that says so.")
def q2(fit_k_shot):
    """fit_k_shot(query, pool, tokenizer, budget, seed) -> str: the prompt with the most examples (drawn with
    `choose.draw_shots(pool, k, seed)`) whose token count is at most `budget`."""
    from .. import choose

    for chars, budget, seed in CASES_Q2:
        tok = WordTokenizer(chars)
        if isinstance(budget, tuple):
            k, spare = budget
            budget = _n(tok, choose.few_shot_prompt(QUERY, choose.draw_shots(POOL, k, seed), tok)) + spare
        unit = "characters" if chars else "words"
        shown = f"fit_k_shot(query, pool, tokenizer counting {unit}, budget={budget}, seed={seed})"
        prompt = call(fit_k_shot, QUERY, POOL, tok, budget, seed, shown=shown)
        expect(isinstance(prompt, str), f"{shown} returned {type(prompt).__name__}; return the prompt text (a str)")
        expect(tok.calls > 0, f"{shown} never called the tokenizer: count tokens with the tokenizer you are given, "
                              "not characters or words of your own")
        bare = choose.few_shot_prompt(QUERY, [], tok)
        expect(prompt.endswith(bare) and prompt.count(QUERY) == 1,
               f"{shown}: the prompt must end with the query's own turn (its review, then '### Response:'), after "
               f"the examples; it ends with ...{prompt[-80:]!r}")
        n = _n(tok, prompt)
        expect(n <= budget, f"{shown} returned a prompt of {n} tokens, over the budget of {budget}")
        k = _examples_in(prompt)
        expect(prompt == choose.few_shot_prompt(QUERY, choose.draw_shots(POOL, k, seed), tok),
               f"{shown}: the {k} examples are not `choose.draw_shots(pool, {k}, seed)` in session 07's prompt "
               "format; build the prompt with `choose.few_shot_prompt(query, shots, tokenizer)`")
        if k < len(POOL):
            more = choose.few_shot_prompt(QUERY, choose.draw_shots(POOL, k + 1, seed), tok)
            _largest_k(shown, k, n, _n(tok, more), len(tok(more)["input_ids"]), budget)
        again = call(fit_k_shot, QUERY, POOL, WordTokenizer(chars), budget, seed, shown=shown)
        expect(again == prompt, f"{shown} returned another prompt when called again: draw with the seed")
    tok = WordTokenizer()
    small = _n(tok, choose.few_shot_prompt(QUERY, [], tok)) - 1
    shown = f"fit_k_shot(query, pool, tokenizer, budget={small}, seed=0)"
    try:
        returned = fit_k_shot(QUERY, POOL, tok, small, 0)
    except ValueError as err:
        expect(str(small) in str(err), f"{shown} raised ValueError({str(err)!r}); say the budget ({small}) in the "
                                       "message, so the reader knows what to raise")
    except Exception as err:        # noqa: BLE001 (the learner's error, reported)
        expect(False, f"{shown} raised {type(err).__name__}: {err}; raise a ValueError naming the budget instead")
    else:
        expect(False, f"{shown} returned {'a prompt' if isinstance(returned, str) else repr(returned)[:40]}, but even "
                      f"the bare prompt is over {small} tokens: raise a ValueError that names the budget")
    return "the most examples that fit, counted with the tokenizer given, the query last; too small a budget refused"


# --------------------------------------------------------------------------- q3
@check.exercise(title="Your own prompt, measured", tier="stretch",
                hint="Write an instruction with a {text} slot (and, if you like, an answer start to prefill), then "
                     "`my_run = choose.kshot_eval(model, tok, test_rows, pool, 0, instruction=..., answer_prefix=...)` "
                     "and print its accuracy next to the course prompt's. Score at least 50 held-out reviews.")
def q3(my_run):
    """my_run: the row `choose.kshot_eval` returned for the learner's prompt on the held-out reviews."""
    import numpy as np

    from .. import choose

    expect(isinstance(my_run, choose.Scored),
           f"got {type(my_run).__name__}; pass the row `choose.kshot_eval(...)` returned for your prompt (it keeps "
           "the prompts and scores the check needs)")
    n = len(my_run.prompts)
    expect(n >= 50, f"your run scored {n} reviews; score at least 50 held-out reviews (test_rows), or a difference "
                    "of a few points is noise")
    expect(my_run.scores.shape == (n, len(choose.LABEL_WORDS)) and len(my_run.labels) == n,
           "the run's scores and labels do not match its prompts; pass the row kshot_eval returned, unchanged")
    recomputed = float(np.mean(my_run.scores.argmax(axis=1) == my_run.labels))
    expect(abs(recomputed - my_run["accuracy"]) < 1e-9,
           f"the accuracy {my_run['accuracy']:.3f} is not the share of the run's predictions that match its labels "
           f"({recomputed:.3f}); do not edit the row")
    head = choose.few_shot_prompt("", [], None).split("Review:")[0]        # session 05's instruction, unchanged
    unchanged = all(p.startswith(head) and p.endswith("### Response:\n") and p.count("### Response:") == 1
                    for p in my_run.prompts)
    expect(not unchanged, "these are the course's zero-shot prompts, unchanged: write your own instruction (with a "
                          "{text} slot), an answer start to prefill, or both")
    expect(my_run["prompt tokens"] > 0 and my_run["k"] >= 0, "the run reports no prompt tokens; use kshot_eval")
    return (f"your prompt: accuracy {my_run['accuracy']:.3f} on {n} reviews, {my_run['prompt tokens']:.0f} tokens "
            "per prompt")
