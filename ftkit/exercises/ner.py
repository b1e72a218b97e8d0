"""Exercises of session 04 (course/04_ner_bio_tags.ipynb).

None declared yet: add them as in start.py (see README.md in this folder).
"""
from __future__ import annotations

from .core import Session

check = Session("04_ner_bio_tags")
