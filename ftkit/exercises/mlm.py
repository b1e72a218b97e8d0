"""Exercises of session 03 (course/03_mlm_domain_adaptation.ipynb).

None declared yet: add them as in start.py (see README.md in this folder).
"""
from __future__ import annotations

from .core import Session

check = Session("03_mlm_domain_adaptation")
