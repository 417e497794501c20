"""Feed decoded frames to the encoders and write each video as soon as it is complete.

Frames of several videos arrive interleaved (from ``DecodePool``); they are pooled across
video boundaries into image-encoder batches of ``batch_size``. Features go back to their
video, and a video is written (audio features first) as soon as its decoder said done and
its last frame is encoded. A failure of one video (decode, encode, write) is recorded with
its reason and the run goes on. Progress goes to the ``emit`` callback; nothing prints.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expr.errors import ExprError, MediaDecodeError
from expr.extract.messages import AudioTrack, FrameBatch, VideoDone, VideoFailed, VideoHeader


@dataclass(frozen=True)
class ExtractEvent:
    """What the run reports to its ``progress`` callback."""

    kind: str                       # "start" | "batch" (frames encoded) | "video" (one ok/failed)
    videos_total: int               # videos this run extracts (complete ones excluded)
    videos_done: int                # ok + failed so far
    frames: int                     # frames encoded so far
    audio_seconds: float            # seconds of audio encoded so far
    elapsed: float                  # seconds since the decode loop started
    video_id: str | None = None     # on "video"
    error: str | None = None        # on a failed "video"
    skipped: int = 0                # on "start": complete videos left alone
    random_weights: tuple[str, ...] = ()  # on "start": one loud line per random backbone
    warnings: tuple[str, ...] = ()  # on "start": notes from finding the videos
    device: str = ""                # on "start"


@dataclass
class ExtractSummary:
    out: Path
    ok: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)  # written, but with notes
    frames: int = 0
    audio_seconds: float = 0.0
    elapsed: float = 0.0
    random_weights: list[str] = field(default_factory=list)  # streams with weights=none
    device: str = "cpu"
    rank: int = 0
    world_size: int = 1
    consolidated: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


ProgressFn = Callable[[ExtractEvent], None]


@dataclass
class _Video:
    header: object
    masks: list = field(default_factory=list)
    times: list = field(default_factory=list)
    feats: list = field(default_factory=list)
    samples: np.ndarray | None = None
    queued: int = 0        # frames waiting in the pending batch
    done: bool = False     # the decoder sent VideoDone


class EncoderFeed:
    """Pools frames across videos into encoder batches and writes videos as they complete."""

    def __init__(self, config, writer, bb, jobs, summary: ExtractSummary, emit):
        self.config, self.writer, self.bb, self.summary, self.emit = config, writer, bb, summary, emit
        self.jobs = {j.video_id: j for j in jobs}
        self.videos: dict[str, _Video] = {}
        self.pending: deque[tuple[str, np.ndarray]] = deque()  # (video_id, (n, S, S, 3) uint8)
        self.n_pending = 0
        self.started = time.monotonic()
        self.size = bb.visual.spec.image_size

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def handle(self, msg) -> None:
        vid = msg.video_id
        if isinstance(msg, VideoFailed):
            self.fail(vid, msg.reason)
        elif isinstance(msg, VideoHeader):
            if vid in self.jobs and vid not in self.summary.failed:
                self.videos[vid] = _Video(header=msg)
        elif vid not in self.videos:
            return  # a video that already failed
        elif isinstance(msg, FrameBatch):
            self.add_frames(vid, msg)
        elif isinstance(msg, AudioTrack):
            self.videos[vid].samples = msg.samples
        elif isinstance(msg, VideoDone):
            self.videos[vid].done = True
            if msg.warnings:
                self.summary.warnings[vid] = list(msg.warnings)
            self.write_ready()

    def add_frames(self, vid: str, batch) -> None:
        pixels = np.asarray(batch.pixels)
        n = len(pixels)
        if pixels.shape[1:] != (self.size, self.size, 3) or pixels.dtype != np.uint8 \
                or np.shape(batch.mask) != (n,) or np.shape(batch.timestamps) != (n,):
            self.fail(vid, f"decoder returned frames {pixels.shape} {pixels.dtype}, mask "
                           f"{np.shape(batch.mask)}, timestamps {np.shape(batch.timestamps)}; "
                           f"expected (N, {self.size}, {self.size}, 3) uint8 and (N,)")
            return
        video = self.videos[vid]
        video.masks.append(np.asarray(batch.mask, dtype=bool))
        video.times.append(np.asarray(batch.timestamps, dtype=np.float64))
        video.queued += n
        self.pending.append((vid, pixels))
        self.n_pending += n
        while self.n_pending >= self.config.batch_size:
            self.encode(self.config.batch_size)

    def encode(self, limit: int) -> None:
        """Encode up to ``limit`` pending frames (the oldest first) as one batch."""
        take, n = [], 0
        while self.pending and n < limit:
            vid, px = self.pending[0]
            k = min(len(px), limit - n)
            take.append((vid, px[:k]))
            if k == len(px):
                self.pending.popleft()
            else:
                self.pending[0] = (vid, px[k:])
            n += k
        self.n_pending -= n
        pixels = np.concatenate([px for _, px in take])  # (n, S, S, 3)
        if n < limit:
            # Always the same batch shape: a frame's features then do not depend on which
            # frames share its batch (GEMM blocking depends on the batch size), so a resumed
            # run writes bit-identical features on CPU.
            pixels = np.concatenate([pixels, np.zeros((limit - n, *pixels.shape[1:]), pixels.dtype)])
        try:
            feats = self.bb.visual(pixels)[:n]  # (n, D)
        except Exception as exc:  # e.g. out of memory: the videos of this batch fail, not the run
            for vid in dict.fromkeys(v for v, _ in take):
                self.fail(vid, f"image encoder failed: {type(exc).__name__}: {exc}")
            return
        offset = 0
        for vid, px in take:
            video = self.videos.get(vid)
            if video is not None:
                video.feats.append(feats[offset: offset + len(px)])
                video.queued -= len(px)
            offset += len(px)
        self.summary.frames += n
        self.emit(self.event("batch"))
        self.write_ready()

    def write_ready(self) -> None:
        for vid in [v for v, video in self.videos.items() if video.done and video.queued == 0]:
            self.write(vid, self.videos.pop(vid))

    def write(self, vid: str, video: _Video) -> None:
        job, header = self.jobs[vid], video.header
        try:
            if not video.feats:
                raise MediaDecodeError(f"{job.source}: no video frames could be decoded")
            audio = self.bb.audio(video.samples) if video.samples is not None else None
            self.writer.write_video(
                vid,
                visual=np.concatenate(video.feats),
                frame_mask=np.concatenate(video.masks),
                timestamps=np.concatenate(video.times),
                fps=header.fps,
                duration=header.duration,
                source=_relative(job.source, self.config.videos),
                source_size=header.source_size,
                source_mtime=header.source_mtime,
                audio=audio,
                extra_attrs={
                    "audio_samples": 0 if video.samples is None else int(len(video.samples)),
                    "visual_source": "frames" if self.config.frames is not None else "video",
                    "face_crop": job.face_crop,
                },
            )
        except Exception as exc:  # one video's failure is recorded; the run goes on
            self.fail(vid, _reason(exc))
            return
        self.summary.ok.append(vid)
        if video.samples is not None:
            self.summary.audio_seconds += len(video.samples) / self.bb.audio.spec.sample_rate
        self.emit(self.event("video", vid))

    def fail(self, vid: str, reason: str) -> None:
        self.videos.pop(vid, None)
        if any(v == vid for v, _ in self.pending):
            self.pending = deque((v, px) for v, px in self.pending if v != vid)
            self.n_pending = sum(len(px) for _, px in self.pending)
        if vid in self.summary.failed or vid in self.summary.ok:
            return
        self.summary.failed[vid] = reason
        self.emit(self.event("video", vid, reason))

    def finish(self) -> None:
        """After the decoders ended: encode what is left, fail what never completed."""
        while self.n_pending:
            self.encode(self.config.batch_size)  # the last one padded to the batch size
        self.write_ready()
        for vid in list(self.videos):
            self.fail(vid, "the decoder stopped before the end of the video")
        for vid in self.jobs:
            if vid not in self.summary.ok and vid not in self.summary.failed:
                self.fail(vid, "the decoder returned nothing for this video")

    def event(self, kind: str, vid: str | None = None, error: str | None = None) -> ExtractEvent:
        s = self.summary
        return ExtractEvent(kind, len(self.jobs), len(s.ok) + len(s.failed), s.frames,
                            s.audio_seconds, self.elapsed(), video_id=vid, error=error)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _reason(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, ExprError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]
