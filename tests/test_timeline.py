"""Timeline PNGs: the picture's data equals the predictions, bands and shadings sit on the right
frames, long videos draw fast, and bad input is refused with a message."""


import numpy as np
import pytest
from matplotlib.colors import to_rgba

from expr.core.abaw import CLASS_NAMES
from expr.evaluate.palette import CLASS_COLOURS, UNLABELLED_COLOUR
from expr.evaluate.timeline import frame_edges, plot_timeline, runs


def _video(t: int, seed: int = 0, fps: float = 30.0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((t, len(CLASS_NAMES)))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    truth = rng.integers(0, len(CLASS_NAMES), t)
    truth[t // 4: t // 3] = -1
    face = rng.random(t) > 0.1
    return np.arange(t) / fps, probs, probs.argmax(1), truth, face


def _colours(indices) -> np.ndarray:
    return np.array([to_rgba(CLASS_COLOURS[i]) for i in indices])


@pytest.mark.parametrize("style", ["area", "lines"])
def test_plotted_data_equals_the_inputs(tmp_path, style):
    times, probs, predicted, truth, face = _video(300)
    d = plot_timeline(tmp_path / "v.png", video_id="v1", times=times, probs=probs, predicted=predicted,
                      truth=truth, face=face, style=style)
    assert d.path.read_bytes()[:4] == b"\x89PNG"
    np.testing.assert_allclose(d.times, times)
    np.testing.assert_allclose(d.probs, probs, atol=1e-12)
    np.testing.assert_allclose(d.predicted_rgba, _colours(predicted))
    labelled = truth != -1
    assert d.truth_rgba is not None  # labels given: a truth band
    np.testing.assert_allclose(d.truth_rgba[labelled], _colours(truth[labelled]))
    assert (d.truth_rgba[~labelled] == to_rgba(UNLABELLED_COLOUR)).all()
    np.testing.assert_array_equal(d.shaded_no_face, ~face)
    np.testing.assert_array_equal(d.shaded_unlabelled, ~labelled)


def test_without_truth_or_face_there_is_no_truth_band_and_no_shading(tmp_path):
    times, probs, predicted, _, _ = _video(50)
    d = plot_timeline(tmp_path / "v.png", video_id="v", times=times, probs=probs, predicted=predicted)
    assert d.truth_rgba is None
    assert not d.shaded_no_face.any() and not d.shaded_unlabelled.any()


def test_variable_frame_rate_bands_sit_under_their_frames():
    times = np.array([0.0, 0.04, 0.08, 0.2, 0.21])
    edges = frame_edges(times)
    assert edges.shape == (6,)
    assert ((edges[:-1] < times) & (times < edges[1:])).all()  # every frame inside its own cell
    np.testing.assert_allclose(edges[1:-1], (times[1:] + times[:-1]) / 2)
    assert runs(np.array([1, 1, 0, 1, 0, 0, 1], bool)) == [(0, 2), (3, 4), (6, 7)]
    assert runs(np.zeros(3, bool)) == []


def test_a_twenty_thousand_frame_video_draws_binned_curves_and_a_small_png(tmp_path):
    # Speed is a benchmark's job (a wall-clock limit fails on a loaded machine); what keeps a
    # long video fast is asserted here: at most 2,400 curve points, bands as one mesh each.
    times, probs, predicted, truth, face = _video(20_000, seed=1, fps=25.0)
    d = plot_timeline(tmp_path / "long.png", video_id="long", times=times, probs=probs, predicted=predicted,
                      truth=truth, face=face)
    assert d.path.stat().st_size < 400_000
    # curves: means over bins of 9 frames (20,000 / 2,400 -> 9), the last bin 2 frames
    assert d.probs.shape == (2223, 8)
    np.testing.assert_allclose(d.probs[:-1], probs[:-2].reshape(-1, 9, 8).mean(1), atol=1e-12)
    np.testing.assert_allclose(d.probs[-1], probs[-2:].mean(0), atol=1e-12)
    np.testing.assert_allclose(d.times[:-1], times[:-2].reshape(-1, 9).mean(1))
    # bands and shadings stay per frame
    np.testing.assert_allclose(d.predicted_rgba, _colours(predicted))
    np.testing.assert_array_equal(d.shaded_no_face, ~face)


@pytest.mark.parametrize("change, message", [
    (dict(probs=np.ones((10, 7)) / 7), "probs must be"),
    (dict(predicted=np.full(10, 8)), "predicted must hold"),
    (dict(truth=np.full(10, -2)), "truth must hold"),
    (dict(face=np.ones(9, bool)), "face must hold 10"),
    (dict(times=np.zeros(10)), "times must increase"),
    (dict(style="pie"), "style must be one of"),
])
def test_bad_input_is_refused_with_a_message(tmp_path, change, message):
    times, probs, predicted, _, _ = _video(10)
    kwargs = {**dict(video_id="v", times=times, probs=probs, predicted=predicted), **change}
    with pytest.raises(ValueError, match=message):
        plot_timeline(tmp_path / "v.png", **kwargs)
    assert not (tmp_path / "v.png").exists()
