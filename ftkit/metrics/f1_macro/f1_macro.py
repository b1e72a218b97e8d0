"""Macro precision, recall and F1: each class counts the same, however rare. An offline evaluate module of ftkit."""
import datasets
import evaluate
from sklearn.metrics import precision_recall_fscore_support

_DESCRIPTION = ("Per-class precision, recall and F1, averaged with equal weight per class (macro). "
                "Classes that never occur in references or predictions are ignored.")
_KWARGS = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): true label ids.
    labels (list of int, optional): the classes to average over (default: all seen).
Returns:
    precision, recall, f1 (float): macro averages in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class F1Macro(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}))

    def _compute(self, predictions, references, labels=None):
        p, r, f, _ = precision_recall_fscore_support(references, predictions, labels=labels,
                                                     average="macro", zero_division=0)
        return {"precision": float(p), "recall": float(r), "f1": float(f)}
