"""Exercises of session 01 (course/01_feature_vs_parameter_tuning.ipynb).

None declared yet: add them as in start.py (see README.md in this folder).
"""
from __future__ import annotations

from .core import Session

check = Session("01_feature_vs_parameter_tuning")
