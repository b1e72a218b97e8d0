"""ftkit.exercises: the check machinery, and a right and a wrong answer for every exercise of every session.

To add your session's exercises' answers, append a block to CASES below (see "Right and wrong answers"):
`right(module, "qN", answer)` must pass and `wrong(module, "qN", answer, "part of the message")` must fail with
that message. test_every_exercise_has_a_right_and_a_wrong_answer fails until each exercise has both.
"""
from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from ftkit import exercises
from ftkit.exercises import FAILED, NOT_ATTEMPTED, PASSED, Fail, Session, call, expect, unattempted
from ftkit.exercises import fixtures, notebooks

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------------------------
# Right and wrong answers of every exercise. One block per session; an answer is a value, a function or a class, as
# the notebook's check call receives it. `wrong(...)`'s last argument is a fragment of the message the learner sees,
# so a check that fails for the wrong reason (or says only "wrong") is caught.
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    module: str
    exercise: str
    answer: object
    message: str | None         # None: the answer must pass

    def __str__(self):
        kind = "right" if self.message is None else f"wrong:{self.message[:30]}"
        return f"{self.module}.{self.exercise}:{kind}:{getattr(self.answer, '__name__', repr(self.answer)[:20])}"


def right(module, exercise, answer):
    return Case(module, exercise, answer, None)


def wrong(module, exercise, answer, message):
    return Case(module, exercise, answer, message)


# --- 00 start: q1 count_trainable(model) -> int -------------------------------------------------------------------
def count_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_trainable_numpy_int(model):
    import numpy as np

    return np.int64(sum(p.numel() for p in model.parameters() if p.requires_grad))


def count_all(model):
    return sum(p.numel() for p in model.parameters())


def count_weights_only(model):
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias"))


def count_state_dict(model):
    return sum(t.numel() for t in model.state_dict().values())


def count_as_float(model):
    return float(count_trainable(model))


def count_and_unfreeze(model):
    model.requires_grad_(True)
    return count_trainable(model)


def count_with_a_typo(model):
    return sum(p.numel() for p in model.parameter())


CASES = [
    right("start", "q1", count_trainable),
    right("start", "q1", count_trainable_numpy_int),
    wrong("start", "q1", count_all, "counts the frozen layer too"),
    wrong("start", "q1", count_weights_only, "the weight matrix alone"),
    wrong("start", "q1", count_state_dict, "every tensor of `state_dict()`"),
    wrong("start", "q1", count_as_float, "return a Python int"),
    wrong("start", "q1", count_and_unfreeze, "do not freeze or unfreeze"),
    wrong("start", "q1", count_with_a_typo, "raised AttributeError"),
    wrong("start", "q1", 770, "pass the function itself"),
]
# --- 01 tuning ... 07 choose: add a block per session here -----------------------------------------------------


def _exercise(module, name):
    return getattr(exercises.session(module), name)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_a_right_answer_passes_and_a_wrong_one_fails_with_its_message(case):
    result = _exercise(case.module, case.exercise).evaluate(case.answer)
    if case.message is None:
        assert result.status == PASSED, result
    else:
        assert result.status == FAILED and case.message in result.message, result


def all_exercises():
    return [e for module in exercises.SESSIONS.values() for e in exercises.session(module).exercises]


def test_every_exercise_has_a_right_and_a_wrong_answer():
    module_of = {e: m for m in exercises.SESSIONS.values() for e in exercises.session(m).exercises}
    for exercise in all_exercises():
        cases = [c for c in CASES if (c.module, c.exercise) == (module_of[exercise], exercise.name)]
        assert any(c.message is None for c in cases), f"{exercise}: add a right answer to CASES"
        assert any(c.message is not None for c in cases), f"{exercise}: add a wrong answer (and its message) to CASES"


@pytest.mark.parametrize("exercise", all_exercises(), ids=lambda e: f"{e.session.notebook}.{e.name}")
def test_every_exercise_reports_the_placeholder_as_not_attempted(exercise):
    def answer(*args):
        """As in a student copy."""
        ...  # your code here

    for placeholder in (..., None, answer):
        assert exercise.evaluate(placeholder).status == NOT_ATTEMPTED


@pytest.mark.parametrize("module", exercises.SESSIONS.values())
def test_the_notebook_calls_every_exercise_of_its_session_under_its_heading(module):
    check = exercises.session(module)
    path = ROOT / "course" / f"{check.notebook}.ipynb"
    assert path.exists(), f"ftkit.exercises.{module} names a notebook that does not exist: {path}"
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if notebooks.is_exercise_cell(c)]
    called = [m for c in cells for m in re.findall(r"\bcheck\.(q[0-9]+)\(", c.source)]
    declared = [e.name for e in check.exercises]
    assert sorted(called) == sorted(declared), f"{path.name} checks {called}; {module}.py declares {declared}"
    if declared:
        assert any(f"from ftkit.exercises.{module} import check" in c.source for c in nb.cells if c.cell_type == "code")
    headings = [c.source for c in nb.cells if c.cell_type == "markdown"]
    for exercise in check.exercises:
        assert any(re.search(rf"^### {re.escape(exercise.heading)}\b", s, re.M) for s in headings), \
            f"{path.name}: no markdown heading '### {exercise.heading}' (check.{exercise.name}.solution() points there)"


# ----------------------------------------------------------------------------------------------------------------
# The machinery, on a toy session.
# ----------------------------------------------------------------------------------------------------------------
toy = Session("99_toy")


@toy.exercise(title="Double it", tier="warm-up", hint="Multiply by 2.")
def q1(double):
    for x in (0, 3, -2):
        y = call(double, x, shown=f"double({x})")
        expect(y == 2 * x, f"double({x}) returned {y!r}; expected {2 * x}")
    return "double(x) == 2 * x"


@toy.exercise(title="A random draw", tier="core", hint="Anything goes.")
def q2(value):
    torch.rand(5)          # checks may draw numbers: the notebook's random state is restored afterwards
    random.random()
    torch.set_grad_enabled(False)
    expect(value == 1, f"got {value}")


def double(x):
    return 2 * x


def half_double(x):
    return x


def double_placeholder(x):
    ...  # your code here


def double_raises(x):
    return {}[x]


@pytest.fixture()
def learner(monkeypatch):
    monkeypatch.setenv("FTKIT_CHECKS", "learner")       # unset would mean strict under pytest


def test_the_three_outcomes_say_what_happened(learner):
    assert toy.q1(double).status == PASSED and toy.q1(double).message == "double(x) == 2 * x"
    fail = toy.q1(half_double)
    assert fail.status == FAILED and fail.message == "double(3) returned 3; expected 6"
    skipped = toy.q1(double_placeholder)
    assert skipped.status == NOT_ATTEMPTED and "`double_placeholder` is still the placeholder" in skipped.message
    assert "check.q1.hint()" in skipped.message


def test_a_learner_function_that_raises_is_a_fail_naming_the_exception_and_the_line(learner):
    result = toy.q1(double_raises)
    assert result.status == FAILED
    assert result.message == "`double(0)` raised KeyError: 0 (at `return {}[x]`)"


def test_an_answer_of_the_wrong_kind_is_a_fail_not_a_traceback(learner):
    assert "pass the function itself" in toy.q1(4).message
    result = toy.q2("x")                    # the checker compares "x" == 1: a plain fail
    assert result.status == FAILED and result.message == "got x"

    class Weird:
        def __eq__(self, other):
            raise TypeError("cannot compare")

    result = toy.q2(Weird())
    assert result.status == FAILED and result.message.startswith("checking your answer stopped on TypeError: "
                                                                 "cannot compare")


def test_strict_mode_raises_on_anything_but_a_pass(monkeypatch):
    monkeypatch.setenv("FTKIT_CHECKS", "strict")
    assert toy.q1(double).passed
    with pytest.raises(AssertionError, match=r"check.q1 \(99_toy, Exercise 1 · Double it\) failed with the "
                                             r"reference solution: double\(3\) returned 3"):
        toy.q1(half_double)
    with pytest.raises(AssertionError, match="not attempted"):
        toy.q1(...)


def test_unattempted_mode_raises_on_a_pass_and_on_a_fail(monkeypatch):
    monkeypatch.setenv("FTKIT_CHECKS", "unattempted")
    assert toy.q1(double_placeholder).status == NOT_ATTEMPTED
    with pytest.raises(AssertionError, match="passed in a student copy"):
        toy.q1(double)
    with pytest.raises(AssertionError, match="failed in a student copy"):
        toy.q1(half_double)


def test_the_mode_is_read_at_every_check_and_defaults_to_strict_under_pytest_only(monkeypatch):
    monkeypatch.delenv("FTKIT_CHECKS", raising=False)
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "x")
    assert exercises.mode() == "strict"
    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    assert exercises.mode() == "learner"
    assert toy.q1(half_double).status == FAILED          # learner: shown, not raised
    monkeypatch.setenv("FTKIT_CHECKS", "loud")
    with pytest.raises(ValueError, match="FTKIT_CHECKS='loud' is not a check mode: use one of learner, strict"):
        exercises.mode()


def test_a_check_leaves_the_notebooks_random_state_and_grad_mode_alone(learner):
    torch.manual_seed(1)
    random.seed(1)
    expected = (torch.rand(3), random.random())
    torch.manual_seed(1)
    random.seed(1)
    assert toy.q2(1).passed
    assert torch.is_grad_enabled()
    after = (torch.rand(3), random.random())
    assert torch.equal(after[0], expected[0]) and after[1] == expected[1]


def test_summary_shows_each_exercise_tier_and_status(learner):
    session = Session("98_toy")
    session.exercise(title="One", tier="warm-up", hint="h")(q1.checker)
    session.exercise(title="Two <b>", tier="stretch", hint="h")(q2.checker)
    assert [status for _, status in session.summary().rows] == ["not run yet", "not run yet"]
    session.q1(double)
    session.q2(0)
    summary = session.summary()
    assert [status for _, status in summary.rows] == [PASSED, FAILED]
    assert summary.counts() == "1 of 2 exercises passed"
    assert "check.q1   warm-up  passed" in repr(summary) and "check.q2   stretch  failed" in repr(summary)
    assert "Two &lt;b&gt;" in summary._repr_html_() and "<td>stretch</td>" in summary._repr_html_()
    session.q2(1)
    assert session.summary().counts() == "2 of 2 exercises passed"


def test_results_hints_and_solutions_display_as_html_and_text(learner):
    result = toy.q1(half_double)
    assert repr(result) == "[failed] check.q1 · Double it\ndouble(3) returned 3; expected 6"
    html = result._repr_html_()
    assert 'class="ftkit-check ftkit-check-failed"' in html and "double(3) returned 3" in html
    assert "<code>x</code> &lt; 2" in exercises.core._markup("`x` < 2")
    assert repr(toy.q1.hint()) == "hint for check.q1: Multiply by 2."
    solution = repr(toy.q1.solution())
    assert "course/99_toy.ipynb" in solution and "Exercise 1 · Double it" in solution


def test_a_session_refuses_a_bad_declaration_and_names_its_exercises():
    session = Session("97_toy")
    session.exercise(title="One", tier="core", hint="h")(q1.checker)
    with pytest.raises(ValueError, match="declared twice"):
        session.exercise(title="One", tier="core", hint="h")(q1.checker)
    with pytest.raises(ValueError, match="tier 'hard' is not one of warm-up, core, stretch"):
        Session("x").exercise(title="t", tier="hard", hint="h")(q1.checker)

    def exercise_one(answer):
        ...
    with pytest.raises(ValueError, match="use q1, q2"):
        Session("x").exercise(title="t", tier="core", hint="h")(exercise_one)
    with pytest.raises(AttributeError, match="97_toy has no exercise 'q7'; it has: q1"):
        session.q7


class Placeholders:
    def method(self):
        ...  # your code here

    def done(self):
        return 1


def placeholder_with_docstring(x):
    """Returns twice x."""
    ...  # your code here


def placeholder_pass(x):
    pass


def make_closure():
    y = 2

    def inner(x):
        return x * y
    return inner


@pytest.mark.parametrize("answer, why", [
    (..., "the answer is still `...`"),
    (None, "the answer is still `None`"),
    (double_placeholder, "the body of `double_placeholder` is still the placeholder"),
    (placeholder_with_docstring, "the body of `placeholder_with_docstring`"),
    (placeholder_pass, "the body of `placeholder_pass`"),
    (lambda x: ..., "the body of `<lambda>`"),            # no parsable source of its own: read from the bytecode
    (Placeholders().method, "the body of `method`"),
    (Placeholders, "`Placeholders.method` is still the placeholder"),
    (functools.partial(double_placeholder, 1), "the body of `double_placeholder`"),
])
def test_placeholders_are_not_attempted(answer, why):
    assert why in unattempted(answer)


@pytest.mark.parametrize("answer", [0, "", [], double, lambda x: 2 * x, make_closure(), Placeholders().done,
                                    functools.partial(double, 1), nn.Linear(2, 2)])
def test_answers_are_attempted(answer):
    assert unattempted(answer) is None


def test_a_function_without_source_is_read_from_its_bytecode():
    space = {}
    exec("def empty(x):\n    ...\ndef full(x):\n    return x\ndef const(x):\n    return 5\n", space)
    assert unattempted(space["empty"]) is not None
    assert unattempted(space["full"]) is None and unattempted(space["const"]) is None


def test_fail_and_expect():
    expect(True, "never shown")
    with pytest.raises(Fail, match="shown"):
        expect(False, "shown")


@pytest.mark.parametrize("architecture, block", [
    ("bert", "bert.encoder.layer.1.attention.self.query.weight"),
    ("distilbert", "distilbert.transformer.layer.1.attention.q_lin.weight")])
def test_fixture_classifiers_are_real_architectures(architecture, block):
    model = fixtures.tiny_classifier(architecture, num_labels=3)
    names = dict(model.named_parameters())
    assert block in names and model.config.num_labels == 3
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3)
    again = fixtures.tiny_classifier(architecture, num_labels=3)
    assert torch.equal(dict(again.named_parameters())[block], names[block])      # seeded


def test_fixture_causal_lm_and_a_bad_architecture():
    model = fixtures.tiny_causal_lm()
    assert "model.layers.0.self_attn.q_proj.weight" in dict(model.named_parameters())
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 64)
    with pytest.raises(ValueError, match="architecture 'gpt' is not one of bert, distilbert"):
        fixtures.tiny_classifier("gpt")


def test_session_lookup():
    assert exercises.session("start").notebook == "00_start_here"
    with pytest.raises(ValueError, match="no exercise module 'nope'"):
        exercises.session("nope")
