"""ROUGE-1/2/L/Lsum F-measure, averaged over examples, with Google's rouge-score. An offline evaluate module of ftkit."""
import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "ROUGE counts overlapping n-grams (1, 2) and the longest common subsequence (L) with a reference."
_KWARGS = """
Args:
    predictions (list of str): generated texts.
    references (list of str): reference texts.
    use_stemmer (bool): Porter-stem words before matching (default True).
Returns:
    rouge1, rouge2, rougeL, rougeLsum (float): mean F-measure in [0, 1].
"""
TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="Lin, ROUGE (2004)", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, use_stemmer=True):
        if len(references) == 0:
            raise ValueError("rouge needs at least one prediction")
        scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=use_stemmer)
        totals = dict.fromkeys(TYPES, 0.0)
        for pred, ref in zip(predictions, references):
            # rougeLsum splits summaries into sentences at newlines
            scores = scorer.score(ref, pred)
            for t in TYPES:
                totals[t] += scores[t].fmeasure
        return {t: totals[t] / len(references) for t in TYPES}
