"""Exercises with instant offline checks, one module per session (named after the session's ftkit module).

In a notebook::

    from ftkit.exercises.tuning import check
    check.q1(answer)        # passed / failed with what is wrong / not attempted
    check.q1.hint()
    check.q1.solution()     # where the folded reference solution is
    check.summary()         # each exercise's title, tier and status

`python -m ftkit student OUT_DIR` writes the student copies. The guide for exercise writers (cell layout, rules,
a complete example, the tests to add) is README.md in this folder.
"""
from .core import (ENV, FAILED, MODES, NOT_ATTEMPTED, PASSED, PLACEHOLDER, TIERS, Exercise, Fail, Result, Session,
                   call, expect, mode, unattempted)

# session number -> the module under ftkit.exercises (the session's ftkit module name; 00 is "start")
SESSIONS = {"00": "start", "01": "tuning", "02": "fewshot", "03": "mlm", "04": "ner", "05": "instruct",
            "06": "lora", "07": "choose"}

__all__ = ["ENV", "FAILED", "MODES", "NOT_ATTEMPTED", "PASSED", "PLACEHOLDER", "SESSIONS", "TIERS", "Exercise",
           "Fail", "Result", "Session", "call", "expect", "mode", "unattempted", "session"]


def session(module: str) -> Session:
    """The `check` object of a session module, e.g. session("tuning")."""
    from importlib import import_module

    if module not in SESSIONS.values():
        raise ValueError(f"no exercise module {module!r}; the sessions' modules are {', '.join(SESSIONS.values())}")
    return import_module(f"{__name__}.{module}").check
