"""The machinery every session's exercises share: exercises, check results, modes and the progress summary.

A session module declares its exercises with `Session.exercise`; a notebook calls `check.q1(answer)`. A check
returns a `Result` (passed / failed with what is wrong / not attempted) that Jupyter shows as HTML, with a
plain-text fallback. How a check behaves beyond showing its result depends on `FTKIT_CHECKS`, read at every check:

* `learner` (unset, outside pytest): show the result, never raise (a learner's function that raises is a failed
  check);
* `strict` (the course notebooks with solutions under nbval; unset under pytest): anything but a pass raises an
  AssertionError;
* `unattempted` (the student copies): anything but "not attempted" raises, so a copy that passes is caught.

The guide for exercise writers, with a complete example, is README.md in this folder.
"""
from __future__ import annotations

import ast
import dis
import html
import inspect
import os
import re
import sys
import sysconfig
import textwrap
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ENV = "FTKIT_CHECKS"
MODES = ("learner", "strict", "unattempted")
TIERS = ("warm-up", "core", "stretch")
PLACEHOLDER = "...  # your code here"
PASSED, FAILED, NOT_ATTEMPTED, NOT_RUN = "passed", "failed", "not attempted", "not run yet"
_NAME = re.compile(r"q[1-9][0-9]*")


class Fail(Exception):
    """What is wrong with an answer, in the learner's words. Raised by `expect` and `call` inside a check."""


def expect(condition, message: str) -> None:
    """Fail the check with `message` unless `condition` holds. Say what is wrong and, if you can, what to do."""
    if not condition:
        raise Fail(message)


def call(fn, *args, shown: str | None = None, **kwargs):
    """Call the learner's function `fn(*args, **kwargs)`; if it raises, fail the check naming the exception.

    `shown` is how the call reads in the message, e.g. "count_trainable(nn.Linear(384, 2))"; by default
    "name(...)". A non-callable answer fails with a message that says to pass the function itself.
    """
    label = shown or f"{getattr(fn, '__name__', 'your function')}(...)"
    if not callable(fn):
        raise Fail(f"expected a function, got {_short(fn)}: pass the function itself, without calling it")
    try:
        return fn(*args, **kwargs)
    except Fail:
        raise
    except Exception as exc:  # the learner's code: any exception is a failed check, never a traceback
        raise Fail(f"`{label}` raised {_exception(exc)}") from exc


def mode() -> str:
    """The check mode from FTKIT_CHECKS; unset, "strict" under pytest (a notebook that nbval runs on its own, as the
    smoke profile is chosen there) and "learner" everywhere else. ValueError for an unknown mode."""
    default = "strict" if "PYTEST_CURRENT_TEST" in os.environ else "learner"
    value = os.environ.get(ENV, "").strip().lower() or default
    if value not in MODES:
        raise ValueError(f"{ENV}={value!r} is not a check mode: use one of {', '.join(MODES)} (unset: learner, or strict under pytest)")
    return value


@dataclass(frozen=True)
class Result:
    """One check's outcome: `status` is "passed", "failed" or "not attempted"; `message` says why."""

    exercise: "Exercise"
    status: str
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __repr__(self) -> str:
        head = f"[{self.status}] check.{self.exercise.name} · {self.exercise.title}"
        return f"{head}\n{self.message}" if self.message else head

    def _repr_html_(self) -> str:
        icon, color = _STYLE[self.status]
        return (f'<div class="ftkit-check ftkit-check-{self.status.replace(" ", "-")}" style="border-left:4px solid '
                f'{color};padding:4px 10px;margin:4px 0;background:{color}1a"><b>{icon} {self.status}</b> · '
                f'<code>check.{self.exercise.name}</code> · {html.escape(self.exercise.title)}'
                + (f"<br>{_markup(self.message)}" if self.message else "") + "</div>")


@dataclass(frozen=True)
class Note:
    """A hint or a pointer to the solution, shown as HTML in Jupyter and as text elsewhere."""

    kind: str
    text: str

    def __repr__(self) -> str:
        return f"{self.kind}: {self.text}"

    def _repr_html_(self) -> str:
        return (f'<div class="ftkit-note" style="border-left:4px solid #1f77b4;padding:4px 10px;margin:4px 0">'
                f"<b>{html.escape(self.kind)}</b>: {_markup(self.text)}</div>")


_STYLE = {PASSED: ("✔", "#2ca02c"), FAILED: ("✘", "#d62728"), NOT_ATTEMPTED: ("○", "#7f7f7f"),
          NOT_RUN: ("·", "#7f7f7f")}


class Exercise:
    """One exercise: `ex(answer)` checks, `ex.hint()`, `ex.solution()`. Made by `Session.exercise`."""

    def __init__(self, session: "Session", name: str, title: str, tier: str, hint: str,
                 checker: Callable[[Any], str | None]):
        if not _NAME.fullmatch(name):
            raise ValueError(f"exercise name {name!r}: use q1, q2, ... (the notebook calls check.{name})")
        if tier not in TIERS:
            raise ValueError(f"exercise {name}: tier {tier!r} is not one of {', '.join(TIERS)}")
        if not title.strip() or not hint.strip():
            raise ValueError(f"exercise {name}: give it a title and a hint")
        self.session, self.name, self.title, self.tier, self._hint = session, name, title, tier, hint
        self.checker = checker
        self.number = int(name[1:])
        self.last: Result | None = None

    @property
    def heading(self) -> str:
        """The markdown heading of the exercise's task cell: `### Exercise N · title`."""
        return f"Exercise {self.number} · {self.title}"

    def __repr__(self) -> str:
        return f"<exercise check.{self.name} · {self.title} ({self.tier}) of {self.session.notebook}>"

    def __call__(self, answer) -> Result:
        result = self.evaluate(answer)
        self.last = result
        _enforce(result, mode())
        return result

    def evaluate(self, answer) -> Result:
        """The result without recording it or applying the mode (what tests compare)."""
        try:
            why = unattempted(answer)
        except Exception:  # an exotic object that resists inspection: it was attempted, the check decides
            why = None
        if why is not None:
            return Result(self, NOT_ATTEMPTED, f"{why}: write your code where it says `{PLACEHOLDER}`, then run "
                                               f"the cell again (`check.{self.name}.hint()` gives a hint).")
        try:
            with _isolated():
                note = self.checker(answer)
        except Fail as wrong:
            return Result(self, FAILED, str(wrong))
        except Exception as exc:  # e.g. an answer of the wrong type that the check used
            return Result(self, FAILED, f"checking your answer stopped on {_exception(exc)}")
        return Result(self, PASSED, note or "")

    def hint(self) -> Note:
        return Note(f"hint for check.{self.name}", self._hint)

    def solution(self) -> Note:
        return Note(f"solution of check.{self.name}",
                    f"the reference solution is in the course notebook `course/{self.session.notebook}.ipynb`, in "
                    f"the folded code cell titled *Reference solution* under **{self.heading}** (JupyterLab: "
                    f"click its •••; Colab: *Show code*). In a student copy (`course/student/`) that notebook is "
                    f"`../{self.session.notebook}.ipynb`. Try first: a failed check says what is wrong.")


class Session:
    """The exercises of one session: `check = Session("01_feature_vs_parameter_tuning")` in its module.

    `check.q1(answer)` checks an answer, `check.q1.hint()`, `check.q1.solution()`, and `check.summary()` shows
    each exercise's title, tier and status in this kernel.
    """

    def __init__(self, notebook: str):
        self.notebook = notebook
        self._exercises: dict[str, Exercise] = {}

    def exercise(self, *, title: str, tier: str, hint: str):
        """Decorator: the decorated function `qN(answer)` becomes exercise `qN` of this session.

        The function checks the answer with `expect(...)`/`call(...)` (which raise `Fail` with a message) and
        may return a short note shown on a pass. It runs on small fixtures, offline, in well under a second.
        """
        def register(checker):
            name = checker.__name__
            if name in self._exercises:
                raise ValueError(f"{self.notebook}: exercise {name} is declared twice")
            exercise = Exercise(self, name, title, tier, hint, checker)
            self._exercises[name] = exercise
            return exercise
        return register

    @property
    def exercises(self) -> list[Exercise]:
        return sorted(self._exercises.values(), key=lambda e: e.number)

    def __getattr__(self, name: str) -> Exercise:
        exercises = self.__dict__.get("_exercises", {})
        if name in exercises:
            return exercises[name]
        raise AttributeError(f"{self.__dict__.get('notebook', 'this session')} has no exercise {name!r}; "
                             f"it has: {', '.join(exercises) or 'none yet'}")

    def __dir__(self):
        return [*super().__dir__(), *self._exercises]

    def __repr__(self) -> str:
        return f"<exercises of {self.notebook}: {', '.join(self._exercises) or 'none yet'}>"

    def summary(self) -> "Summary":
        return Summary(self.notebook, [(e, e.last.status if e.last else NOT_RUN) for e in self.exercises])


@dataclass(frozen=True)
class Summary:
    """Progress in one session: each exercise's title, tier and status in this kernel."""

    notebook: str
    rows: list

    def counts(self) -> str:
        done = sum(status == PASSED for _, status in self.rows)
        return f"{done} of {len(self.rows)} exercises passed"

    def __repr__(self) -> str:
        lines = [f"{self.notebook}: {self.counts()}"]
        lines += [f"  {_STYLE[s][0]} check.{e.name:<4} {e.tier:<8} {s:<14} {e.title}" for e, s in self.rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><td><code>check.{e.name}</code></td><td>{html.escape(e.title)}</td><td>{e.tier}</td>"
                       f'<td style="color:{_STYLE[s][1]}">{_STYLE[s][0]} {s}</td></tr>' for e, s in self.rows)
        return (f'<div class="ftkit-summary"><b>{html.escape(self.notebook)}</b>: {self.counts()}'
                f"<table><tr><th>check</th><th>exercise</th><th>tier</th><th>status</th></tr>{body}</table></div>")


def unattempted(answer) -> str | None:
    """Why `answer` counts as not attempted, or None. Not attempted: `...`, None, a function whose body is only
    the placeholder (`...`, `pass`, a docstring), or a class with such a method or a `...` attribute."""
    if answer is None or answer is Ellipsis:
        return f"the answer is still `{'...' if answer is Ellipsis else None}`"
    if inspect.isclass(answer):
        for name, member in vars(answer).items():
            if member is Ellipsis or (inspect.isfunction(member) and _is_placeholder_function(member)):
                return f"`{answer.__name__}.{name}` is still the placeholder"
        return None
    function = getattr(answer, "__func__", answer)         # a bound method
    function = getattr(function, "func", function)         # a functools.partial
    if inspect.isfunction(function) and _is_placeholder_function(function):
        return f"the body of `{function.__name__}` is still the placeholder"
    return None


def _is_placeholder_function(fn) -> bool:
    """True when the function's body does nothing but `...`/`pass` (a docstring aside). Read from its source
    (IPython keeps notebook cells' source); without source, from the bytecode of an empty function."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        node = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    except (OSError, TypeError, SyntaxError, StopIteration):
        return _returns_only_a_placeholder(fn)
    body = node.body[1:] if _is_docstring(node.body[0]) else node.body
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                             and s.value.value is Ellipsis) for s in body)


def _is_docstring(statement) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
        and isinstance(statement.value.value, str)


def _returns_only_a_placeholder(fn) -> bool:
    """From the bytecode: the function does nothing but return None or `...` (any Python version)."""
    ops = [i for i in dis.get_instructions(fn) if i.opname not in ("RESUME", "NOP", "CACHE", "COPY_FREE_VARS",
                                                                   "MAKE_CELL")]
    if [i.opname for i in ops] == ["LOAD_CONST", "RETURN_VALUE"] or [i.opname for i in ops] == ["RETURN_CONST"]:
        return ops[0].argval is None or ops[0].argval is Ellipsis
    return False


def _enforce(result: Result, current: str) -> None:
    """strict: only a pass goes on; unattempted: only "not attempted" goes on (a student copy must not pass)."""
    where = f"check.{result.exercise.name} ({result.exercise.session.notebook}, {result.exercise.heading})"
    if current == "strict" and result.status != PASSED:
        raise AssertionError(f"{where} {result.status} with the reference solution: {result.message}")
    if current == "unattempted" and result.status != NOT_ATTEMPTED:
        raise AssertionError(f"{where} {result.status} in a student copy, where every check must report 'not "
                             f"attempted' (was a solution region left in, or a check made to pass without an "
                             f"answer?): {result.message}")


@contextmanager
def _isolated():
    """Run a check without touching the notebook's state: random generators (Python, NumPy, torch CPU) and
    torch's grad mode are restored afterwards, so a check never changes the numbers of later cells."""
    import random

    saved = [random.getstate()]
    numpy, torch = sys.modules.get("numpy"), sys.modules.get("torch")
    if numpy is not None:
        saved.append(numpy.random.get_state())
    if torch is not None:
        saved += [torch.get_rng_state(), torch.is_grad_enabled()]
    try:
        yield
    finally:
        random.setstate(saved[0])
        if numpy is not None:
            numpy.random.set_state(saved[1])
        if torch is not None:
            torch.set_rng_state(saved[-2])
            torch.set_grad_enabled(saved[-1])


_LIBRARY_DIRS = tuple({str(Path(p).resolve()) for p in (sysconfig.get_paths()["stdlib"],
                                                        sysconfig.get_paths()["purelib"],
                                                        sysconfig.get_paths()["platlib"])}
                      | {str(Path(__file__).resolve().parents[1])})


def _exception(exc: BaseException) -> str:
    """`TypeError: message`, and the learner's line where it happened if the traceback passes through it."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.line and not str(Path(f.filename).resolve()).startswith(_LIBRARY_DIRS)]
    return f"{text} (at `{frames[-1].line.strip()}`)" if frames else text


def _short(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _markup(text: str) -> str:
    """Escape `text` for HTML, then show `code` and **bold** as such."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text).replace("\n", "<br>")
