"""The ``expr extract`` run: discover -> skip complete -> decode -> encode -> write.

Decoding runs in worker processes (``DecodePool``) and streams frame batches of several
videos, interleaved; ``EncoderFeed`` pools them into encoder batches and writes each video
as soon as it is complete. Each write is atomic, so a killed run resumes by skipping what
is complete. The library reports through the ``progress`` callback; it never prints.
Under torchrun (WORLD_SIZE/RANK) each rank takes every WORLD_SIZE-th video, and rank 0
consolidates the cache metadata after a barrier.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from expr.core import abaw
from expr.cache_format import (BackboneRecords, check_output_path, ensure_consolidated, is_cache, open_cache,
                                open_writer)
from expr.cache_format.options import UNRECORDED_DEFAULTS
from expr.core.devices import Dist, dist_env, resolve_device, setup_dist
from expr.core.errors import ExprError, MediaDecodeError, WeightsNotFoundError
from expr.extract import nvdec
from expr.extract.audio_features import AudioEncoder
from expr.extract.config import ExtractConfig, parse_shard
from expr.extract.encoder_feed import EncoderFeed, ExtractEvent, ExtractSummary, ProgressFn
from expr.extract.media import source_stat
from expr.extract.specs import get_spec
from expr.extract.visual_features import VisualEncoder, clip_text_embeddings
from expr.extract.weights import backbone_record, build_all, build_clip, build_wav2vec2, resolve_weights

if TYPE_CHECKING:
    from expr.extract.decode_pool import DecodePool

__all__ = ["ExtractEvent", "ExtractSummary", "run_extract", "select_jobs"]

T = TypeVar("T")


class Backbones:
    """The run's two backbones: specs and weight sources resolved at once (cheap, and a bad
    tag fails before anything loads), models built on first use. A re-run with nothing to
    do then never builds them, and one whose cache exists needs no CLIP for its text. A run
    with work builds CLIP first and Wav2Vec2 in a set-up thread (``start``)."""

    def __init__(self, config: ExtractConfig, device):
        self.config, self.device = config, device
        self.visual_spec = get_spec(config.visual_model, "visual")
        self.audio_spec = get_spec(config.audio_model, "audio")
        self.visual_source = resolve_weights(self.visual_spec, config.visual_weights)
        self.audio_source = resolve_weights(self.audio_spec, config.audio_weights)
        # How frames reach S x S (antialiased): raw frames bicubic + centre crop, --frames jpgs
        # by --jpg-resize. Recorded, so one cache never mixes the two resizes of jpgs.
        resize = config.jpg_resize if config.frames is not None else "bicubic"
        self.records = BackboneRecords(visual=backbone_record(self.visual_spec, self.visual_source, resize),
                                       audio=backbone_record(self.audio_spec, self.audio_source))
        self.random_streams = [s for s, src in (("visual", self.visual_source), ("audio", self.audio_source))
                               if src.kind == "none"]
        self._audio_built: Future | None = None  # Wav2Vec2 of the set-up thread (``start``)
        self._stopping = threading.Event()  # the run failed: the set-up thread makes no cache

    @cached_property
    def clip(self):
        return build_clip(self.visual_spec, self.visual_source)

    @cached_property
    def visual(self) -> VisualEncoder:
        return VisualEncoder(self.clip, self.visual_spec, self.device)

    @cached_property
    def _wav2vec2(self) -> AudioEncoder:
        return AudioEncoder(build_wav2vec2(self.audio_spec, self.audio_source), self.audio_spec, self.device,
                            self.config.audio_chunk_seconds, self.config.audio_context_seconds)

    @property
    def audio(self) -> AudioEncoder:
        """Wav2Vec2, from any thread: the set-up thread's (``start``), waited for; else built here."""
        return self._audio_built.result() if self._audio_built is not None else self._wav2vec2

    def build(self) -> None:
        """Build both models now; when both lack their weights, one error names both."""
        build_all({"visual": lambda: self.visual, "audio": lambda: self.audio})

    def start(self, then: Callable[[], T]) -> Future[T]:
        """Build CLIP here, then Wav2Vec2 and ``then()`` (the cache's creation) in a thread of
        their own; the Future of ``then()``.

        Why: the first batch needs CLIP alone. Wav2Vec2 (1.25 s on the 2-core machine; on a GPU
        machine its weights are read and moved too) and a new cache's text embeddings (0.4-0.6 s:
        CLIP's text tower on the CPU) no longer delay it; the decode loop runs meanwhile, and the
        writer thread waits for the cache. The loop raises the thread's error at its next
        message, and ``stop`` keeps a failed run from making a cache: a checkpoint that cannot be
        loaded still leaves none. When CLIP lacks its weights, the one error names Wav2Vec2 too
        if it lacks its own."""
        try:
            self.visual
        except WeightsNotFoundError:
            self.build()  # raises, naming both streams when both lack their weights
            raise

        audio: Future = Future()
        self._audio_built = audio

        def rest() -> T:
            _settle(audio, lambda: self._wav2vec2)
            audio.result()  # its error is the set-up's
            if self._stopping.is_set():
                raise ExprError("the run stopped before its cache was made")
            return then()

        return _in_thread(rest, "expr-setup")

    def stop(self) -> None:
        """The run ends (an error, Ctrl-C, or done): a set-up thread still at work makes no cache."""
        self._stopping.set()

    def text(self, existing: Existing | None) -> tuple[np.ndarray, float]:
        """The classes' CLIP text embeddings and logit scale: the cache's own when it exists
        with these backbones (open_writer only checks their shape then), else from CLIP."""
        if existing is not None and existing.text is not None and existing.backbones == self.records:
            return existing.text
        return clip_text_embeddings(self.clip, self.visual_spec.arch, abaw.prompts())


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    """Run ``fn`` and put its result, or its exception, in ``future``."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the future
        future.set_exception(exc)


def _done(value: T) -> Future[T]:
    future: Future = Future()
    future.set_result(value)
    return future


def _in_thread(fn: Callable[[], T], name: str) -> Future[T]:
    """``fn()`` in a daemon thread (a Ctrl-C exit never waits for it); its Future."""
    future: Future = Future()
    threading.Thread(target=_settle, args=(future, fn), name=name, daemon=True).start()
    return future


def feature_options(config: ExtractConfig, geometry: str = "worker", decoder: str = "cpu") -> dict:
    """The options of this run that change features besides the backbones (cache_format.options):
    the cache records them, and refuses a run that would add videos made otherwise.
    ``geometry``, ``decoder``: what this run resolved (``resolve_geometry``, ``resolve_decoder``),
    not the options."""
    return {"face_crop": config.face_crop, "visual_source": "frames" if config.frames is not None else "video",
            "audio_chunk_seconds": float(config.audio_chunk_seconds),
            "audio_context_seconds": float(config.audio_context_seconds), "geometry": geometry,
            "decoder": decoder}


@dataclass(frozen=True)
class Existing:
    """What the start-up decisions need from an existing cache, read in ONE open: opening
    reads every video's attributes (~0.8 s for 10,000 videos), and the geometry, the decoder,
    the text embeddings and the retry of failed videos each opened it again."""

    options: dict | None  # the recorded feature options; None: an expr 0.2 cache (per video only)
    has_videos: bool
    backbones: BackboneRecords
    text: tuple[np.ndarray, float] | None  # embeddings + logit scale; None if unreadable
    failures: frozenset[str]  # the videos that failed last time

    def recorded(self, key: str) -> str | None:
        """What the cache records for option ``key`` (geometry, decoder): the value of a cache
        made before it was recorded is ``UNRECORDED_DEFAULTS[key]``."""
        if self.options is not None:
            return self.options.get(key, UNRECORDED_DEFAULTS[key])
        # an expr 0.2 cache: made in the workers, on the CPU
        return UNRECORDED_DEFAULTS[key] if self.has_videos else None


def read_existing(out: Path, reset: bool) -> Existing | None:
    """The existing cache at ``out`` as the start-up decisions see it; None for a new cache, one
    that ``reset`` (--overwrite) wipes, or one that cannot be opened (open_writer says why).

    Called before anything else reads the root: the open parses the root zarr.json (with the
    consolidated snapshot: ~4.7 kB a video) and keeps its attributes, so that every later
    check of the same file version (is_cache, the writer's checks) parses nothing again."""
    if reset or not Path(out).is_dir():  # (a folder that is not a cache: open_cache refuses it)
        return None
    try:
        with open_cache(out) as cache:
            try:
                text = (cache.text_embeddings(), cache.logit_scale)
            except ExprError:  # a damaged text array: CLIP computes it again
                text = None
            options = cache.attrs.get("options")
            return Existing(options if isinstance(options, dict) else None, bool(cache.video_ids),
                            cache.backbones, text, frozenset(cache.failures))
    except ExprError:
        return None


def _recorded(existing: Existing | None, key: str) -> str | None:
    """What the existing cache records for option ``key``; None for a new cache."""
    return existing.recorded(key) if existing is not None else None


def resolve_geometry(config: ExtractConfig, device, jobs: list, existing: Existing | None,
                     check=None) -> tuple[str, str | None]:
    """Where CLIP's geometry runs this run (extract/geometry_device.py), and at most one note.

    Raw frames without --face-crop and --frames jpg folders can take the device path (the Haar
    tracker stays in the workers); the self-check runs on the first job's frames, its jpgs for
    --frames. ``existing``: the cache's record (``read_existing``), None for a new one.
    ``check``: test-only stand-in for the start-up self-check."""
    from expr.extract.geometry_device import choose_geometry
    from expr.extract.native_decode import self_check

    eligible = config.face_crop == "none" and bool(jobs)

    def first_frames() -> float:
        """The check on the first video's first frames; a broken file is skipped (its own
        failure comes later, as usual), up to three."""
        error: Exception | None = None
        for job in jobs[:3]:
            try:
                return self_check(job, device)
            except MediaDecodeError as exc:
                error = exc
        raise error if error is not None else MediaDecodeError("no video to check")

    check = check or first_frames
    return choose_geometry(config.geometry, str(getattr(device, "type", device)).split(":")[0],
                           _recorded(existing, "geometry") if eligible else None,
                           eligible, check)


def select_jobs(jobs: list, shard: str | None, rank: int, world_size: int) -> list:
    """This process's share: every N-th video of --shard K/N, then every WORLD_SIZE-th."""
    if shard:
        k, n = parse_shard(shard)
        jobs = jobs[k::n]
    return jobs[rank::world_size]


def _open_cache(config: ExtractConfig, bb: Backbones, dist: Dist, reset: bool, existing: Existing | None,
                geometry: str = "worker", decoder: str = "cpu"):
    text, scale = bb.text(existing)
    open_ = partial(open_writer, config.out, backbones=bb.records, text_embeddings=text, logit_scale=scale,
                    protect=(config.videos, config.frames),  # --out may not overlap the inputs
                    options=feature_options(config, geometry, decoder))
    writer = open_(reset=reset) if dist.is_main else None
    dist.barrier()  # others open once rank 0 created (or wiped) the store
    return writer if writer is not None else open_(reset=False)


def _page_lock(summary: ExtractSummary, cudart=None):
    """The decode pool's ``page_lock`` on CUDA: register its frame slots as page-locked; when that
    fails, ONE note (in the summary: the start line is printed by then) and pageable copies."""
    from expr.extract.geometry_device import page_lock

    def lock(buffer):
        unlock, note = page_lock(buffer, cudart)
        if note:
            summary.warnings.setdefault("frame slots", []).append(note)
        return unlock

    return lock


def _skip_complete(jobs: list, writer, overwrite: bool, summary: ExtractSummary) -> list:
    """The jobs to run: all with ``overwrite``, else those not complete with an unchanged source."""
    todo = []
    for job in jobs:
        try:
            stat = source_stat(job)  # what the decoder puts in VideoHeader and the cache records
        except OSError as exc:  # vanished or unreadable since discovery
            summary.failed[job.video_id] = f"{job.source}: cannot stat ({exc.strerror})"
            continue
        if not overwrite and writer.is_complete(job.video_id, *stat):
            summary.skipped.append(job.video_id)
        else:
            todo.append(job)
    return todo


def _finish_step(summary: ExtractSummary, then: str, step, *args) -> bool:
    """Run a bookkeeping step after the videos (record failures, consolidate); its one-line
    failure (a disk that filled up meanwhile) becomes a note of the summary, not a traceback
    that hides it: the videos written are complete and readable without either step."""
    try:
        step(*args)
        return True
    except ExprError as exc:
        summary.warnings.setdefault("cache", []).append(f"{exc}; the videos written are complete: {then}")
        return False


def _probe_retries(todo: list, existing: Existing | None, summary: ExtractSummary) -> list:
    """Probe (PyAV, in this process: it fails cleanly) the videos that failed last time, before
    any model is built: a re-run where only broken files are left then fails them in a second,
    not after building both backbones (~9 s). Videos never tried are left to the workers."""
    from expr.core.errors import MediaDecodeError
    from expr.extract.probe import probe

    if not todo or existing is None:  # no cache before this run: nothing failed yet
        return todo
    failed_before = existing.failures
    keep = []
    for job in todo:
        if job.video_id in failed_before and job.video_path is not None:
            try:
                info = probe(job.video_path)
                if not info.has_video:
                    raise MediaDecodeError(f"{job.video_path}: the file has no video stream (audio only?); leave it out")
            except MediaDecodeError as exc:
                summary.failed[job.video_id] = str(exc)
                continue
        keep.append(job)
    return keep


def _decode_pool(config: ExtractConfig, todo: list, geometry: str, device,
                 summary: ExtractSummary) -> DecodePool | None:
    """The run's decode pool over ``todo``, started (the workers import and begin decoding while
    the caller builds its models); None with nothing to do. The feed's callbacks (``on_idle``,
    ``slot_fence``) are set once the feed exists."""
    from expr.extract.decode_pool import DecodePool

    if not todo:
        return None
    # two frame slots per worker: one being filled while the parent reads the other
    lock = _page_lock(summary) if geometry == "device" and device.type == "cuda" else None
    pool = DecodePool(todo, workers=config.workers, max_pending=max(8, 2 * config.workers), borrow_frames=True,
                      page_lock=lock, audio_jobs=True)
    pool.start()
    return pool


# -- the run ----------------------------------------------------------------------------------
def run_extract(config: ExtractConfig, progress: ProgressFn | None = None) -> ExtractSummary:
    """Extract features of every video of ``config.videos`` into ``config.out``."""
    from expr.extract.discover import discover_videos

    config.validate()
    # --overwrite wipes the cache only when this run owns it all: a --shard job must not
    # delete the others' work (it re-extracts its own videos instead).
    reset = config.overwrite and config.shard is None
    # The existing cache first (read-only): its open is the one parse of the root zarr.json.
    existing = read_existing(config.out, reset)
    # Refuse a wrong --out (the inputs, a folder that is not a cache) before minutes of work.
    check_output_path(config.out, overwrite=reset, protect=(config.videos, config.frames))
    emit = progress or (lambda event: None)
    rank, world_size, local_rank = dist_env()
    device = resolve_device(config.device, local_rank)
    notes: list[str] = []
    image_size = get_spec(config.visual_model, "visual").image_size
    jobs = discover_videos(config.videos, config.frames, limit=config.limit, face_crop=config.face_crop,
                           image_size=image_size, jpg_resize=config.jpg_resize, on_warning=notes.append,
                           exclude=(config.out,))  # a cache inside --videos is output, not input
    jobs = select_jobs(jobs, config.shard, rank, world_size)
    geometry, note = resolve_geometry(config, device, jobs, existing)
    if note:
        notes.append(note)
    if geometry == "device":
        jobs = [replace(j, geometry="device") for j in jobs]
    decoder, note = nvdec.resolve_decoder(config, device, jobs, geometry, _recorded(existing, "decoder"))
    if note:
        notes.append(note)
    if decoder == "nvdec":  # the workers read headers and audio; this process decodes the frames
        jobs = [replace(j, decoder="nvdec") for j in jobs]
    bb = Backbones(config, device)

    # gloo: only barriers go through the group; ranks finish at different times (long
    # videos), so they wait for days, not the 30 min default.
    dist = setup_dist(backend="gloo", timeout=timedelta(days=7))
    pool: DecodePool | None = None
    try:
        summary = ExtractSummary(out=config.out, random_weights=bb.random_streams, device=str(device),
                                 rank=dist.rank, world_size=dist.world)
        # ``setup``: the cache's writer, once Wav2Vec2 is built (Backbones.start)
        if jobs and (reset or not is_cache(config.out)):
            # A new cache: every video is to do, so its decoders start now and import and decode
            # while the backbones build (the first batch came 1.2-1.5 s later when they started
            # after it). CLIP builds here; Wav2Vec2, then the cache, in a thread while the first
            # batches encode. The cache is made only once both loaded, so that a checkpoint that
            # cannot be loaded leaves no empty cache behind that refuses a rerun with other
            # weights (the loop raises the error, and the workers stop).
            todo = _skip_complete(jobs, None, True, summary)
            pool = _decode_pool(config, todo, geometry, device, summary)
            setup = bb.start(partial(_open_cache, config, bb, dist, reset, existing, geometry, decoder))
        else:
            writer = _open_cache(config, bb, dist, reset, existing, geometry, decoder)
            todo = _skip_complete(jobs, writer, config.overwrite, summary)
            todo = _probe_retries(todo, existing, summary)
            pool = _decode_pool(config, todo, geometry, device, summary)
            # CLIP now, Wav2Vec2 while the decode loop runs; nothing to decode: neither
            setup = bb.start(lambda: writer) if pool is not None else _done(writer)
        random = tuple(
            f"{s} backbone {getattr(bb.records, s).name} has RANDOM WEIGHTS (--{s}-weights none): "
            "its features are not meaningful" for s in bb.random_streams
        )
        emit(ExtractEvent("start", len(todo), 0, 0, 0.0, 0.0, skipped=len(summary.skipped),
                          random_weights=random, warnings=tuple(notes), device=str(device)))
        feed = EncoderFeed(config, setup, bb, todo, summary, emit)
        try:
            if pool is not None:
                pool.on_idle, pool.slot_fence = feed.flush, feed.take_fence
                with pool:
                    messages = pool if decoder == "cpu" else nvdec.nvdec_messages(pool, todo, device, nvdec.load_decoder())
                    pending: Future | None = setup
                    for message in messages:
                        feed.handle(message)
                        if pending is not None and pending.done():
                            pending.result()  # a checkpoint that cannot be loaded stops the run here
                            pending = None
                    setup.result()
                feed.finish()
        finally:
            bb.stop()  # first: a write still waiting for the cache must not have it made
            feed.close()
        writer = setup.result()
        summary.elapsed = feed.elapsed()
        _finish_step(summary, "the next run retries them", writer.record_failures, summary.failed, summary.ok)
        dist.barrier()
        # Consolidate once, after every writer finished; separate --shard jobs cannot know
        # when the others are done, so they leave it to `expr cache consolidate`.
        if dist.is_main and config.shard is None:
            summary.consolidated = _finish_step(summary, f"afterwards run expr cache consolidate {config.out}",
                                                ensure_consolidated, config.out)
        return summary
    finally:
        if pool is not None:  # an error before the feed ran: its workers stop and its slots go
            pool.close()
        dist.close()
