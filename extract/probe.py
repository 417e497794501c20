"""Open a media file with PyAV before decoding it, and say clearly what is wrong with it.

PyAV fails cleanly on input that can crash decord, and it reads what the container
declares (durations, frame counts) so that a truncated file is caught instead of coming
back silently short.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from pathlib import Path

from expr.core.errors import MediaDecodeError

FIX_HINT = "re-encode it with ffmpeg (ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4) or leave it out"


@dataclass
class Probe:
    has_video: bool
    has_audio: bool
    video_start: float  # seconds: presentation time of the first video frame
    video_declared: float | None  # what the container says the video stream lasts, seconds
    video_frames: int  # frames the container header announces (0: unknown)
    container_declared: float | None = None  # the whole file's duration (all streams), seconds


def declared_duration(stream) -> float | None:
    """A stream's duration as its container declares it (index or Matroska DURATION tag), seconds."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", str(stream.metadata.get("DURATION", "")).strip())
    if tag:
        return int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3])
    return None


def probe(path: Path) -> Probe:
    """What ``path`` holds, per its container; MediaDecodeError for empty or unreadable files."""
    import av
    from av.error import FFmpegError  # the top-level av.FFmpegError is not in its stubs

    try:
        size = path.stat().st_size
    except OSError as e:
        raise MediaDecodeError(f"{path}: cannot read the file ({e.strerror})") from e
    if size == 0:
        raise MediaDecodeError(f"{path}: the file is empty (0 bytes); the copy or download failed: fetch it again")
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0] if container.streams.video else None
            start = 0.0
            if video is not None and video.start_time is not None and video.time_base is not None:
                start = float(video.start_time * video.time_base)
            declared = declared_duration(video) if video is not None else None
            frames = int(video.frames or 0) if video is not None else 0
            # FLV declares no per-stream duration, only the file's (onMetaData, at its start)
            whole = container.duration / 1_000_000 if container.duration else None  # AV_TIME_BASE units
            return Probe(video is not None, bool(container.streams.audio), start, declared, frames, whole)
    except FFmpegError as e:
        if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM):  # not a damaged file: say so
            raise MediaDecodeError(
                f"{path}: cannot read the file (permission denied): make it readable (chmod a+r) or leave it out"
            ) from e
        raise MediaDecodeError(
            f"{path}: not a video ffmpeg can read ({short_error(e)}); check that it is a complete video file or {FIX_HINT}"
        ) from e


def short_error(e: BaseException) -> str:
    """First line of an exception's message, without decord's '[time] file.cc:123:' prefix."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"\[[\d:]+\] \S+?:\d+: ", "", text)
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    text = re.sub(r": '[^']*'$", "", text)  # ffmpeg repeats the path; the caller names it already
    text = re.sub(r"(failed with )?-?1094995529", "invalid data", text)  # AVERROR_INVALIDDATA
    return text[:200]


def stream_reach(path: Path) -> float | None:
    """How far the file's streams reach, in seconds from the file's start: the furthest
    packet end (pts + duration) of any stream, read by demuxing without decoding (~4 us a
    packet: 0.10 s for a 10-minute FLV of 24,378 packets). A read error mid-file counts what
    came before it; None when no packet has a timestamp."""
    import av
    from av.error import FFmpegError

    reach: float | None = None
    try:
        with av.open(str(path)) as container:
            start = container.start_time / 1_000_000 if container.start_time is not None else 0.0
            try:
                for packet in container.demux():
                    if packet.pts is None or packet.time_base is None:
                        continue  # the flush packet at the end of each stream
                    end = float((packet.pts + (packet.duration or 0)) * packet.time_base) - start
                    reach = end if reach is None else max(reach, end)  # B-frames: pts not in order
            except FFmpegError:
                pass  # a damaged tail: what was read before it is what the file holds
    except FFmpegError:
        return None
    return reach


def check_complete(path: Path, info: Probe, n: int, duration: float) -> str | None:
    """Fail a video with fewer frames than its container announces; a note (for the run's
    warnings) when it is kept although a stream outlasts its video (the audio, cut to the video).

    Matroska/WebM (index at the end) and AVI (idx1 at the end) cut short just have fewer
    frames, silently; their headers still carry the full duration / frame count. FLV
    declares only the whole file's duration (an FLV cut at a tag boundary decoded 1 frame
    of 60 with no error and was stored as ok), and its audio may legitimately outlast the
    video (a camera that stopped first): when the video stops short of that duration, the
    streams' packets tell the two apart (``stream_reach``): a cut file has ALL its streams
    short, a whole one has some stream that reaches the end.
    """
    declared, frames, whole = info.video_declared, info.video_frames, info.container_declared
    short = declared is not None and duration < declared - max(0.5, 0.05 * declared)
    note = None
    if declared is None and not frames and whole is not None and duration < whole - max(0.5, 0.05 * whole):
        # only these files pay for the demux: one whose video fills the file never reads it twice
        reach = stream_reach(path)
        if reach is None or reach < whole - max(0.5, 0.05 * whole):
            reached = f"no stream reaches past {reach:.2f} s" if reach is not None else "no stream has timestamps"
            raise MediaDecodeError(
                f"{path}: truncated: {n} of ~{round(whole * n / duration) if duration > 0 else '?'} frames "
                f"(the video stream holds {duration:.2f} s and {reached} of the {whole:.2f} s the file "
                "announces); interrupted download or copy? fetch it again or " + FIX_HINT
            )
        # kept: say so, since its labels may run past its last frame (the audio is cut to the video)
        note = (f"{path}: the video stream stops at {duration:.2f} s but another stream (audio) runs to "
                f"{reach:.2f} s; kept with its {n} frames, the audio cut to them")
    if short or (frames and n < frames - max(2, 0.05 * frames)):
        expected = f"{frames} frames" if frames else f"{declared:.2f} s"
        raise MediaDecodeError(
            f"{path}: the video stream holds {n} frames ({duration:.2f} s) but the file announces {expected}; "
            "the file looks truncated (interrupted download or copy?): fetch it again or " + FIX_HINT
        )
    return note
