"""Classification metrics for the 8 ABAW EXPR classes: the per-class breakdown from sklearn,
the confusion matrix and the headline macro-F1 from ``expr.train_heads`` (the one
implementation that training also selects its best epoch by).

Every number is computed over ALL eight classes (``labels=range(8)``, ``zero_division=0``),
so a class that never occurs nor is predicted counts as F1 = 0 in the macro mean, exactly as
the ABAW organisers score it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from expr.core.abaw import NUM_CLASSES
from expr.train_heads import confusion_from_pairs, macro_f1_accuracy

LABELS = list(range(NUM_CLASSES))


@dataclass(frozen=True)
class ClassificationMetrics:
    """Scores of one protocol; lists are in ABAW class order."""

    n: int                        # scored items (windows or frames)
    macro_f1: float               # mean F1 over the 8 classes
    accuracy: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]            # true items per class
    confusion: list[list[int]]    # confusion[true][pred]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ClassificationMetrics":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def _as_labels(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise ValueError(f"{name} must hold class indices 0..{NUM_CLASSES - 1}")
    return arr


def compute_metrics(y_true, y_pred) -> ClassificationMetrics:
    """Macro-F1, accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true = _as_labels(y_true, "y_true")
    y_pred = _as_labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    if y_true.size == 0:
        raise ValueError("nothing to score: no labelled items")
    # average=None: per-class arrays (the stubs type the return for any average, hence the casts)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, average=None, zero_division=0.0  # pyright: ignore[reportArgumentType]
    )
    confusion = confusion_from_pairs(y_true, y_pred, NUM_CLASSES)
    macro, accuracy = macro_f1_accuracy(confusion)
    return ClassificationMetrics(
        n=int(y_true.size),
        macro_f1=macro,
        accuracy=accuracy,
        precision=np.asarray(precision, dtype=np.float64).tolist(),
        recall=np.asarray(recall, dtype=np.float64).tolist(),
        f1=np.asarray(f1, dtype=np.float64).tolist(),
        support=np.asarray(support, dtype=np.int64).tolist(),
        confusion=confusion.tolist(),
    )


def normalise_rows(confusion) -> np.ndarray:
    """Row-normalised confusion (recall per true class); all-zero rows stay zero."""
    cm = np.asarray(confusion, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
