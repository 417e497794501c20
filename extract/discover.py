"""Find the videos (and ABAW frame folders) to extract: one DecodeJob per cache entry."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from expr.cache_format import validate_video_id
from expr.core.errors import CacheSchemaError, ConfigError
from expr.extract import messages
from expr.extract.messages import DecodeJob

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv"})
PERSON_SUFFIXES = ("_left", "_right")  # ABAW two-person videos: one label file per person
MAX_SKIP_LINES = 10  # skipped inputs listed one per line; beyond this, a count

log = logging.getLogger(__name__)


def find_video_files(videos_dir: Path, *, exclude: Iterable[Path] = (),
                     on_skip: Callable[[Path, str], None] | None = None) -> dict[str, Path]:
    """Video id (file stem) -> path, searched recursively; hidden files and folders are skipped.

    Entries named like a video that are not readable regular files (a dangling symlink, a
    FIFO, a device such as /dev/zero, a folder) and folders that cannot be listed go to
    ``on_skip(path, why)`` instead of vanishing silently; they are never opened (a FIFO
    would block, /dev/zero never ends). Folders in ``exclude`` (the cache being written,
    when it sits inside the videos folder) are not searched.
    """
    videos_dir = Path(videos_dir)
    if not videos_dir.exists():
        raise ConfigError(f"--videos {videos_dir}: no such directory; pass the folder that holds the videos")
    if not videos_dir.is_dir():
        raise ConfigError(f"--videos {videos_dir}: is a file, not a directory; pass the folder that holds it")
    skip = on_skip or (lambda path, why: log.warning("skipped %s: %s", path, why))
    excluded = {p.resolve() for p in map(Path, exclude)}
    found: dict[str, Path] = {}
    for path in _walk(videos_dir, excluded, skip):
        why = _not_a_video_file(path)
        if why:
            skip(path, why)
            continue
        video_id = _checked_id(path.stem, path)
        if video_id in found:
            raise ConfigError(
                f"two videos have the id {video_id!r}: {found[video_id]} and {path}; the id is the file name "
                "without extension and must be unique: rename or move one of them"
            )
        found[video_id] = path
    return found


def _walk(root: Path, excluded: set[Path], skip: Callable[[Path, str], None]) -> list[Path]:
    """Sorted paths under ``root`` with a video extension (files or not), not hidden, not excluded."""
    out = []

    def unreadable(exc: OSError) -> None:
        skip(Path(exc.filename), f"unreadable folder ({exc.strerror}): its videos are not searched")

    seen = {root.resolve()}
    # Symlinked folders are searched (as rglob did), each real folder once: a link loop ends.
    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=True):
        here = Path(folder)
        # why hidden: macOS copies leave `._clip.mp4` resource forks next to every video
        keep = []
        for d in dirs:
            real = (here / d).resolve()
            if not d.startswith(".") and real not in excluded and real not in seen:
                seen.add(real)
                keep.append(d)
        dirs[:] = keep
        for name in dirs + files:
            if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTENSIONS:
                out.append(here / name)
    return sorted(out)


def _not_a_video_file(path: Path) -> str | None:
    """Why ``path`` cannot be a video to decode, from its type alone (it is not opened)."""
    try:
        mode = path.stat().st_mode  # follows a symlink
    except FileNotFoundError:
        return f"dangling symlink (its target {os.readlink(path)} does not exist)" if path.is_symlink() \
            else "vanished while searching"
    except OSError as exc:
        return f"cannot stat it ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder named like a video file, not a video"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device file, not a regular file"
    return "not a regular file"


def _checked_id(video_id: str, path: Path) -> str:
    try:
        return validate_video_id(video_id)
    except CacheSchemaError as e:
        raise ConfigError(f"{path}: {e}; rename it") from e


def raw_video_for(frames_id: str, videos: dict[str, Path]) -> Path | None:
    """The raw video of a frames folder: same id, or the id without ABAW's `_left`/`_right`."""
    if frames_id in videos:
        return videos[frames_id]
    for suffix in PERSON_SUFFIXES:
        if frames_id.endswith(suffix) and frames_id[: -len(suffix)] in videos:
            return videos[frames_id[: -len(suffix)]]
    return None


def discover_videos(
    videos_dir: Path,
    frames_dir: Path | None = None,
    *,
    limit: int | None = None,
    face_crop: str = "none",
    image_size: int = 224,
    batch_frames: int = messages.BATCH_FRAMES,
    jpg_resize: str = "bilinear",
    on_warning: Callable[[str], None] | None = None,
    exclude: Iterable[Path] = (),
) -> list[DecodeJob]:
    """Jobs sorted by video id; the first ``limit`` of them when given.

    Without ``frames_dir``: one job per video file. With it: one job per folder in
    ``frames_dir`` (ABAW cropped_aligned), its raw video found by id or by id minus
    `_left`/`_right`; a folder with no raw video still becomes a job (no audio) and a warning.
    Warnings go to ``on_warning`` (default: this module's logger): one per input skipped
    (with why), at most ``MAX_SKIP_LINES`` then a count. ``exclude``: folders not searched.
    """
    warn = on_warning or log.warning
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    skipped: list[str] = []
    videos = find_video_files(videos_dir, exclude=exclude, on_skip=lambda p, why: skipped.append(f"skipped {p}: {why}"))
    for line in skipped[:MAX_SKIP_LINES]:
        warn(line)
    if len(skipped) > MAX_SKIP_LINES:
        warn(f"... and {len(skipped) - MAX_SKIP_LINES} more input(s) skipped")
    if not videos:
        exts = " ".join(sorted(VIDEO_EXTENSIONS))
        raise ConfigError(f"--videos {videos_dir}: no video files found (searched recursively for {exts}); check the path")
    # segments: read at call time, so that tests can make short videos split
    new_job = partial(DecodeJob, face_crop=face_crop, image_size=image_size, batch_frames=batch_frames,
                      jpg_resize=jpg_resize, segment_frames=messages.SEGMENT_FRAMES)
    if frames_dir is None:
        jobs = [new_job(vid, path, path, None) for vid, path in videos.items()]
    else:
        jobs = _frames_jobs(Path(frames_dir), videos, new_job, warn)
    jobs.sort(key=lambda job: job.video_id)
    return jobs[:limit] if limit is not None else jobs


def _frames_jobs(frames_dir: Path, videos: dict[str, Path], new_job: Callable[..., DecodeJob],
                 warn) -> list[DecodeJob]:
    if not frames_dir.is_dir():
        raise ConfigError(f"--frames {frames_dir}: no such directory; pass ABAW's cropped_aligned folder")
    folders = sorted(p for p in frames_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(
            f"--frames {frames_dir}: no frame folders; expected {frames_dir}/<video_id>/00001.jpg, ..."
        )
    jobs, used, no_video = [], set(), []
    for folder in folders:
        video_id = _checked_id(folder.name, folder)
        raw = raw_video_for(video_id, videos)
        if raw is None:
            no_video.append(video_id)
        else:
            used.add(raw)
        jobs.append(new_job(video_id, raw, raw, folder))
    if no_video:
        warn(
            f"{len(no_video)} frame folder(s) have no raw video (first: {no_video[0]}): they get no audio and an "
            "assumed 30 fps; put the videos under --videos to fix that"
        )
    unused = [vid for vid, path in videos.items() if path not in used]
    if unused:
        warn(f"{len(unused)} video(s) have no frame folder under {frames_dir} and are skipped (first: {unused[0]})")
    return jobs
