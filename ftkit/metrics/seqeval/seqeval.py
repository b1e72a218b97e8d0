"""Entity-level precision, recall and F1 per entity type, with the seqeval library. An offline evaluate module of ftkit.

An entity counts as correct only when its type AND both boundaries match the reference.
"""
import datasets
import evaluate
from seqeval.metrics import accuracy_score, classification_report
from seqeval.scheme import IOB2

_DESCRIPTION = "seqeval: entity-level P/R/F1 (micro over entities) and per type, plus token accuracy."
_KWARGS = """
Args:
    predictions (list of list of str): predicted IOB tags per sentence.
    references (list of list of str): gold IOB tags per sentence.
    mode (str, optional): None for CoNLL-style chunking (an I- tag may open an entity),
        "strict" to accept only valid IOB2 entities.
Returns:
    overall_precision, overall_recall, overall_f1, overall_accuracy (float), and for each
    entity type TYPE a dict {"precision", "recall", "f1", "number"}.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Seqeval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Nakayama, seqeval (2018)", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references, mode=None):
        for i, (p, r) in enumerate(zip(predictions, references)):
            if len(p) != len(r):
                raise ValueError(f"sentence {i}: {len(p)} predicted tags but {len(r)} reference tags")
        extra = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
        report = classification_report(references, predictions, output_dict=True, zero_division=0, **extra)
        out = {}
        for name, scores in report.items():
            if name in ("micro avg", "macro avg", "weighted avg"):
                continue
            out[name] = {"precision": float(scores["precision"]), "recall": float(scores["recall"]),
                         "f1": float(scores["f1-score"]), "number": int(scores["support"])}
        micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
        out["overall_precision"] = float(micro["precision"])
        out["overall_recall"] = float(micro["recall"])
        out["overall_f1"] = float(micro["f1-score"])
        out["overall_accuracy"] = float(accuracy_score(references, predictions))
        return out
