"""Feed decoded frames to the encoders and write each video as soon as it is complete.

Frames of several videos arrive interleaved (from ``DecodePool``), and the segments of a
split video in any order; they are pooled across video boundaries into image-encoder batches
of ``batch_size``. Features go back to their video by frame index, and a video is handed to
the writer thread as soon as its decoder said done, every segment is in and its last frame is
encoded and its audio track is in; the writer waits for its audio features and commits it.
Audio tracks come from jobs of their own, before or after their video's frames; one thread
encodes whatever tracks are waiting in one batched call (audio_queue.py). The parent thread only
feeds: it never waits for a write (measured: synchronous writes took ~40% of its busy time).
A failure of one video (decode, encode, write) is recorded with its reason and the run goes
on. Progress goes to the ``emit`` callback, always from the calling thread; nothing prints.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expr.cache_format import VideoEntry, VideoExtras
from expr.core.errors import ExprError, MediaDecodeError
from expr.extract.audio_decode import cut_to_duration
from expr.extract.audio_queue import AudioQueue
from expr.extract.messages import AudioTrack, FrameBatch, SegmentDone, VideoDone, VideoFailed, VideoHeader, VideoSplit


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
    header: VideoHeader
    masks: list = field(default_factory=list)  # (first frame, (n,) bool), in arrival order
    times: list = field(default_factory=list)  # (first frame, (n,) float64)
    feats: list = field(default_factory=list)  # (first frame, (n, D))
    audio: Future | None = None   # Wav2Vec2 features, computed in the audio thread
    audio_in: bool = False        # its AudioTrack came (None samples: no audio)
    n_samples: int = 0            # audio samples decoded (0: no audio)
    queued: int = 0               # frames sent to the image encoder, features not back yet
    done: bool = False            # the decoder sent VideoDone
    segments: set = field(default_factory=set)  # first frames of the segments not done yet


_U8 = np.dtype(np.uint8)

# Complete videos handed to the writer thread and not yet written, at most.
MAX_PENDING_WRITES = 8


def _in_order(pieces: list) -> list:
    """The arrays of (first frame, array) pieces, by first frame."""
    return [array for _, array in sorted(pieces, key=lambda piece: piece[0])]


def _tiles(pieces: list, n: int) -> bool:
    """Whether the pieces cover frames 0..n-1 exactly once."""
    at = 0
    for start, array in sorted(pieces, key=lambda piece: piece[0]):
        if start != at:
            return False
        at += len(array)
    return at == n


class EncoderFeed:
    """Pools frames across videos into encoder batches and writes videos as they complete.

    Per message it does O(1) Python work: a FrameBatch is copied once, as a block, into the
    encoder's input buffer (so the decode pool may lend its shared-memory slot). Two buffers
    alternate: while the device encodes one, the next fills. With --geometry device (and
    NVDEC) the buffers are on the encoder's device: a slot's native frames go there in one
    copy (asynchronous from a page-locked slot: its event goes to the pool, ``take_fence``)
    and ``device_geometry`` writes straight into the buffer; CUDA streams are ordered by
    events, and no frame comes back to the host. Wav2Vec2 runs in one background
    thread as soon as a video's audio and header are in (a track that comes first waits for
    the header's duration), batched across the tracks waiting, so it overlaps with the image
    encoder instead of waiting behind each video's frames.
    """

    def __init__(self, config, writer: Future, bb, jobs, summary: ExtractSummary, emit):
        # ``writer``: the cache's writer, a Future: a new cache is made while the first batches
        # encode (run.Backbones.start), and the writer thread waits for it, not this one
        self.config, self.writer, self.bb, self.summary, self.emit = config, writer, bb, summary, emit
        self.jobs = {j.video_id: j for j in jobs}
        self.videos: dict[str, _Video] = {}
        self.size = bb.visual_spec.image_size
        self.buffers: list = []  # host np.ndarray or device Tensor; made on the first frames (the encoder is built lazily)
        self.fill = 0  # frames in the current buffer
        self.owners: list[tuple[str, int, int]] = []  # (video_id, first frame, n) of the current buffer
        self.inflight: tuple[object, list[tuple[str, int, int]], int] | None = None  # (handle, owners, n)
        self.encoded = 0  # frames encoded so far (progress rate)
        self.audio_queue: AudioQueue | None = None  # made with the audio encoder, on the first track
        self.early_audio: dict[str, AudioTrack] = {}  # tracks that came before their video's header
        # videos that share one audio file and video file (ABAW _left/_right): encoded once
        self.sharers = Counter((j.audio_path, j.video_path) for j in jobs if j.audio_path is not None)
        self.shared_audio: dict[tuple, list] = {}  # (audio, video, n samples) -> [Future, users left]
        self.write_thread = ThreadPoolExecutor(1, thread_name_prefix="expr-write")
        self.writes: list[tuple[str, _Video, Future]] = []  # handed to the writer, in order
        self.geometry_stream = None  # CUDA stream of --geometry device (made on first use)
        # --geometry device (or NVDEC): the input buffers live on the encoder's device and the
        # geometry writes into them; the worker path keeps host buffers (pinned on CUDA)
        self.device_buffers = any(j.geometry == "device" or j.decoder == "nvdec" for j in jobs)
        self.free: list = [None, None]  # per buffer: event after the encoder's read of it (CUDA)
        self.fence = None  # the last slot copy's (to_device), until the pool takes it
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def handle(self, msg) -> None:
        vid = msg.video_id
        if isinstance(msg, VideoFailed):
            self.fail(vid, msg.reason)
        elif isinstance(msg, VideoHeader):
            if vid in self.jobs and vid not in self.summary.failed:
                self.videos[vid] = _Video(header=msg)
                if vid in self.early_audio:
                    self.take_audio(vid, self.early_audio.pop(vid))
        elif isinstance(msg, AudioTrack) and vid not in self.videos:
            if vid in self.jobs and vid not in self.summary.failed and vid not in self.summary.ok:
                self.early_audio[vid] = msg  # its audio job was faster than its frame job's header
        elif vid not in self.videos:
            return  # a video that already failed
        elif isinstance(msg, FrameBatch):
            self.add_frames(vid, msg)
        elif isinstance(msg, VideoSplit):
            self.videos[vid].segments = {a for a, _ in msg.segments}
        elif isinstance(msg, SegmentDone):
            self.videos[vid].segments.discard(msg.start)
        elif isinstance(msg, AudioTrack):
            self.take_audio(vid, msg)
        elif isinstance(msg, VideoDone):
            self.videos[vid].done = True
            if msg.warnings:
                self.summary.warnings[vid] = list(msg.warnings)
        self.write_ready()

    def take_audio(self, vid: str, msg: AudioTrack) -> None:
        """Queue a video's track (cut to its duration) for Wav2Vec2; the header is in."""
        video, job = self.videos[vid], self.jobs[vid]
        video.audio_in = True
        if msg.samples is None:
            return
        samples = cut_to_duration(msg.samples, video.header.duration)
        video.n_samples = len(samples)
        key = (job.audio_path, job.video_path, len(samples))
        if key in self.shared_audio:  # the other face of the same video: the same features
            entry = self.shared_audio[key]
            video.audio, entry[1] = entry[0], entry[1] - 1
            if entry[1] <= 0:
                del self.shared_audio[key]
            return
        if self.audio_queue is None:  # the audio thread waits for Wav2Vec2 (still building), not this one
            self.audio_queue = AudioQueue(lambda tracks: self.bb.audio.encode_many(tracks))
        video.audio = self.audio_queue.submit(samples)
        if self.sharers[key[:2]] > 1:
            self.shared_audio[key] = [video.audio, self.sharers[key[:2]] - 1]

    def to_device(self, batch):
        """A message's native frames on the encoder's device (--geometry device), on the
        geometry's own CUDA stream: ONE copy, asynchronous from a page-locked slot. Its fence
        goes to the decode pool (``take_fence``), which reuses the slot only once the copy has
        read it; nothing here waits for it."""
        import torch

        from expr.extract.geometry_device import to_device

        device = self.bb.visual.device
        if device.type == "cuda" and self.geometry_stream is None:
            self.geometry_stream = torch.cuda.Stream(device)
        x = batch.pixels
        if not isinstance(x, torch.Tensor):
            x, self.fence = to_device(x, device, self.geometry_stream)
        elif x.device.type == "cuda" and self.geometry_stream is not None:  # NVDEC's, on the device already
            if batch.ready is not None:  # made on the decoder's stream: the geometry's waits for it
                self.geometry_stream.wait_event(batch.ready)
            x.record_stream(self.geometry_stream)  # not reused by the allocator before the geometry ran
        return x

    def take_fence(self):
        """The fence of the last frames copied from a decode pool slot (None: none pending, the
        slot is free at once); the pool calls this once the message was handled."""
        fence, self.fence = self.fence, None
        return fence

    def _on_geometry_stream(self):
        import contextlib

        import torch

        return torch.cuda.stream(self.geometry_stream) if self.geometry_stream is not None else contextlib.nullcontext()

    def put(self, batch, source, done: int, k: int) -> None:
        """Frames done..done+k of ``batch`` into the current buffer at ``self.fill``: native
        frames through ``device_geometry`` straight into the buffer (on the device path the
        buffer is on the encoder's device: no round trip through the host), others copied."""
        buffer = self.buffers[0]
        if batch.layout is None and isinstance(buffer, np.ndarray):  # the worker path: host to host
            buffer[self.fill: self.fill + k] = batch.pixels[done: done + k]
            return
        import torch

        from expr.extract.geometry_device import device_geometry

        view = buffer[self.fill: self.fill + k]
        out = view if isinstance(view, torch.Tensor) else torch.from_numpy(view)
        with self._on_geometry_stream(), torch.inference_mode():
            if self.free[0] is not None:  # the encoder's read of this buffer's last batch
                torch.cuda.current_stream(self.bb.visual.device).wait_event(self.free[0])
                self.free[0] = None
            if batch.layout is not None:
                device_geometry(source[done: done + k], batch.layout, self.size, out=out)
            else:  # frames whose geometry is done (NVDEC's, or a worker's on a device buffer)
                out.copy_(source[done: done + k] if isinstance(source, torch.Tensor)
                          else torch.from_numpy(np.ascontiguousarray(source[done: done + k])))

    def new_buffers(self) -> list:
        """Two (B, S, S, 3) uint8 encoder input buffers: on the encoder's device when the
        geometry runs there (``device_buffers``), else on the host (pinned on CUDA)."""
        visual, b = self.bb.visual, self.config.batch_size
        return [visual.new_device_batch(b) if self.device_buffers else visual.new_batch(b) for _ in range(2)]

    def add_frames(self, vid: str, batch) -> None:
        pixels, n, size = batch.pixels, len(batch.pixels), self.size
        if batch.layout is not None:
            problem = None if tuple(pixels.shape[1:]) == batch.layout.frame_shape() \
                else f"native frames {tuple(pixels.shape)} do not match {batch.layout}"
        else:
            # numpy's dtype first: str() of it cost ~3 us a message (torch's dtype: NVDEC's frames)
            problem = None if tuple(pixels.shape[1:]) == (size, size, 3) and (
                pixels.dtype == _U8 or str(pixels.dtype).endswith("uint8")) \
                else f"decoder returned frames {tuple(pixels.shape)} {pixels.dtype}"
        if problem is None and (np.shape(batch.mask) != (n,) or np.shape(batch.timestamps) != (n,)):
            problem = f"decoder returned a mask {np.shape(batch.mask)} and timestamps {np.shape(batch.timestamps)}"
        if problem is not None:
            self.fail(vid, f"{self.jobs[vid].source}: {problem}; expected (N, {size}, {size}, 3) uint8 (or native "
                           "frames of their layout) and (N,)")
            return
        try:
            source = self.to_device(batch) if batch.layout is not None else pixels
        except Exception as exc:  # one video's frames, not the run
            self.fail_geometry(vid, exc)
            return
        video = self.videos[vid]
        video.masks.append((batch.start, np.asarray(batch.mask, dtype=bool)))
        video.times.append((batch.start, np.asarray(batch.timestamps, dtype=np.float64)))
        video.queued += n
        if not self.buffers:
            self.buffers = self.new_buffers()
        done = 0
        while done < n:
            k = min(n - done, self.config.batch_size - self.fill)
            try:
                self.put(batch, source, done, k)
            except Exception as exc:  # one video's frames, not the run
                self.fail_geometry(vid, exc)
                return
            self.owners.append((vid, batch.start + done, k))
            self.fill += k
            done += k
            if self.fill == self.config.batch_size:
                self.encode()

    def fail_geometry(self, vid: str, exc: Exception) -> None:
        self.fail(vid, f"{self.jobs[vid].source}: geometry on the device failed: {type(exc).__name__}: {exc}")

    def encode(self) -> None:
        """Submit the current buffer (padded) and collect the batch before it."""
        import torch

        buffer, n = self.buffers[0], self.fill
        # Always the same batch shape: a frame's features then do not depend on which
        # frames share its batch (GEMM blocking depends on the batch size), so a resumed
        # run writes bit-identical features on CPU.
        try:
            if isinstance(buffer, np.ndarray):
                buffer[n:] = 0
                handle = self.bb.visual.submit(buffer)
            else:
                with self._on_geometry_stream():
                    buffer[n:] = 0
                    written = self.record()
                if written is not None:  # the encoder's stream reads what the geometry's wrote
                    torch.cuda.current_stream(self.bb.visual.device).wait_event(written)
                handle = self.bb.visual.submit(buffer)
                self.free[0] = self.record()  # the geometry's stream waits for it before refilling
        except Exception as exc:  # e.g. out of memory: the videos of this batch fail, not the run
            handle = exc
        previous, self.inflight = self.inflight, (handle, self.owners, n)
        self.buffers.reverse()  # fill the other one while the device works on this one
        self.free.reverse()
        self.fill, self.owners = 0, []
        if previous is not None:
            self.collect(*previous)

    def record(self):
        """A CUDA event recorded on the current stream (None off CUDA: there every op is done
        when its call returns). Streams wait on events, never the host on the whole device."""
        import torch

        if self.geometry_stream is None:
            return None
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.bb.visual.device))
        return event

    def collect(self, handle, owners: list[tuple[str, int, int]], n: int) -> None:
        """Hand a submitted batch's features to their videos."""
        try:
            if isinstance(handle, Exception):
                raise handle
            feats = self.bb.visual.collect(handle)[:n]  # (n, D)
        except Exception as exc:
            for vid in dict.fromkeys(v for v, _, _ in owners):
                self.fail(vid, f"image encoder failed: {type(exc).__name__}: {exc}")
            return
        offset = 0
        for vid, start, k in owners:
            video = self.videos.get(vid)
            if video is not None:  # else it failed meanwhile: its features are dropped
                video.feats.append((start, feats[offset: offset + k]))
                video.queued -= k
            offset += k
        self.encoded += n  # progress; summary.frames counts only frames of written videos
        self.emit(self.event("batch"))
        self.write_ready()

    def write_ready(self, wait: bool = False) -> None:
        """Hand the complete videos (every frame encoded, every segment in) to the writer
        thread, then take in the writes that finished (all of them with ``wait``)."""
        for vid, video in list(self.videos.items()):
            if video.done and video.audio_in and not video.segments and video.queued == 0:
                del self.videos[vid]
                self.writes.append((vid, video, self.write_thread.submit(self.write, vid, video)))
        # a disk slower than the encoder holds the feed back here, as synchronous writes did,
        # instead of finished videos piling up in memory behind the writer thread
        while self.writes and (wait or len(self.writes) > MAX_PENDING_WRITES or self.writes[0][2].done()):
            vid, video, future = self.writes.pop(0)
            reason = future.result()
            if reason is not None:
                self.fail(vid, reason)
                continue
            self.summary.ok.append(vid)
            self.summary.frames += sum(len(f) for _, f in video.feats)
            if video.audio is not None:
                self.summary.audio_seconds += video.n_samples / self.bb.audio_spec.sample_rate
            self.emit(self.event("video", vid))

    def write(self, vid: str, video: _Video) -> str | None:
        """Commit one video (in the writer thread); the reason it failed, or None."""
        job, header = self.jobs[vid], video.header
        try:
            if not video.feats:
                raise MediaDecodeError(f"{job.source}: no video frames could be decoded")
            if not _tiles(video.feats, header.n_frames):
                raise MediaDecodeError(f"{job.source}: the decoders returned frames that do not cover 0..{header.n_frames - 1} "
                                       "exactly once (a segment was lost): re-run to retry")
            audio = video.audio.result() if video.audio is not None else None
            self.writer.result().write_video(vid, VideoEntry(
                visual=np.concatenate(_in_order(video.feats)),
                frame_mask=np.concatenate(_in_order(video.masks)),
                timestamps=np.concatenate(_in_order(video.times)),
                fps=header.fps,
                duration=header.duration,
                source=_relative(job.source, self.config.videos),
                source_size=header.source_size,
                source_mtime=header.source_mtime,
                audio=audio,
                # face_crop and visual_source: the writer records the run's feature options
                # (run.feature_options) on every video; not spelled a second time here
                extras=VideoExtras(audio_samples=video.n_samples),
            ))
        except Exception as exc:  # one video's failure is recorded; the run goes on
            return _reason(exc)
        return None

    def fail(self, vid: str, reason: str) -> None:
        self.videos.pop(vid, None)  # frames already in a batch are encoded and dropped
        self.early_audio.pop(vid, None)
        if vid in self.summary.failed or vid in self.summary.ok:
            return
        if any(v == vid for v, _, _ in self.writes):  # complete and being written: its write decides
            return
        self.summary.failed[vid] = reason
        self.emit(self.event("video", vid, reason))

    def flush(self, wait: bool = False) -> None:
        """The decoders are quiet: encode the frames held (padded, as always) and collect every
        batch, so that a video whose last frames wait in a buffer is written now (and, with
        ``wait``, every write handed to the writer thread finished)."""
        if self.fill:
            self.encode()
        if self.inflight is not None:
            previous, self.inflight = self.inflight, None
            self.collect(*previous)
        self.write_ready(wait)

    def finish(self) -> None:
        """After the decoders ended: encode what is left, fail what never completed."""
        self.flush(wait=True)
        if self.audio_queue is not None:
            self.audio_queue.shutdown()
            note = getattr(self.bb.audio, "note", None)  # batching's start-up check fell back
            if note:
                self.summary.warnings.setdefault("audio", []).append(note)
        self.write_thread.shutdown()
        for vid in list(self.videos):
            self.fail(vid, "the decoder stopped before the end of the video")
        for vid in self.jobs:
            if vid not in self.summary.ok and vid not in self.summary.failed:
                self.fail(vid, "the decoder returned nothing for this video")

    def close(self) -> None:
        """Stop the audio and writer threads (after an error: what they still have to do is
        dropped; a write under way finishes, and is committed whole or not at all)."""
        if self.audio_queue is not None:
            self.audio_queue.shutdown(wait=False, cancel_futures=True)
        self.write_thread.shutdown(wait=True, cancel_futures=True)

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
