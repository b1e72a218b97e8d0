"""ftkit's own `evaluate` metric modules, loadable offline.

`evaluate.load("accuracy")` fetches its script from the Hub and fails offline; these modules live
in this folder and load by path: `ftkit.metrics.load("accuracy")` is `evaluate.load(<this folder>/accuracy)`.
`import evaluate` costs several seconds, so it happens on first use, not at `import ftkit`.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
NAMES = ("accuracy", "f1_macro", "seqeval", "rouge")


def path(name: str) -> str:
    """The folder of a metric module; pass it to `evaluate.load` or to setfit's `metric=`."""
    if name not in NAMES:
        raise ValueError(f"unknown metric {name!r}; ftkit ships {list(NAMES)}")
    return str(HERE / name)


@lru_cache(maxsize=None)
def load(name: str):
    import evaluate

    return evaluate.load(path(name))


def classification_scores(predictions, references) -> dict:
    """accuracy and macro precision/recall/F1 for label ids."""
    predictions, references = np.asarray(predictions).tolist(), np.asarray(references).tolist()
    scores = load("accuracy").compute(predictions=predictions, references=references)
    macro = load("f1_macro").compute(predictions=predictions, references=references)
    scores.update({f"macro_{k}": v for k, v in macro.items()})
    return scores


def compute_classification(eval_pred) -> dict:
    """A `compute_metrics` for transformers.Trainer on sequence classification."""
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return classification_scores(np.argmax(logits, axis=-1), labels)
