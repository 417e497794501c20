"""Per-video timeline PNG: what the model says over time, next to what the annotators said.

One axes, read top to bottom: the class probabilities over time (stacked areas, or one line
per class), the predicted class as a colour band, and the ground truth as a second band where
labels exist. Frames without a detected face are hatched over the probabilities; unlabelled
frames (-1) are hatched white in the truth band. Bands are drawn as one mesh per band and
shadings as one collection of runs, never one patch per frame. Curves longer than
``MAX_POINTS`` (about twice the plot's width in pixels) are drawn as means over equal bins
of consecutive frames: a pixel column cannot show more, and a 20,000-frame video of noisy
probabilities would otherwise take seconds to fill. Bands and shadings stay per frame.

``plot_timeline`` returns what was drawn, read back from the matplotlib artists before the
figure is saved, so tests can check the picture's data and not only that a file exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from expr.core.abaw import CLASS_NAMES, IGNORE_LABEL
from expr.evaluate.palette import CLASS_COLOURS, NO_FACE_COLOUR, UNLABELLED_COLOUR
from expr.evaluate.plots import _figure

if TYPE_CHECKING:
    from matplotlib.collections import QuadMesh

STYLES = ("area", "lines")
MAX_POINTS = 2400                  # curve points drawn at most (the axes are ~1,000 px wide)
_BAND = 0.1                        # band height, in probability units (the y axis is shared)
_PRED_Y, _TRUTH_Y = -0.16, -0.30   # bottom of each band


@dataclass(frozen=True)
class TimelineData:
    """What the saved PNG shows, read back from its artists."""

    path: Path
    times: np.ndarray                  # (P,) seconds: x of every curve point (P = T unless binned)
    probs: np.ndarray                  # (P, C) per-class probability as drawn
    predicted_rgba: np.ndarray         # (T, 4) colour of the predicted band per frame
    truth_rgba: np.ndarray | None      # (T, 4) colour of the truth band per frame (None: no band)
    shaded_no_face: np.ndarray         # (T,) bool: frame lies in a "no face" shading
    shaded_unlabelled: np.ndarray      # (T,) bool: frame lies in an "unlabelled" shading


def frame_edges(times: np.ndarray) -> np.ndarray:
    """(T+1,) boundaries between frames: midpoints, the ends half a frame out, so bands sit
    exactly under their frames even at a variable frame rate."""
    if len(times) == 1:
        return np.array([times[0] - 0.02, times[0] + 0.02])  # one frame: 1/25 s wide
    mid = (times[1:] + times[:-1]) / 2
    return np.concatenate([[2 * times[0] - mid[0]], mid, [2 * times[-1] - mid[-1]]])


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a 1-D bool mask."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    change = np.flatnonzero(np.diff(padded))
    return list(zip(change[::2].tolist(), change[1::2].tolist()))


def bin_means(times: np.ndarray, probs: np.ndarray, max_points: int = MAX_POINTS
              ) -> tuple[np.ndarray, np.ndarray]:
    """(times, probs) unchanged if T <= max_points, else their means over bins of
    ceil(T / max_points) consecutive frames (the last bin may be shorter)."""
    t = len(times)
    if t <= max_points:
        return times, probs
    starts = np.arange(0, t, -(-t // max_points))
    counts = np.diff(np.append(starts, t))[:, None]
    return (np.add.reduceat(times, starts) / counts[:, 0], np.add.reduceat(probs, starts, axis=0) / counts)


def _check(times, probs, predicted, truth, face, n_classes):
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    t = len(times)
    if t == 0:
        raise ValueError("nothing to plot: the video has no frames")
    if probs.shape != (t, n_classes):
        raise ValueError(f"probs must be (T, {n_classes}) = ({t}, {n_classes}), not {probs.shape}")
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if predicted.shape != (t,) or predicted.min() < 0 or predicted.max() >= n_classes:
        raise ValueError(f"predicted must hold {t} class indices 0..{n_classes - 1}")
    if truth is not None:
        truth = np.asarray(truth, dtype=np.int64).reshape(-1)
        if truth.shape != (t,) or truth.min() < IGNORE_LABEL or truth.max() >= n_classes:
            raise ValueError(f"truth must hold {t} labels {IGNORE_LABEL}..{n_classes - 1}")
    if face is not None:
        face = np.asarray(face, dtype=bool).reshape(-1)
        if face.shape != (t,):
            raise ValueError(f"face must hold {t} flags, not {face.shape[0]}")
    if np.any(np.diff(times) <= 0):
        raise ValueError("times must increase strictly")
    return times, probs, predicted, truth, face


def _band(ax, edges, values, y0, cmap):
    """One mesh of per-frame cells; values < 0 are masked (drawn in the cmap's 'bad' colour)."""
    data = np.ma.masked_less(np.asarray(values)[None, :], 0)
    return ax.pcolormesh(edges, [y0, y0 + _BAND], data, cmap=cmap, vmin=-0.5, vmax=cmap.N - 0.5,
                         shading="flat", antialiased=False, edgecolors="none", rasterized=True)


def _cells_rgba(mesh: QuadMesh) -> np.ndarray:
    """The colours of a band's cells, as the mesh maps its values (masked: the 'bad' colour)."""
    values = mesh.get_array()
    if values is None:  # matplotlib types it optional; _band always gives the mesh its values
        raise ValueError("band mesh has no values")
    return mesh.to_rgba(values)


def _shade(ax, edges, mask, y0, height, **style):
    """Hatched runs of ``mask`` from y0 to y0 + height, as one collection."""
    spans = [(edges[a], edges[b] - edges[a]) for a, b in runs(mask)]
    return ax.broken_barh(spans, (y0, height), **style)


def _draw_probs(ax, times, probs, style):
    if style == "lines":
        return [ax.plot(times, probs[:, k], color=c, lw=1.0)[0] for k, c in enumerate(CLASS_COLOURS)]
    tops = np.cumsum(probs, axis=1)
    bottoms = tops - probs
    return [ax.fill_between(times, bottoms[:, k], tops[:, k], color=c, lw=0, step=None)
            for k, c in enumerate(CLASS_COLOURS)]


def _read_times(artists, style, t) -> np.ndarray:
    if style == "lines":
        return np.asarray(artists[0].get_xdata(), dtype=np.float64)
    return artists[0].get_paths()[0].vertices[1:t + 1, 0].copy()


def _read_probs(artists, style, t) -> np.ndarray:
    """The per-class curves back from the artists (fill_between: lower edge forward, then the
    upper edge backward, after one start vertex)."""
    if style == "lines":
        return np.stack([np.asarray(a.get_ydata(), dtype=np.float64) for a in artists], axis=1)
    cols = []
    for a in artists:
        v = a.get_paths()[0].vertices
        lower, upper = v[1:t + 1, 1], v[t + 2:2 * t + 2, 1][::-1]
        cols.append(upper - lower)
    return np.stack(cols, axis=1)


def _covered(collection, times) -> np.ndarray:
    """Frames whose time lies inside one of a broken_barh collection's rectangles."""
    out = np.zeros(len(times), dtype=bool)
    for path in collection.get_paths():
        x = path.vertices[:, 0]
        out |= (times > x.min()) & (times < x.max())
    return out


def _dress(ax, xlim: tuple[float, float], title: str, has_truth: bool) -> None:
    """Axes limits, the band names as y tick labels, axis labels and the title."""
    ax.set_xlim(*xlim)
    ax.set_ylim((_TRUTH_Y if has_truth else _PRED_Y) - 0.02, 1.0)
    ticks = [0, 0.5, 1, _PRED_Y + _BAND / 2] + ([_TRUTH_Y + _BAND / 2] if has_truth else [])
    ax.set_yticks(ticks, ["0", "0.5", "1", "predicted", "truth"][:len(ticks)], fontsize=8)
    ax.set_ylabel("probability", fontsize=9)
    ax.set_xlabel("time (s)", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title, fontsize=10, loc="left")


def _legend(ax, class_names, has_truth, has_face_mask):
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, label=n) for c, n in zip(CLASS_COLOURS, class_names)]
    if has_face_mask:
        handles.append(Patch(facecolor="none", edgecolor=NO_FACE_COLOUR, hatch="///", label="no face"))
    if has_truth:
        handles.append(Patch(facecolor=UNLABELLED_COLOUR, edgecolor=NO_FACE_COLOUR, hatch="...",
                             label="unlabelled"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.005, 0.5), fontsize=8, frameon=False)


def plot_timeline(
    path: str | os.PathLike,
    *,
    video_id: str,
    times: Sequence[float] | np.ndarray,
    probs,
    predicted,
    truth=None,
    face=None,
    class_names: Sequence[str] = CLASS_NAMES,
    title_extra: str = "",
    style: str = "area",
) -> TimelineData:
    """Write the timeline PNG of one video; returns the data read back from the figure.

    ``times`` (T,) seconds per frame, ``probs`` (T, C), ``predicted`` (T,) class indices,
    ``truth`` (T,) labels with -1 = unlabelled (None: no truth band), ``face`` (T,) bool
    (None: every frame has a face), ``title_extra`` e.g. "per-frame macro-F1 0.41".
    """
    from matplotlib.colors import ListedColormap

    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, not {style!r}")
    times, probs, predicted, truth, face = _check(times, probs, predicted, truth, face, len(class_names))
    cmap = ListedColormap(CLASS_COLOURS[:len(class_names)]).with_extremes(bad=UNLABELLED_COLOUR)
    edges = frame_edges(times)
    hatch = dict(facecolor="none", edgecolor=NO_FACE_COLOUR, linewidth=0)
    with _figure(path, (12, 3.6)) as (fig, ax):
        curve_t, curve_p = bin_means(times, probs)
        curves = _draw_probs(ax, curve_t, curve_p, style)
        pred_mesh = _band(ax, edges, predicted, _PRED_Y, cmap)
        # Faded as well as hatched: the prediction there leans on context, not on a face.
        no_face = _shade(ax, edges, ~face if face is not None else np.zeros(len(times), bool), 0, 1,
                         hatch="///", **{**hatch, "facecolor": (1, 1, 1, 0.55)})
        truth_mesh, unlabelled = None, None
        if truth is not None:
            truth_mesh = _band(ax, edges, truth, _TRUTH_Y, cmap)
            unlabelled = _shade(ax, edges, truth == IGNORE_LABEL, _TRUTH_Y, _BAND, hatch="...", **hatch)
        _dress(ax, (edges[0], edges[-1]), f"{video_id}" + (f"  ·  {title_extra}" if title_extra else ""),
               truth is not None)
        _legend(ax, class_names, truth is not None, face is not None)
        data = TimelineData(
            path=Path(path),
            times=_read_times(curves, style, len(curve_t)),
            probs=_read_probs(curves, style, len(curve_t)),
            predicted_rgba=_cells_rgba(pred_mesh).reshape(len(times), 4),
            truth_rgba=None if truth_mesh is None else _cells_rgba(truth_mesh).reshape(-1, 4),
            shaded_no_face=_covered(no_face, times),
            shaded_unlabelled=_covered(unlabelled, times) if unlabelled is not None else np.zeros(len(times), bool),
        )
    return data
