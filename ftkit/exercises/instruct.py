"""Exercises of session 05 (course/05_instruction_tuning.ipynb).

None declared yet: add them as in start.py (see README.md in this folder).
"""
from __future__ import annotations

from .core import Session

check = Session("05_instruction_tuning")
