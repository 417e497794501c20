"""The task's score, written once: macro-F1 over all ABAW classes (and accuracy) from a
confusion matrix. Training validates with it (confusions summed over torchrun ranks) and
``expr.evaluate.class_scores`` reports it, so the number a run selects its best epoch by is the
number `expr evaluate` prints."""

from __future__ import annotations

import numpy as np

from expr.core.abaw import NUM_CLASSES


def confusion_from_pairs(y_true, y_pred, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(classes, classes) int64 counts, rows = true class, columns = predicted."""
    t = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(y_pred, dtype=np.int64).reshape(-1)
    return np.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def macro_f1_accuracy(confusion) -> tuple[float, float]:
    """Macro-F1 over all classes (a class with no true and no predicted items counts 0, like
    sklearn's f1_score(labels=range(8), average="macro", zero_division=0), as ABAW scores
    it) and accuracy, from a (true, predicted) confusion matrix (numpy or torch)."""
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(c)
    denom = c.sum(0) + c.sum(1)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    total = c.sum()
    return float(f1.mean()), float(tp.sum() / total) if total > 0 else 0.0
