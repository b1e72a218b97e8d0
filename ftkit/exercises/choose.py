"""Exercises of session 07 (course/07_choosing_an_approach.ipynb).

None declared yet: add them as in start.py (see README.md in this folder).
"""
from __future__ import annotations

from .core import Session

check = Session("07_choosing_an_approach")
