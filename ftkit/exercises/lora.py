"""Exercises of session 06 (course/06_peft_adapters_lora.ipynb).

None declared yet: add them as in start.py (see README.md in this folder).
"""
from __future__ import annotations

from .core import Session

check = Session("06_peft_adapters_lora")
