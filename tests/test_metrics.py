"""Metrics equal sklearn; per-frame index arithmetic; smoothing; the confusion PNG."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from expr.evaluate.class_scores import compute_metrics, normalise_rows
from expr.evaluate.protocols import annotated_frames, causal_window
from expr.train_heads import frame_queries, smooth_probabilities, split_by_video

# Hand-made: class 7 never occurs nor is predicted, class 6 is predicted but never true,
# class 3 is true but never predicted.
Y_TRUE = [0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 4, 5, 5, 0, 2]
Y_PRED = [0, 1, 0, 1, 1, 2, 0, 6, 4, 4, 2, 5, 0, 0, 6]


def test_metrics_equal_sklearn_on_hand_made_predictions():
    m = compute_metrics(Y_TRUE, Y_PRED)
    labels = list(range(8))
    assert m.macro_f1 == pytest.approx(f1_score(Y_TRUE, Y_PRED, labels=labels, average="macro",
                                                       zero_division=0))  # pyright: ignore[reportArgumentType]
    assert m.accuracy == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    # (sklearn annotates zero_division as str; 0 is documented and what we compare against)
    p, r, f, s = precision_recall_fscore_support(Y_TRUE, Y_PRED, labels=labels,
                                                 zero_division=0)  # pyright: ignore[reportArgumentType]
    assert s is not None  # (None only with average=...)
    np.testing.assert_allclose(m.precision, p)
    np.testing.assert_allclose(m.recall, r)
    np.testing.assert_allclose(m.f1, f)
    assert m.support == s.tolist()
    assert m.confusion == confusion_matrix(Y_TRUE, Y_PRED, labels=labels).tolist()
    assert m.n == len(Y_TRUE)
    # Absent classes count as 0 in the macro mean (ABAW scores all 8): the mean of the 8 F1s.
    assert m.macro_f1 == pytest.approx(np.mean(m.f1))
    assert m.f1[7] == 0.0 and m.f1[3] == 0.0


def test_hand_computed_values():
    m = compute_metrics([0, 0, 1, 1], [0, 1, 1, 1])
    # class 0: P=1, R=.5, F1=2/3; class 1: P=2/3, R=1, F1=.8; six absent classes: 0
    assert m.f1[:2] == pytest.approx([2 / 3, 0.8])
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.8) / 8)
    assert m.accuracy == 0.75


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="0..7"):
        compute_metrics([0, 8], [0, 1])
    with pytest.raises(ValueError, match="length"):
        compute_metrics([0, 1], [0])
    with pytest.raises(ValueError, match="nothing to score"):
        compute_metrics([], [])


def test_normalise_rows_keeps_empty_rows_zero():
    cm = normalise_rows([[2, 2], [0, 0]])
    np.testing.assert_allclose(cm, [[0.5, 0.5], [0, 0]])


def test_causal_window_pads_start_by_repeating_first_frame():
    assert causal_window(2, 5).tolist() == [0, 0, 0, 1, 2]
    assert causal_window(0, 3).tolist() == [0, 0, 0]
    assert causal_window(9, 4).tolist() == [6, 7, 8, 9]


def test_one_query_per_annotated_frame():
    labels = {"a": np.array([-1, 0, 1, -1, 2]), "b": np.array([3, 3, -1, -1, 7, 7, 5])}
    sel = annotated_frames(labels, ["a", "b"], [5, 6])  # b's cache is one frame shorter
    assert [f.tolist() for f in sel.frames] == [[1, 2, 4], [0, 1, 4, 5]]
    assert [t.tolist() for t in sel.targets] == [[0, 1, 2], [3, 3, 7, 7]]
    assert sel.dropped == {"b": 1} and sel.total == 7
    video_idx, end = frame_queries([5, 6], sel.frames)
    assert video_idx.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert end.tolist() == [1, 2, 4, 0, 1, 4, 5]
    # every (video, frame) pair exactly once
    assert len(set(zip(video_idx.tolist(), end.tolist()))) == sel.total


def test_frame_queries_all_frames_and_bounds():
    v, e = frame_queries([2, 3])
    assert v.tolist() == [0, 0, 1, 1, 1] and e.tolist() == [0, 1, 0, 1, 2]
    with pytest.raises(ValueError, match="outside"):
        frame_queries([2], [np.array([2])])


def test_smoothing_median_and_mean():
    probs = np.zeros((5, 8), np.float32)
    probs[:, 0] = 1
    probs[2] = 0
    probs[2, 1] = 1  # one-frame blip of class 1
    med = smooth_probabilities(probs, 3, "median")
    assert med.argmax(1).tolist() == [0] * 5  # the blip is filtered out
    np.testing.assert_allclose(med.sum(1), 1, rtol=1e-6)
    mean = smooth_probabilities(probs, 3, "mean")
    np.testing.assert_allclose(mean[1, :2], [2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(mean[0, :2], [1, 0])  # edge repeats frame 0
    assert smooth_probabilities(probs, 1) is not None and np.array_equal(smooth_probabilities(probs, 1), probs)
    with pytest.raises(ValueError, match="median"):
        smooth_probabilities(probs, 3, "max")


def test_split_by_video_preserves_order():
    parts = split_by_video(np.arange(5), np.array([1, 0, 1, 0, 1]), 3)
    assert [p.tolist() for p in parts] == [[1, 3], [0, 2, 4], []]


def test_confusion_png(tmp_path):
    from expr.evaluate.plots import save_confusion_png

    m = compute_metrics(Y_TRUE, Y_PRED)
    out = save_confusion_png(tmp_path / "cm.png", m.confusion, title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
