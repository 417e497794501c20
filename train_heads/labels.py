"""ABAW EXPR annotation files: strict, helpful parsing.

A file is the header ``Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other``
followed by one integer per frame, 0..7 or -1 (ignore); line i+1 is frame i (0-based here).
CRLF line ends, a UTF-8 BOM and trailing blank lines are tolerated; anything else that is
off raises LabelFormatError naming the file and line.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from expr.core.abaw import IGNORE_LABEL, LABEL_HEADER, NUM_CLASSES
from expr.cache_format.schema import validate_video_id
from expr.core.errors import CacheSchemaError, LabelFormatError

HEADER = LABEL_HEADER
# [0-9], not \d: \d also matches other scripts' digits, which int() then reads as numbers.
_LABEL = re.compile(r"[ \t]*(-?[0-9]+)[ \t]*")
SPLITS = ("Train_Set", "Validation_Set")
# The ABAW release nests the split folders one level down; accept both layouts.
ABAW_SUBDIR = "EXPR_Recognition_Challenge"


def read_label_file(path: str | Path) -> np.ndarray:
    """(T,) int64 labels in -1..7 of one annotation file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise LabelFormatError(f"{path}: cannot read the label file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise LabelFormatError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    lines = text.splitlines()  # handles \n, \r\n and \r
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise LabelFormatError(f"{path}: empty file; expected the header line '{HEADER}' then one label per frame")
    header = ",".join(name.strip() for name in lines[0].split(","))
    if header != HEADER:
        raise LabelFormatError(
            f"{path}:1: header is {lines[0].strip()[:80]!r}, expected '{HEADER}' "
            "(is this an EXPR annotation file, not AU or VA?)"
        )
    if len(lines) == 1:
        raise LabelFormatError(f"{path}: only a header, no frame labels; expected one label per frame after line 1")
    labels = np.empty(len(lines) - 1, dtype=np.int64)
    for i, line in enumerate(lines[1:]):
        labels[i] = parse_label(line, f"{path}:{i + 2}")
    return labels


def parse_label(line: str, where: str) -> int:
    """One frame's label: ASCII digits with an optional leading minus, -1..7.

    Spaces and tabs around the number are tolerated (hand-edited files); anything else is
    refused, including what ``int()`` would accept: '+3', '1_0', Unicode digits such as
    '٣', and other Unicode spaces. Messages quote the line as written."""
    match = _LABEL.fullmatch(line)
    if match is None:
        raise LabelFormatError(f"{where}: {line[:40]!r} is not an integer; expected one of -1..7 per line")
    value = int(match[1])
    if not IGNORE_LABEL <= value < NUM_CLASSES:
        raise LabelFormatError(f"{where}: label {value} is outside -1..7 (the line reads {line[:40]!r})")
    return value


def read_id_list(path: str | Path) -> list[tuple[int, str]]:
    """(line number, video id) of a list file; blank lines and '#' comments skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise LabelFormatError(f"{path}: cannot read the video id list ({exc.strerror or exc})") from exc
    ids = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    ids = [(n, vid) for n, vid in ids if vid and not vid.startswith("#")]
    if not ids:
        raise LabelFormatError(f"{path}: no video ids in the list; write one id per line")
    return ids


def _check_plain_id(vid: str, where: str) -> None:
    """A listed id names ``<id>.txt`` in the labels folder: a path ('../x', 'a/b') would open
    files outside it (and quote them in errors). Same rule as cache and submission ids."""
    try:
        validate_video_id(vid)
    except CacheSchemaError as exc:
        raise LabelFormatError(f"{where}: {vid!r} is not a video id: {str(exc).split(': ', 1)[-1]}; "
                               "list plain ids, one per line") from None


def split_dir(labels_dir: Path, split: str) -> Path | None:
    for candidate in (labels_dir / split, labels_dir / ABAW_SUBDIR / split):
        if candidate.is_dir():
            return candidate
    return None


def load_split(labels_dir: str | Path, split: str, ids_file: str | Path | None = None) -> dict[str, np.ndarray]:
    """Labels of one split: ``{video_id: (T,) int64}``, sorted by id.

    Without ``ids_file`` every ``<labels_dir>/<split>/*.txt`` is read. With it, the listed
    ids are looked up in ``<labels_dir>/<split>/`` then in ``<labels_dir>/`` itself.
    """
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise LabelFormatError(f"{labels_dir}: no such label directory")
    folder = split_dir(labels_dir, split)
    if ids_file is None:
        if folder is None:
            raise LabelFormatError(
                f"{labels_dir}: no {split}/ folder; use the ABAW layout ({'/, '.join(SPLITS)}/) "
                "or list the video ids with --train-list/--val-list"
            )
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise LabelFormatError(f"{folder}: no .txt annotation files")
        return {f.stem: read_label_file(f) for f in files}
    out = {}
    for line_no, vid in read_id_list(ids_file):
        _check_plain_id(vid, f"{ids_file}:{line_no}")  # before it is joined to a folder
        places = [p / f"{vid}.txt" for p in (folder, labels_dir) if p is not None]
        found = next((p for p in places if p.is_file()), None)
        if found is None:
            raise LabelFormatError(
                f"{ids_file}:{line_no}: no label file for video {vid!r} (looked for "
                f"{' and '.join(str(p) for p in places)})"
            )
        out[vid] = read_label_file(found)
    return dict(sorted(out.items()))


def reconcile(labels: dict[str, np.ndarray], cache_ids) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Keep the labelled videos that are in the cache.

    Returns (kept labels, ids with labels but no cache entry, cache ids without labels);
    the caller reports the two lists as counts with the first few names.
    """
    cache_ids = set(cache_ids)
    kept = {vid: lab for vid, lab in labels.items() if vid in cache_ids}
    no_cache = sorted(set(labels) - cache_ids)
    no_labels = sorted(cache_ids - set(labels))
    return kept, no_cache, no_labels


def preview(names: list[str], n: int = 3) -> str:
    """'3 (a, b, c)' or '12 (a, b, c, ...)' for messages."""
    shown = ", ".join(names[:n]) + (", ..." if len(names) > n else "")
    return f"{len(names)} ({shown})" if names else "0"
