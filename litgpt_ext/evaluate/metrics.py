"""Text metrics of generations against references, with the definitions stated so numbers compare across tools.

* **Corpus BLEU** — SacreBLEU's: ``13a`` tokenization, case-sensitive, up to 4-grams, n-gram counts summed over the
  whole corpus before the geometric mean and one brevity penalty; no smoothing (SacreBLEU's ``smooth_method='none'``,
  equal to its default ``exp`` whenever every n-gram order has a match). Computed by torchmetrics'
  ``SacreBLEUScore``; reported on SacreBLEU's 0-100 scale.
* **Per-row BLEU** (CSV only) — the same on one row, with add-one smoothing of the 2- to 4-gram precisions
  (torchmetrics ``smooth=True``), so one missing 4-gram does not zero a row.
* **ROUGE-1/2/L F1** — torchmetrics' ``ROUGEScore`` (lower-cased, non-alphanumerics as spaces, no stemming), per row,
  averaged over rows; with several references a row takes the best.
* **Exact match** — after SQuAD's normalisation: lower case, punctuation and the articles a/an/the removed,
  whitespace collapsed.
* **Items** — for list-shaped answers: both texts split into items with the ``lines`` parser (one item per
  non-empty line, bullets and numbering removed), each item normalised as for exact match; precision, recall and F1
  of the sets, per row (averaged: macro) and over all rows' counts (micro).
"""

from __future__ import annotations

import re
import statistics
import string
from dataclasses import dataclass

_LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def split_items(text: str) -> list[str]:
    """The ``lines`` parser: one item per non-empty line, with list bullets and numbering removed."""
    return [_LIST_MARK.sub("", line).strip() for line in text.splitlines() if line.strip()]


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation (lower case, no punctuation, no articles, single spaces)."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def exact_match(prediction: str, references: list[str]) -> bool:
    return any(normalize_answer(prediction) == normalize_answer(r) for r in references)


@dataclass
class ItemCounts:
    predicted: int
    reference: int
    matched: int

    @property
    def precision(self) -> float:
        return self.matched / self.predicted if self.predicted else float(self.reference == 0)

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else float(self.predicted == 0)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def item_counts(prediction: str, references: list[str]) -> ItemCounts:
    """Set overlap of the items of a prediction and of its references (all references' items together)."""
    predicted = {normalize_answer(i) for i in split_items(prediction)} - {""}
    reference = {normalize_answer(i) for r in references for i in split_items(r)} - {""}
    return ItemCounts(len(predicted), len(reference), len(predicted & reference))


def corpus_bleu(predictions: list[str], references: list[list[str]]) -> float:
    """SacreBLEU corpus BLEU (0-100; see the module docstring)."""
    from torchmetrics.functional.text import sacre_bleu_score

    if not predictions:
        return 0.0
    return 100 * float(sacre_bleu_score(predictions, references, tokenize="13a", smooth=False))


def sentence_bleu(prediction: str, references: list[str]) -> float:
    """One row's BLEU (0-100), add-one smoothed."""
    from torchmetrics.functional.text import sacre_bleu_score

    return 100 * float(sacre_bleu_score([prediction], [references], tokenize="13a", smooth=True))


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 of one row (torchmetrics; the best over several references)."""
    from torchmetrics.functional.text.rouge import rouge_score

    scores = rouge_score([prediction], [references], rouge_keys=ROUGE_KEYS, accumulate="best")
    return {key: float(scores[f"{key}_fmeasure"]) for key in ROUGE_KEYS}


def length_stats(values: list[int]) -> dict[str, float]:
    """mean / median / p90 / max of a list of lengths (zeros when empty)."""
    if not values:
        return {"mean": 0.0, "median": 0.0, "p90": 0.0, "max": 0}
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 2),
        "median": statistics.median(ordered),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
    }
