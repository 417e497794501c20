"""The ABAW EXPR submission file: write it atomically, validate it, read it back.

Format (one CSV for the whole test set)::

    image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other
    video_1/00001.jpg,0
    video_1/00002.jpg,4
    ...

One row for EVERY frame of every video (1-based, 5-digit frame numbers, like the
cropped-aligned jpgs), whether or not a face was found there. The optional probabilities
file has the same rows with the 8 class probabilities instead of one label.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from expr.core.abaw import CLASS_NAMES, SUBMISSION_HEADER
from expr.core.atomic import atomic_path
from expr.core.errors import LabelFormatError, storage_errors

HEADER = SUBMISSION_HEADER
_LOCATION = re.compile(r"^(?P<video>[^/]+)/(?P<frame>\d{5,})\.jpg$")
# A cell starting with one of these is a formula to Excel/LibreOffice (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@")


def image_location(video_id: str, frame_index: int) -> str:
    """``video/00001.jpg`` for the 0-based ``frame_index`` (ABAW numbers frames from 1)."""
    return f"{video_id}/{frame_index + 1:05d}.jpg"


def check_ids(ids: Iterable[str]) -> None:
    """Raise LabelFormatError if a video id would start a submission cell with a formula
    character. Refused rather than escaped: the id names the video to the organisers, and
    a changed id would score as a missing video. Call it before the work (``expr predict``)."""
    bad = [vid for vid in ids if str(vid).startswith(FORMULA_STARTS)]
    if bad:
        shown = ", ".join(repr(v) for v in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise LabelFormatError(
            f"video id(s) {shown} start with one of {' '.join(FORMULA_STARTS)}: a spreadsheet would run "
            "the submission cell as a formula; rename those videos (and their label files) and extract again"
        )


def _write_rows(path: Path, predictions: Mapping[str, np.ndarray], fmt) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, lineterminator="\n")  # quotes a video name holding a comma
        out.writerow(HEADER.split(","))
        for vid, values in predictions.items():
            out.writerows([image_location(vid, i), *fmt(v)] for i, v in enumerate(values))


def write_submission(
    path: str | os.PathLike,
    labels: Mapping[str, np.ndarray],
    *,
    probabilities: Mapping[str, np.ndarray] | None = None,
    probs_path: str | os.PathLike | None = None,
) -> None:
    """Write the submission (and optionally the probabilities file), validated, atomically.

    Each file is written to a temporary name beside its destination, validated against the
    frame counts of ``labels``, and only then renamed: a crash or a bug never leaves a
    half-written or malformed submission where the user expects a good one.
    """
    check_ids(labels)
    path = Path(path)
    expected = {vid: int(np.asarray(v).shape[0]) for vid, v in labels.items()}
    # (destination, per-video values, one frame's value -> CSV fields, validator)
    jobs: list[tuple[Path, Mapping[str, np.ndarray], Callable[[Any], list[str]], Callable[..., None]]]
    jobs = [(path, labels, lambda v: [str(int(v))], validate_submission)]
    if probs_path is not None:
        if probabilities is None:
            raise ValueError("probs_path given without probabilities")
        jobs.append((Path(probs_path), probabilities,
                     lambda p: [f"{x:.6f}" for x in p], validate_probabilities))
    # every file validated before any replaces its destination; disk full / read-only: one line
    with storage_errors(path, "write the submission"), ExitStack() as stack:
        for dest, data, fmt, validate in jobs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = stack.enter_context(atomic_path(dest))
            _write_rows(tmp, data, fmt)
            validate(tmp, expected, shown_as=dest)


def _parse(path: Path, shown_as: Path, n_values: int) -> dict[str, tuple[list[int], list[list[str]]]]:
    """{video: (frame numbers, value fields)} in file order; raise on any malformed line.

    Lines are split one by one with the csv module (quoted fields, a comma in a video
    name), so that an error can quote the line as written."""
    rows: dict[str, tuple[list[int], list[list[str]]]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        header = fh.readline().rstrip("\r\n").lstrip("\ufeff")
        if next(csv.reader([header]), []) != HEADER.split(","):
            raise LabelFormatError(f"{shown_as}:1: header must be {HEADER!r}, found {header[:120]!r}")
        for lineno, line in enumerate(fh, start=2):
            line = line.rstrip("\r\n")
            if not line:
                continue
            try:
                location, *values = next(csv.reader([line], strict=True))
            except csv.Error:
                location, values = "", []
            match = _LOCATION.match(location)
            if match is None or len(values) != n_values:
                raise LabelFormatError(
                    f"{shown_as}:{lineno}: expected '<video>/<00001>.jpg' and {n_values} value(s), "
                    f"found {line[:120]!r}"
                )
            frames, fields = rows.setdefault(match["video"], ([], []))
            frames.append(int(match["frame"]))
            fields.append(values)
    return rows


def _check_frames(rows: dict, expected: Mapping[str, int] | None, shown_as: Path) -> None:
    if not rows:
        raise LabelFormatError(f"{shown_as}: no prediction rows after the header")
    for vid, (frames, _) in rows.items():
        if frames != list(range(1, len(frames) + 1)):
            first_bad = next(i for i, f in enumerate(frames, start=1) if f != i)
            raise LabelFormatError(
                f"{shown_as}: video {vid!r} frames must run 00001.. in order without gaps or "
                f"repeats; row {first_bad} of that video is frame {frames[first_bad - 1]:05d}"
            )
    if expected is None:
        return
    missing = [v for v in expected if v not in rows]
    extra = [v for v in rows if v not in expected]
    if missing or extra:
        raise LabelFormatError(
            f"{shown_as}: videos differ from the listed ones: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for vid, n in expected.items():
        if len(rows[vid][0]) != n:
            raise LabelFormatError(
                f"{shown_as}: video {vid!r} has {len(rows[vid][0])} rows but {n} frames"
            )


def validate_submission(path, expected: Mapping[str, int] | None = None, *, shown_as=None) -> None:
    """Raise LabelFormatError unless ``path`` is a well-formed submission; with ``expected``
    ({video: frame count}) also require exactly those videos, one row per frame."""
    read_submission(path, expected, shown_as=shown_as)


def read_submission(path, expected: Mapping[str, int] | None = None, *, shown_as=None) -> dict[str, np.ndarray]:
    """{video: (T,) int64 labels} from a submission file, validated."""
    path = Path(path)
    shown_as = Path(shown_as or path)
    rows = _parse(path, shown_as, 1)
    _check_frames(rows, expected, shown_as)
    out = {}
    for vid, (_, fields) in rows.items():
        try:
            labels = np.array([int(f[0]) for f in fields], dtype=np.int64)
        except ValueError:
            raise LabelFormatError(f"{shown_as}: video {vid!r} has a non-integer label") from None
        if labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
            bad = int(np.flatnonzero((labels < 0) | (labels >= len(CLASS_NAMES)))[0])
            raise LabelFormatError(
                f"{shown_as}: {image_location(vid, bad)} has label {labels[bad]}; labels must be 0..7"
            )
        out[vid] = labels
    return out


def validate_probabilities(path, expected: Mapping[str, int] | None = None, *, shown_as=None) -> None:
    read_probabilities(path, expected, shown_as=shown_as)


def read_probabilities(path, expected: Mapping[str, int] | None = None, *, shown_as=None) -> dict[str, np.ndarray]:
    """{video: (T, 8) float32 probabilities} from a probabilities file, validated."""
    path = Path(path)
    shown_as = Path(shown_as or path)
    rows = _parse(path, shown_as, len(CLASS_NAMES))
    _check_frames(rows, expected, shown_as)
    out = {}
    for vid, (_, fields) in rows.items():
        try:
            probs = np.array(fields, dtype=np.float32)
        except ValueError:
            raise LabelFormatError(f"{shown_as}: video {vid!r} has a non-numeric probability") from None
        if not np.isfinite(probs).all() or (probs < 0).any() or (np.abs(probs.sum(1) - 1) > 1e-3).any():
            raise LabelFormatError(f"{shown_as}: video {vid!r} has rows that are not probabilities")
        out[vid] = probs
    return out
