"""The ``expr extract`` run loop: discover -> skip complete -> decode -> encode -> write.

Decoding runs in worker processes (``media.DecodePool``) and streams frame batches of
several videos, interleaved. Frames are pooled across video boundaries into image-encoder
batches of ``batch_size``; features go back to their video's accumulator, and a video is
written (audio features first) as soon as its decoder said done and its last frame is
encoded. Each write is atomic, so a killed run resumes by skipping what is complete.

A failure of one video (decode, encode, write) is caught, recorded with its reason, and the
run goes on. The library reports through the ``progress`` callback; it never prints.
Under torchrun (WORLD_SIZE/RANK) each rank takes every WORLD_SIZE-th video, and rank 0
consolidates the cache metadata after a barrier.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np

from expr.cache_format import CLASS_NAMES, PROMPT_TEMPLATE, consolidate, open_writer
from expr.errors import ConfigError, ExprError, MediaDecodeError
from expr.extract import backbones as B
from expr.extract.audio_features import AudioEncoder
from expr.extract.config import ExtractConfig, parse_shard
from expr.extract import media as M


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
class Backbones:
    visual: B.VisualEncoder
    audio: AudioEncoder
    attrs: dict                # root attribute "backbones"
    text_embeddings: np.ndarray
    logit_scale: float
    random_streams: list[str]


# -- setup ------------------------------------------------------------------------------------
def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def resolve_device(device: str, local_rank: int = 0) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is visible; use --device cpu")
        if device == "cuda":
            device = f"cuda:{local_rank}"
    return device


def load_backbones(config: ExtractConfig, device: str) -> Backbones:
    """Resolve both weight sources first (bad tags fail before anything loads), then build."""
    vspec = B.get_spec(config.visual_model, "visual")
    aspec = B.get_spec(config.audio_model, "audio")
    vsrc = B.resolve_weights(vspec, config.visual_weights)
    asrc = B.resolve_weights(aspec, config.audio_weights)
    clip = B.build_clip(vspec, vsrc)
    prompts = [PROMPT_TEMPLATE.format(c) for c in CLASS_NAMES]
    text, scale = B.clip_text_embeddings(clip, vspec.arch, prompts)
    wav2vec2 = B.build_wav2vec2(aspec, asrc)
    return Backbones(
        visual=B.VisualEncoder(clip, vspec, device),
        audio=AudioEncoder(wav2vec2, aspec, device, config.audio_chunk_seconds, config.audio_context_seconds),
        attrs={"visual": B.backbone_attrs(vspec, vsrc), "audio": B.backbone_attrs(aspec, asrc)},
        text_embeddings=text,
        logit_scale=scale,
        random_streams=[s for s, src in (("visual", vsrc), ("audio", asrc)) if src.kind == "none"],
    )


def select_jobs(jobs: list, shard: str | None, rank: int, world_size: int) -> list:
    """This process's share: every N-th video of --shard K/N, then every WORLD_SIZE-th."""
    if shard:
        k, n = parse_shard(shard)
        jobs = jobs[k::n]
    return jobs[rank::world_size]


def _barrier(world_size: int) -> None:
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _init_dist(world_size: int) -> bool:
    """Join torchrun's process group (gloo: only barriers go through it). True if we did."""
    if world_size <= 1:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    # Ranks finish at different times (long videos): wait for days, not the 30 min default.
    dist.init_process_group("gloo", timeout=timedelta(days=7))
    return True


def _open_cache(config: ExtractConfig, bb: Backbones, rank: int, world_size: int):
    # --overwrite wipes the cache only when this run owns it all: a --shard job must not
    # delete the others' work (it re-extracts its own videos instead).
    reset = config.overwrite and config.shard is None
    kwargs = dict(backbones=bb.attrs, text_embeddings=bb.text_embeddings, logit_scale=bb.logit_scale,
                  protect=(config.videos, config.frames))  # --out may not overlap the inputs
    if rank == 0:
        writer = open_writer(config.out, reset=reset, **kwargs)
    _barrier(world_size)  # others open once rank 0 created (or wiped) the store
    if rank != 0:
        writer = open_writer(config.out, reset=False, **kwargs)
    return writer


def _skip_complete(jobs: list, writer, overwrite: bool, summary: ExtractSummary) -> list:
    """The jobs to run: all with ``overwrite``, else those not complete with an unchanged source."""
    todo = []
    for job in jobs:
        try:
            stat = M.source_stat(job)  # what the decoder puts in VideoHeader and the cache records
        except OSError as exc:  # vanished or unreadable since discovery
            summary.failed[job.video_id] = f"{job.source}: cannot stat ({exc.strerror})"
            continue
        if not overwrite and writer.is_complete(job.video_id, *stat):
            summary.skipped.append(job.video_id)
        else:
            todo.append(job)
    return todo


# -- the run ----------------------------------------------------------------------------------
def run_extract(config: ExtractConfig, progress: ProgressFn | None = None) -> ExtractSummary:
    """Extract features of every video of ``config.videos`` into ``config.out``."""
    from expr.extract.decode_pool import DecodePool
    from expr.extract.discover import discover_videos

    config.validate()
    emit = progress or (lambda event: None)
    rank, world_size, local_rank = dist_env()
    device = resolve_device(config.device, local_rank)
    notes: list[str] = []
    image_size = B.get_spec(config.visual_model, "visual").image_size
    jobs = discover_videos(config.videos, config.frames, limit=config.limit, face_crop=config.face_crop,
                           image_size=image_size, on_warning=notes.append)
    jobs = select_jobs(jobs, config.shard, rank, world_size)
    bb = load_backbones(config, device)

    owns_group = _init_dist(world_size)
    try:
        writer = _open_cache(config, bb, rank, world_size)
        summary = ExtractSummary(out=config.out, random_weights=bb.random_streams, device=device,
                                 rank=rank, world_size=world_size)
        todo = _skip_complete(jobs, writer, config.overwrite, summary)
        random = tuple(
            f"{s} backbone {bb.attrs[s]['name']} has RANDOM WEIGHTS (--{s}-weights none): "
            "its features are not meaningful" for s in bb.random_streams
        )
        emit(ExtractEvent("start", len(todo), 0, 0, 0.0, 0.0, skipped=len(summary.skipped),
                          random_weights=random, warnings=tuple(notes), device=device))
        loop = _Loop(config, writer, bb, todo, summary, emit)
        if todo:
            with DecodePool(todo, workers=config.workers) as pool:
                for message in pool:
                    loop.handle(message)
            loop.finish()
        summary.elapsed = loop.elapsed()
        writer.record_failures(summary.failed, summary.ok)
        _barrier(world_size)
        # Consolidate once, after every writer finished; separate --shard jobs cannot know
        # when the others are done, so they leave it to `expr cache consolidate`.
        if rank == 0 and config.shard is None:
            consolidate(config.out)
            summary.consolidated = True
        return summary
    finally:
        if owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass
class _Video:
    header: object
    masks: list = field(default_factory=list)
    times: list = field(default_factory=list)
    feats: list = field(default_factory=list)
    samples: np.ndarray | None = None
    queued: int = 0        # frames waiting in the pending batch
    done: bool = False     # the decoder sent VideoDone


class _Loop:
    """Pools frames across videos into encoder batches and writes videos as they complete."""

    def __init__(self, config, writer, bb: Backbones, jobs, summary: ExtractSummary, emit):
        self.config, self.writer, self.bb, self.summary, self.emit = config, writer, bb, summary, emit
        self.jobs = {j.video_id: j for j in jobs}
        self.videos: dict[str, _Video] = {}
        self.pending: deque[tuple[str, np.ndarray]] = deque()  # (video_id, (n, S, S, 3) uint8)
        self.n_pending = 0
        self.encoded = 0  # frames encoded (progress); summary.frames counts those of written videos
        self.started = time.monotonic()
        self.size = bb.visual.spec.image_size

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def handle(self, msg) -> None:
        vid = msg.video_id
        if isinstance(msg, M.VideoFailed):
            self.fail(vid, msg.reason)
        elif isinstance(msg, M.VideoHeader):
            if vid in self.jobs and vid not in self.summary.failed:
                self.videos[vid] = _Video(header=msg)
        elif vid not in self.videos:
            return  # a video that already failed
        elif isinstance(msg, M.FrameBatch):
            self.add_frames(vid, msg)
        elif isinstance(msg, M.AudioTrack):
            self.videos[vid].samples = msg.samples
        elif isinstance(msg, M.VideoDone):
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
        self.encoded += n
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
        self.summary.frames += sum(len(f) for f in video.feats)
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
        return ExtractEvent(kind, len(self.jobs), len(s.ok) + len(s.failed), self.encoded,
                            s.audio_seconds, self.elapsed(), video_id=vid, error=error)


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _reason(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, ExprError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]
