"""Decode videos in worker processes, streaming messages back with bounded memory.

Why processes: decord can crash the whole process on a corrupt file (segfault). Each worker
decodes jobs and talks to the parent through its OWN pipe, so a worker that dies mid-message
corrupts only a channel that is thrown away with it; the parent turns the death into
``VideoFailed`` for that worker's current video and starts a fresh worker.

Jobs: one per video, longest (largest file) first; a long video's job answers with a
``VideoSplit`` and its keyframe-aligned segments (segments.py) join the queue in the place
of their video, before any later video, so that every worker shares the longest work first
and videos finish (and are written) in about the order they started, not all at the end. Workers start only for jobs there are (``--workers 500`` with
two short videos starts two; four with audio jobs), plus idle spares up to the core count when a video may split.

With ``audio_jobs`` (what a run uses) each video's audio is a job of its own, queued right
after its video's: a long video's audio no longer waits behind its frames, so Wav2Vec2 gets
tracks early, and any worker can take it. Videos that take their audio from one file (an
ABAW ``_left``/``_right`` pair) share one audio job: the track is decoded once and its
``AudioTrack`` (or ``VideoFailed``) is passed on once per video.

Why shared memory: pickling a batch of 224x224 frames through a pipe costs the parent more
CPU per frame than everything else it does (measured: ~140 us/frame). Frames travel in
``max_pending`` slots of one shared-memory block instead; the pipe carries only the small
rest of a ``FrameBatch`` (start, mask, timestamps) and the slot number, as a ``_SlotBatch``.
The block is named ``expr-<pid>-<random>`` in /dev/shm: a run killed with its whole process
group (OOM killer, Slurm, ssh hang-up) leaves it behind, and the next run removes the blocks
whose owner is dead. The slots are sized to /dev/shm's free space (Docker's default is 64 MB):
a block larger than the free space is created without error, and then kills the workers
with SIGBUS when they write to it.

Why audio tracks travel as files: a long video's track is big (480 s of 16 kHz float32: 30
MB). Unpickled from the pipe it cost the parent's feeding thread 52 ms of CPU (4.4 us a frame of
its 12,000-frame video, a fifth of everything that thread did); a socket moves it in ~200 kB
reads. The worker writes the samples to ``<block>-<random>`` beside the frame block in /dev/shm
and sends only the name (``_FileTrack``); the parent reads it back in one copy (~5 ms) and
removes it. A full /dev/shm sends the track through the pipe as before. The files die with the
block: ``close()`` removes this pool's, and a later run removes a dead run's.

Why credits: a credit is a free slot. A worker spends one per frame message it sends (up to
``SLOT_BATCHES`` decoded batches, ``_Coalesced``) and blocks when it has none. The parent hands
credits out ahead of time (shared among the busy workers, fewest-held first) and gets a slot
back when the consumer has taken its message. So at most ``max_pending`` slots of frames are in
flight (plus one decoded batch per worker waiting for a credit), however long the video and
however slow the consumer.

Why the parent never blocks on a pipe: a worker blocks sending a batch while the parent does
not read; had the parent then blocked sending credits into the worker's full pipe, both would
wait forever (measured: ``--workers 500`` hung 4 times in 5, each credit a message of its own,
each message costing ~1 kB of socket buffer). Credits now travel as one list per message and
a worker never has more than one credit message it has not acknowledged (every ``_SlotBatch``
and ``_Idle`` says how many it has read); a job or STOP goes only to a worker that waits for
one. So at most two small messages are ever in a parent-to-worker pipe, which fits any
socket buffer (tested with the smallest the kernel allows).

Messages of different videos interleave; within a job they are in order. A ``VideoFailed``
can follow a video's header and some batches: the consumer drops what it had for that video.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from expr.core.atomic import hold_lock, lock_held
from expr.core.errors import ConfigError, MediaDecodeError
from expr.extract.geometry_device import NativeLayout
from expr.extract.media import decode_video
from expr.extract.messages import (AudioTrack, DecodeJob, FrameBatch, Message, SegmentDone, VideoDone, VideoFailed,
                                   VideoSplit)
from expr.extract.segments import may_split

_STOP = None  # parent -> worker: exit
# parent -> worker: a DecodeJob, or a list of ints: credits, the numbers of free frame slots

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "expr-"  # + <pid of the run>-<random>
SHM_SHARE = 0.5  # at most this share of /dev/shm's free space for the frame slots


@dataclass(frozen=True)
class _SlotBatch:
    """A ``FrameBatch`` on the pipe: its pixels are in shared-memory slot ``slot``, not pickled."""

    video_id: str
    start: int
    slot: int
    shape: tuple[int, ...]  # of the pixels
    mask: np.ndarray
    timestamps: np.ndarray
    seen: int  # credit messages the worker has read so far
    layout: NativeLayout | None = None  # FrameBatch.layout: native frames (--geometry device)


@dataclass(frozen=True)
class _FileTrack:
    """An ``AudioTrack`` on the pipe: its ``n`` float32 samples are in the file ``name`` in
    /dev/shm, not pickled (see the module docstring)."""

    video_id: str
    name: str
    n: int


@dataclass(frozen=True)
class _Idle:
    """Worker -> parent: finished its job, send the next one."""

    seen: int  # credit messages the worker has read so far


def _slot_view(shm: SharedMemory, slot: int, slot_bytes: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ndarray(shape, np.uint8, buffer=shm.buf, offset=slot * slot_bytes)


def _track_to_file(msg: AudioTrack, shm_name: str) -> _FileTrack | None:
    """Write a track's samples beside the frame block; None (send it through the pipe) when
    /dev/shm cannot take them."""
    samples = np.ascontiguousarray(msg.samples, dtype=np.float32)
    path = SHM_DIR / f"{shm_name}-{secrets.token_hex(6)}"
    try:
        with open(path, "xb") as fh:
            samples.tofile(fh)
    except OSError:  # full (ENOSPC): the pipe still works
        path.unlink(missing_ok=True)
        return None
    return _FileTrack(msg.video_id, path.name, len(samples))


def _track_from_file(msg: _FileTrack, job: DecodeJob | None) -> AudioTrack | VideoFailed:
    """The track a worker wrote (``_track_to_file``) for ``job``, its file removed."""
    path, source = SHM_DIR / msg.name, job.source if job is not None else msg.video_id
    try:
        samples = np.fromfile(path, dtype=np.float32)
    except OSError as e:
        return VideoFailed(msg.video_id, f"{source}: its decoded audio was lost before it was read "
                                         f"({e.strerror or e}; something removed {path}?): re-run to retry")
    finally:
        path.unlink(missing_ok=True)
    if len(samples) != msg.n:
        return VideoFailed(msg.video_id, f"{source}: its decoded audio came back with {len(samples)} of "
                                         f"{msg.n} samples ({path} was changed): re-run to retry")
    return AudioTrack(msg.video_id, samples)


# Test-only: called in the worker with (job, message) just before the message is sent (a
# FrameBatch: once it has its place in a slot, which goes out with the slot's next batch).
WorkerHook = Callable[[DecodeJob, Message], None]


def failure_reason(job: DecodeJob, error: BaseException) -> str:
    """One line for a video that failed: MediaDecodeError messages already name the file."""
    if isinstance(error, MediaDecodeError):
        return str(error)
    return f"{job.source}: {type(error).__name__}: {error}"


def segment_jobs(job: DecodeJob, split: VideoSplit) -> list[DecodeJob]:
    pts = split.starts_pts or (None,) * len(split.segments)
    return [replace(job, segment=(a, b), segment_pts=p) for (a, b), p in zip(split.segments, pts)]


def with_audio_jobs(jobs: Sequence[DecodeJob]) -> list[DecodeJob]:
    """Each whole-video job with audio becomes a frame job, followed by one audio job per
    audio source: videos with the same audio file and the same video file (the origin the
    track is aligned to) share the first one's audio job."""
    out: list[DecodeJob] = []
    shared: dict[tuple, int] = {}  # (audio path, video path) -> index of its audio job in out
    for job in jobs:
        if job.part != "all" or job.segment is not None or job.audio_path is None:
            out.append(job)
            continue
        out.append(replace(job, part="frames"))
        key = (job.audio_path, job.video_path)
        if key in shared:
            first = out[shared[key]]
            out[shared[key]] = replace(first, audio_for=(*first.audio_for, job.video_id))
        else:
            shared[key] = len(out)
            out.append(replace(job, part="audio", audio_for=(job.video_id,)))
    return out


def fan_out(job: DecodeJob | None, msg: Message) -> list[Message]:
    """The messages of ``msg`` for each video it concerns: an audio job's track (or failure)
    goes to every video of ``audio_for``, the same array for all (no copy)."""
    if job is None or job.part != "audio" or not isinstance(msg, (AudioTrack, VideoFailed)):
        return [msg]
    return [msg if vid == msg.video_id else replace(msg, video_id=vid) for vid in job.audio_for or (job.video_id,)]


# ------------------------------------------------------------------ /dev/shm housekeeping

def shm_free_bytes(shm_dir: Path = SHM_DIR) -> int | None:
    """Free bytes in the shared-memory filesystem, None where there is none to ask (not Linux)."""
    try:
        st = os.statvfs(shm_dir)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


# A block is live while its pool holds this lock on it: see atomic.hold_lock (the cache's
# staging folders use the same lock).
hold_block = hold_lock


def _block_live(path: Path) -> bool:
    try:
        return lock_held(path)
    except OSError:  # gone
        return False


def remove_dead_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink this user's ``expr-<pid>-<hex>`` blocks whose run is dead, and their audio track
    files (``<block>-<hex>``); return their names.

    Dead: no process holds the block's lock (``hold_block``) and its pid is not alive here.
    The pid alone is not enough: containers that share /dev/shm (a Kubernetes pod, docker
    --ipc=host) each have their own pids, so a live run's pid can be absent from this one's."""
    removed = []
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:
        return removed
    for entry in entries:
        match = re.fullmatch(SHM_PREFIX + r"(\d+)-([0-9a-f]+)(-[0-9a-f]+)?", entry.name)
        try:
            if (match is None or entry.stat().st_uid != os.getuid() or _pid_alive(int(match[1]))
                    or _block_live(Path(shm_dir) / f"{SHM_PREFIX}{match[1]}-{match[2]}")):
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def fit_slots(wanted: int, slot_bytes: int, free: int | None) -> int:
    """How many frame slots to make: ``wanted``, fewer when /dev/shm cannot hold them."""
    if free is None:
        return wanted
    fits = int(free * SHM_SHARE) // slot_bytes
    if fits < 1:
        raise ConfigError(
            f"/dev/shm has {free / 2**20:.0f} MB free; the decoders need at least {2 * slot_bytes / 2**20:.0f} MB "
            "of shared memory for their frames: free some, or give the container more (docker run --shm-size 1g), "
            "or use --workers 0"
        )
    return max(1, min(wanted, fits))


def _worker_main(conn, hook: WorkerHook | None, shm_name: str, slot_bytes: int, warm: bool) -> None:
    """A decode worker: serve jobs until STOP, then leave at once.

    Why ``os._exit`` after a clean STOP: a spawned worker otherwise finalises its interpreter,
    and with torch imported that takes 360-430 ms (measured; 32-42 ms with ``os._exit``), which
    the parent's ``close()`` waits for at the end of every run: 10% of the feed's wall time on
    one 12,000-frame video with two workers. Everything a worker sends has left by then (pipe
    sends are synchronous), and the parent owns the shared memory; an exception still ends the
    process the normal way, traceback and all."""
    _serve_jobs(conn, hook, shm_name, slot_bytes, warm)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def _import_for_jobs() -> None:
    import torch  # noqa: F401 - CLIP's geometry, the face crop, jpgs, resampling


def _needs_torch(job: DecodeJob) -> bool:
    """Whether a job like ``job`` imports torch in its worker: CLIP's geometry, the face crop and
    jpg folders (torchvision decodes them) do; a raw video's frames on the device path or NVDEC
    do not (nor audio at 16 kHz). A run's jobs share one geometry and one kind of source, so a
    worker's last job tells what its next ones need."""
    return (job.frames_dir is not None or (job.geometry == "worker" and job.decoder == "cpu")
            or job.face_crop != "none")


def _next_job(conn, previous: DecodeJob | None, warm: bool = True):
    """The next job (or credits, or STOP) after ``previous`` (None: none yet); while none is
    waiting, first import what the next jobs need (torch: ~1.3 s of CPU, more on a busy machine)
    if not done yet: as ``previous`` needs, or for a spare with no job yet, as ``warm`` says
    (whether any of the pool's jobs needs torch). Elsewhere an idle import would only delay
    the job that arrives during it.

    Why: a worker that starts with a job imported torch only inside it. When that job split a
    long video (header only: no torch), the parent sends the segments once its decode loop
    reads the split, i.e. after building CLIP; the worker then imported torch before its first
    segment's frames, on the path to the first batch (2.3 s after the loop started, measured
    on the 2-core machine). Now it imports while it waits. A spare does the same at start."""
    if not conn.poll() and (warm if previous is None else _needs_torch(previous)):
        _import_for_jobs()
    return conn.recv()


def _serve_jobs(conn, hook: WorkerHook | None, shm_name: str, slot_bytes: int, warm: bool) -> None:
    # why: N workers each running multi-threaded torch ops (geometry, resample) would
    # oversubscribe the cores; set before torch is imported, which reads it once
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ctrl-C in a terminal signals the whole process group: the parent answers it (one line,
    # exit 130) and stops its workers in close(); one KeyboardInterrupt traceback per worker
    # would bury that line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Attached, not owned: the parent unlinks it (the resource tracker is shared with the parent).
    try:
        shm = SharedMemory(name=shm_name)
    except FileNotFoundError:  # a spare that started after the pool had finished and closed
        return
    slots: deque[int] = deque()
    seen = 0  # credit messages read: acknowledged in every _SlotBatch and _Idle

    def credit() -> int | None:
        """A free slot: take the credits that have arrived, block only at zero; None on STOP."""
        nonlocal seen
        while not slots or conn.poll():
            control = conn.recv()
            if control is _STOP:
                return None
            slots.extend(control)
            seen += 1
        return slots.popleft()

    previous: DecodeJob | None = None
    while True:
        job = _next_job(conn, previous, warm)
        if job is _STOP:
            return
        if isinstance(job, list):  # credits that came while idle
            slots.extend(job)
            seen += 1
            continue
        previous = job
        held: _Coalesced | None = None  # frames in a slot, not sent yet
        try:
            for msg in decode_video(job):
                if isinstance(msg, FrameBatch):
                    pixels = np.ascontiguousarray(msg.pixels, dtype=np.uint8)
                    if pixels.nbytes > slot_bytes:
                        raise MediaDecodeError(f"{job.source}: a frame batch {pixels.shape} does not fit a frame slot")
                    if held is not None and not held.takes(msg, pixels, slot_bytes):
                        conn.send(held.wire(seen))
                        held = None
                    if held is None:
                        if (slot := credit()) is None:
                            return
                        held = _Coalesced(slot, msg.video_id, msg.start, pixels.shape[1:], msg.layout)
                    if hook is not None:  # the batch has its place in a slot
                        hook(job, msg)
                    held.add(shm, slot_bytes, msg, pixels)
                    continue
                if held is not None:  # in order: the frames before anything else of the job
                    conn.send(held.wire(seen))
                    held = None
                wire: Message | _FileTrack = msg
                if isinstance(msg, AudioTrack) and msg.samples is not None:
                    wire = _track_to_file(msg, shm_name) or msg
                if hook is not None:
                    hook(job, msg)
                conn.send(wire)
            if held is not None:
                conn.send(held.wire(seen))
                held = None
        except Exception as e:  # one bad video must not end the worker
            if held is not None:  # never sent: its slot is still this worker's credit
                slots.appendleft(held.slot)
            conn.send(VideoFailed(job.video_id, failure_reason(job, e)))
        conn.send(_Idle(seen))


@dataclass
class _Coalesced:
    """Consecutive FrameBatches of one job gathered in one slot, sent as one ``_SlotBatch``.

    Why: the parent pays per message (~480 us: a wake-up, a pipe read, credits back, with cold
    caches) more than per frame, so a message should carry many frames; but decoding and
    resizing 64 frames at a time cost the workers ~10% more CPU a frame than 32 (interleaved
    runs, 2 workers: 967-1,044 against 864-1,036 us). So frames are decoded in batches of
    ``batch_frames`` and sent two batches (a slot) at a time."""

    slot: int
    video_id: str
    start: int  # the first frame's number
    frame_shape: tuple[int, ...]
    layout: NativeLayout | None
    n: int = 0  # frames in the slot so far
    masks: list = field(default_factory=list)
    times: list = field(default_factory=list)

    def takes(self, msg: FrameBatch, pixels: np.ndarray, slot_bytes: int) -> bool:
        """Whether ``msg`` continues these frames and fits the rest of the slot."""
        return (msg.video_id == self.video_id and msg.start == self.start + self.n and msg.layout == self.layout
                and pixels.shape[1:] == self.frame_shape
                and (self.n + len(pixels)) * int(np.prod(self.frame_shape)) <= slot_bytes)

    def add(self, shm: SharedMemory, slot_bytes: int, msg: FrameBatch, pixels: np.ndarray) -> None:
        view = _slot_view(shm, self.slot, slot_bytes, (self.n + len(pixels), *self.frame_shape))
        view[self.n:] = pixels
        self.n += len(pixels)
        self.masks.append(msg.mask)
        self.times.append(msg.timestamps)

    def wire(self, seen: int) -> _SlotBatch:
        mask = self.masks[0] if len(self.masks) == 1 else np.concatenate(self.masks)
        times = self.times[0] if len(self.times) == 1 else np.concatenate(self.times)
        return _SlotBatch(self.video_id, self.start, self.slot, (self.n, *self.frame_shape), mask, times, seen,
                          self.layout)


def _slot_bytes(job: DecodeJob) -> int:
    """One frame slot: a FrameBatch of S x S frames, or of native frames (native_decode.py);
    none for a job that sends no frames (its audio alone, or NVDEC's: the main process decodes)."""
    if job.part == "audio" or job.decoder == "nvdec":
        return 1
    done = SLOT_BATCHES * job.batch_frames * job.image_size ** 2 * 3
    if job.geometry == "device" and job.face_crop == "none" and job.frames_dir is None:
        from expr.extract.native_decode import NATIVE_SLOT_BYTES

        return max(done, NATIVE_SLOT_BYTES)
    return done


SLOT_BATCHES = 2  # a slot holds this many FrameBatches of S x S frames (see _Coalesced)
MIN_BATCH_FRAMES = 8  # a small /dev/shm shrinks the FrameBatches down to this, not below (see _fit_batches)


def _fit_batches(jobs: list[DecodeJob], free: int | None) -> list[DecodeJob]:
    """``jobs`` with fewer frames per FrameBatch (halved, down to ``MIN_BATCH_FRAMES``) when
    /dev/shm's share (``SHM_SHARE`` of ``free``) holds fewer than two slots: 64-frame slots are
    9.6 MB at 224x224, and Docker's ``--shm-size 16m`` would hold none of them. Below that
    size the per-message cost dominates, and ``fit_slots`` refuses."""
    if free is None:
        return jobs
    while True:
        need = max((_slot_bytes(j) for j in jobs), default=1)
        smaller = [replace(j, batch_frames=max(MIN_BATCH_FRAMES, j.batch_frames // 2)) for j in jobs]
        if 2 * need <= int(free * SHM_SHARE) or max((_slot_bytes(j) for j in smaller), default=1) == need:
            return jobs  # fits, or as small as it gets (the device path's native slots have a fixed size)
        jobs = smaller


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _job_weight(job: DecodeJob) -> int:
    """Bytes of the job's video: the longest work goes first."""
    try:
        return job.video_path.stat().st_size if job.video_path is not None else 0
    except OSError:
        return 0


def _shrink_pipe(conn: Connection, size: int) -> None:
    """Test-only: the smallest socket buffers, to prove the protocol cannot deadlock."""
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


@dataclass(eq=False)
class _Worker:
    proc: BaseProcess
    conn: Connection
    job: DecodeJob | None = None
    slots: deque = field(default_factory=deque)  # credits granted, not yet back in a FrameBatch
    silent: float = 0.0  # seconds the parent waited without hearing from it while it worked
    sent: int = 0  # credit messages sent to it
    seen: int = 0  # ... of which it said it has read
    ended: bool = False  # its job's last message came (VideoDone, SegmentDone, VideoFailed)


class DecodePool:
    """Iterate over the messages of all ``jobs``; a context manager that cleans up its workers.

    ``workers=0`` decodes in the calling process (debugging, tests). ``stall_timeout``: a busy
    worker that sends nothing for that many seconds is killed and its video failed (a decoder
    stuck in a loop must not hang the run). ``peak_pending`` records the most frame batches
    that were ever in flight. ``borrow_frames``: a FrameBatch's pixels are a view of its
    shared-memory slot, valid only until the next message is asked for (the consumer copies
    what it keeps, once); otherwise they are copied out and can be kept. ``max_pending`` is
    cut to what /dev/shm can hold. ``pipe_buffer``: test-only socket buffer size.
    ``on_idle`` is called (in the iterating thread) once whenever no worker has sent anything
    for ``idle_after`` seconds: the consumer encodes the frames it holds instead of waiting
    for more (a video's last frames would otherwise wait for later videos' frames).
    ``page_lock``: called once with the shared-memory block (``--geometry device`` on CUDA
    registers it as page-locked); returns the function that undoes it, called in ``close()``.
    ``slot_fence``: called after each borrowed FrameBatch was handled; returns None (the slot
    is free again) or a fence (``query()``, ``synchronize()``: a CUDA event after an
    asynchronous copy that still reads the slot). Such a slot goes back to the workers only
    once its fence completed: polled whenever credits are handed out, waited for only when
    no slot is free otherwise, and always before the block is unmapped.
    ``audio_jobs``: decode each video's audio in a job of its own (``with_audio_jobs``).
    """

    def __init__(
        self,
        jobs: Sequence[DecodeJob],
        workers: int = 2,
        max_pending: int = 8,
        *,
        stall_timeout: float = 600.0,
        worker_hook: WorkerHook | None = None,
        borrow_frames: bool = False,
        pipe_buffer: int | None = None,
        on_idle: Callable[[], None] | None = None,
        idle_after: float = 0.5,
        page_lock: Callable[[memoryview], Callable[[], None] | None] | None = None,
        audio_jobs: bool = False,
        slot_fence: Callable[[], object | None] | None = None,
    ):
        if workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {workers}")
        if max_pending < 1:
            raise ConfigError(f"max pending batches must be at least 1, got {max_pending}")
        # the workers a split video can expect to share its segments size them (plan_segments);
        # with as many videos as workers each keeps fixed sizes: other videos fill the cores
        # anyway, and each segment costs ~14 ms of CPU to start
        sharing = min(workers, os.cpu_count() or 1) // max(1, sum(may_split(j) for j in jobs))
        if sharing > 1:
            jobs = [replace(j, segment_workers=sharing) if may_split(j) else j for j in jobs]
        if workers > 0:
            jobs = _fit_batches(list(jobs), shm_free_bytes())
        # longest first (a stable sort: ties keep their order, so a video's audio job follows it)
        self.jobs = sorted(with_audio_jobs(jobs) if audio_jobs else jobs, key=_job_weight, reverse=True)
        self._rank: dict[str, int] = {}
        self._by_id: dict[str, DecodeJob] = {}  # a video's own job (not its audio job): segments copy it
        for i, job in enumerate(self.jobs):
            self._rank.setdefault(job.video_id, i)
            if job.part != "audio":
                self._by_id[job.video_id] = job
        self.workers = workers
        self.max_pending = max_pending
        self.stall_timeout = stall_timeout
        self.worker_hook = worker_hook
        self.borrow_frames = borrow_frames
        self.pipe_buffer = pipe_buffer
        self.on_idle, self.idle_after = on_idle, idle_after
        self.page_lock = page_lock  # called on the new shared-memory block; returns its unlock, or None
        self._unlock: Callable[[], None] | None = None
        self.slot_fence = slot_fence
        self._held: deque[tuple[int, object]] = deque()  # (slot, fence): a copy may still read it
        self.peak_pending = 0
        self.peak_workers = 0  # the most worker processes alive at once
        self.restarts = 0  # workers that died while decoding (each replaced)
        self.removed_segments: list[str] = []  # dead runs' shared-memory blocks removed at start
        self._pool: list[_Worker] = []  # busy workers, idle spares, and dead ones not yet buried
        self._stopped: list[_Worker] = []  # told to stop: joined in close()
        self._free: deque[int] = deque()  # frame slots no worker holds and no consumer reads
        self._shm: SharedMemory | None = None
        self._shm_lock: int | None = None  # fd holding the block's lock (hold_block)
        self._failed: set[str] = set()
        self._todo: deque[DecodeJob] = deque()
        self._slot_bytes = max((_slot_bytes(j) for j in self.jobs), default=1)
        self._warm = any(_needs_torch(j) for j in self.jobs)  # a spare imports torch only if jobs need it

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        if self.workers == 0:
            return self._iter_inline()
        return self._iter_workers()

    def _pass_on(self, job: DecodeJob | None, msg: Message, todo: deque) -> Iterator[Message]:
        """``msg`` for each video it concerns (``fan_out``), each noted (``_note``) as it goes."""
        for each in fan_out(job, msg):
            self._note(each, todo)
            yield each

    def _note(self, msg: Message, todo: deque) -> None:
        """Queue a split video's segments (first in line); forget the queued ones of a failed video."""
        if isinstance(msg, VideoSplit) and msg.video_id not in self._failed:
            # in the order of the videos (longest first), so that videos finish in that order
            rank = self._rank[msg.video_id]
            at = next((i for i, j in enumerate(todo) if self._rank[j.video_id] > rank), len(todo))
            for k, job in enumerate(segment_jobs(self._by_id[msg.video_id], msg)):
                todo.insert(at + k, job)
        elif isinstance(msg, VideoFailed):
            self._failed.add(msg.video_id)
            # an audio job shared by two videos stays while one of them still needs it
            kept = [j for j in todo if not self._failed.issuperset(j.audio_for or (j.video_id,))]
            todo.clear()
            todo.extend(kept)

    def _iter_inline(self) -> Iterator[Message]:
        todo = deque(self.jobs)
        while todo:
            job = todo.popleft()
            try:
                for msg in decode_video(job):
                    if self.worker_hook is not None:
                        self.worker_hook(job, msg)
                    yield from self._pass_on(job, msg, todo)
            except Exception as e:
                yield from self._pass_on(job, VideoFailed(job.video_id, failure_reason(job, e)), todo)

    # ------------------------------------------------------------ worker processes

    @property
    def _pending(self) -> int:
        """Frame batches in flight: slots granted to workers or not yet given back by the consumer."""
        return self.max_pending - len(self._free)

    def _start_worker(self, shm: SharedMemory) -> _Worker:
        ctx = mp.get_context("spawn")  # fork after torch/decord threads exist can deadlock
        parent, child = ctx.Pipe(duplex=True)
        if self.pipe_buffer is not None:
            _shrink_pipe(parent, self.pipe_buffer)
            _shrink_pipe(child, self.pipe_buffer)
        proc = ctx.Process(target=_worker_main, args=(child, self.worker_hook, shm.name, self._slot_bytes, self._warm),
                           daemon=True, name="expr-decode")
        proc.start()
        child.close()  # so the parent sees EOF when the worker dies
        worker = _Worker(proc, parent)
        self._pool.append(worker)
        self.peak_workers = max(self.peak_workers, len(self._pool))
        return worker

    def _return_slots(self, worker: _Worker) -> None:
        self._free.extend(worker.slots)
        worker.slots.clear()

    def _assign(self, worker: _Worker, todo: deque, stop_if_none: bool = True) -> None:
        """Send ``worker`` (waiting for a job) the next job; with none left, STOP it (its
        credits come back) unless ``stop_if_none`` is False (a spare that holds none)."""
        worker.job = todo.popleft() if todo else None
        worker.silent, worker.ended = 0.0, False
        if worker.job is None and not stop_if_none:
            return
        try:
            worker.conn.send(worker.job if worker.job is not None else _STOP)
        except OSError:  # it died between two jobs: put the job back for a fresh worker
            if worker.job is not None:
                todo.appendleft(worker.job)
            worker.job = None
        if worker.job is None:  # no more work, or dead: its unused credits go back
            self._return_slots(worker)
            if worker.proc.is_alive():  # told to stop: out of the pool (close() joins it)
                self._pool.remove(worker)
                self._stopped.append(worker)

    def _spares(self) -> int:
        """Idle workers to start beside the busy ones, up to ``workers`` (and the core count) in
        all: a video that splits can use them at once.

        Counted against the workers already started, not against the videos: an audio job
        takes a worker too, and ``--workers 2`` with one long video had started three
        processes (video, audio, spare) that then decoded its segments on two cores (with the
        worker's ``os._exit``, the two-worker feed of one 12,000-frame video went from 2,206-2,540
        to 2,752-2,996 frames/s on the idle 2-core VM, the old and new code run in turn)."""
        if not any(may_split(j) for j in self.jobs if j.part != "audio"):
            return 0
        return max(0, min(self.workers, os.cpu_count() or 1) - len(self._pool))

    def _staff(self, todo: deque, shm: SharedMemory) -> None:
        """Give queued jobs to idle spares, then to new workers while fewer than ``workers`` live."""
        for worker in [w for w in self._pool if w.job is None]:
            if not todo:
                return
            if worker.proc.is_alive():
                self._assign(worker, todo)
            else:
                self._bury(worker, restart=False)
        while todo and len(self._pool) < self.workers:
            self._assign(self._start_worker(shm), todo)

    def _open_shm(self) -> SharedMemory:
        self.removed_segments = remove_dead_segments()
        self.max_pending = fit_slots(self.max_pending, self._slot_bytes, shm_free_bytes())
        name = f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        shm = SharedMemory(name=name, create=True, size=self.max_pending * self._slot_bytes)
        self._shm_lock = hold_block(SHM_DIR / name)  # live while held (remove_dead_segments)
        return shm

    def start(self) -> None:
        """Start the workers now (they import and begin decoding while the caller builds its
        models); iterating does it otherwise. Nothing for ``workers=0``."""
        if self.workers == 0 or self._shm is not None:
            return
        self._todo = deque(self.jobs)
        self._shm = self._open_shm()
        if self.page_lock is not None:
            self._unlock = self.page_lock(self._shm.buf)  # pyright: ignore[reportArgumentType] - open: buf is set
        self._free = deque(range(self.max_pending))
        try:
            self._staff(self._todo, self._shm)
            for _ in range(self._spares()):
                self._start_worker(self._shm)  # idle, waiting for a segment
        except BaseException:
            self.close()
            raise

    def _iter_workers(self) -> Iterator[Message]:
        self.start()
        todo, shm = self._todo, self._shm
        assert shm is not None
        idle_called = False
        try:
            while True:
                self._staff(todo, shm)
                busy = [w for w in self._pool if w.job is not None]
                if not busy:
                    break
                self._grant(busy)
                # a worker with no credit while none can be granted is waiting, not stalled
                full = not self._free
                working = [w for w in busy if w.slots or not full]
                timeout = min((self.stall_timeout - w.silent for w in working), default=None)
                if self.on_idle is not None and not idle_called:
                    timeout = self.idle_after if timeout is None else min(timeout, self.idle_after)
                handles = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
                t0 = time.monotonic()
                ready = set(wait(handles, timeout=None if timeout is None else max(0.01, timeout)))
                if ready:
                    idle_called = False
                elif self.on_idle is not None and not idle_called and time.monotonic() - t0 >= self.idle_after:
                    idle_called = True
                    self.on_idle()
                for worker in working:
                    worker.silent += time.monotonic() - t0
                    if worker.silent >= self.stall_timeout and worker.proc.is_alive():
                        worker.proc.kill()  # a decoder stuck in a loop; its sentinel fires next
                for worker in [w for w in busy if w.conn in ready or w.proc.sentinel in ready]:
                    yield from self._serve(worker, todo, shm)
        finally:
            self.close()

    def _serve(self, worker: _Worker, todo: deque, shm: SharedMemory) -> Iterator[Message]:
        """Pass on what ``worker`` sent; fail its video if it died."""
        broken = False
        for msg in self._drain(worker, todo):
            if msg is None:
                broken = True
                break
            if isinstance(msg, _FileTrack):
                msg = _track_from_file(msg, worker.job)
            if not isinstance(msg, _SlotBatch):
                yield from self._pass_on(worker.job, msg, todo)
                continue
            view = _slot_view(shm, msg.slot, self._slot_bytes, msg.shape)
            pixels = view if self.borrow_frames else view.copy()
            try:
                yield FrameBatch(msg.video_id, msg.start, pixels, msg.mask, msg.timestamps, msg.layout)
            finally:  # also when the consumer stops here: close() then waits for the copy
                # the consumer is done with it: the slot is free again, or once its copy has read it
                fence = self.slot_fence() if self.slot_fence is not None and self.borrow_frames else None
                if fence is None:
                    self._free.append(msg.slot)
                else:
                    self._held.append((msg.slot, fence))
            self._grant([w for w in self._pool if w.job is not None])  # keep workers busy
        job = worker.job
        if job is not None and not worker.proc.is_alive() and (broken or not worker.conn.poll()):
            self._return_slots(worker)
            if worker.ended:  # died after its job's last message (freeing the reader): nothing lost
                self._bury(worker)
                return
            yield from self._pass_on(job, VideoFailed(job.video_id, self._death_reason(worker, job)), todo)
            self._bury(worker)

    def _grant(self, busy: list[_Worker]) -> None:
        """Hand out free slots as credits, fewest-held first, at most a fair share each, as
        one message, and only to a worker that has read the previous one (never blocks on a
        pipe; on a fence only when every slot is held by one: ``_reclaim``)."""
        self._reclaim()
        if not busy or not self._free:
            return
        share = -(-self.max_pending // len(busy))
        for worker in sorted(busy, key=lambda w: len(w.slots)):
            k = min(share - len(worker.slots), len(self._free))
            if k <= 0 or worker.sent != worker.seen:
                continue
            credits = [self._free.popleft() for _ in range(k)]
            try:
                worker.conn.send(credits)
            except OSError:  # dead: its sentinel tells
                self._free.extendleft(reversed(credits))
                continue
            worker.sent += 1
            worker.slots.extend(credits)
            self.peak_pending = max(self.peak_pending, self._pending)

    def _reclaim(self, everything: bool = False) -> None:
        """Free the held slots whose copy has completed (in order: copies on one stream complete
        in order); when none is free otherwise, or with ``everything``, wait for them."""
        while self._held:
            slot, fence = self._held[0]
            if not fence.query():  # pyright: ignore[reportAttributeAccessIssue] - a fence
                if self._free and not everything:
                    return
                fence.synchronize()  # pyright: ignore[reportAttributeAccessIssue] - a fence
            self._held.popleft()
            self._free.append(slot)

    def _drain(self, worker: _Worker, todo: deque) -> Iterator[Message | _SlotBatch | _FileTrack | None]:
        """Receive what ``worker`` has sent so far: yields data messages, then None if the pipe broke."""
        while worker.job is not None and worker.conn.poll():
            try:
                msg = worker.conn.recv()
            except (EOFError, OSError):
                yield None  # died mid-message: the pipe holds half a message
                return
            worker.silent = 0.0
            if isinstance(msg, _Idle):
                worker.seen = msg.seen
                self._assign(worker, todo)
            else:
                if isinstance(msg, _SlotBatch):
                    worker.seen = msg.seen
                    worker.slots.remove(msg.slot)  # in flight now: the consumer gives it back
                elif isinstance(msg, (VideoDone, SegmentDone, VideoFailed)) or (
                        isinstance(msg, (AudioTrack, _FileTrack)) and worker.job.part == "audio"):  # its only message
                    worker.ended = True
                yield msg

    def _bury(self, worker: _Worker, restart: bool = True) -> None:
        worker.proc.join(timeout=5)
        worker.conn.close()
        self._pool.remove(worker)
        self.restarts += restart

    def _death_reason(self, worker: _Worker, job: DecodeJob) -> str:
        how = _describe_exit(worker.proc.exitcode)
        if worker.silent >= self.stall_timeout:
            how = f"stalled for {self.stall_timeout:g} s and was killed"
        return (
            f"{job.source}: the decoding process died ({how}) while decoding this file; it is probably "
            "corrupt: re-encode it with ffmpeg (ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4) or leave it out"
        )

    def close(self) -> None:
        """Stop all workers (those blocked on a full pipe are terminated) and free the slots."""
        for worker in self._pool:
            try:
                worker.conn.send(_STOP)
            except (OSError, ValueError):
                pass
        self._pool += self._stopped
        self._stopped = []
        deadline = time.monotonic() + 2.0
        for worker in self._pool:
            worker.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.proc.is_alive():
                worker.proc.terminate()
                worker.proc.join(timeout=2.0)
            worker.conn.close()
        self._pool.clear()
        try:
            self._reclaim(everything=True)  # no DMA may read the block once it is unregistered
        except Exception:  # noqa: BLE001 - a broken CUDA context: no copy runs any more
            self._held.clear()
        if self._unlock is not None:  # page-locked memory must be unregistered before it is unmapped
            self._unlock()
            self._unlock = None
        if self._shm is not None:
            try:
                self._shm.close()
            except BufferError:  # a consumer still holds a borrowed view: unlinked, freed with it
                pass
            self._shm.unlink()
            for track in SHM_DIR.glob(f"{self._shm.name}-*"):  # a worker's track never read (stopped early)
                track.unlink(missing_ok=True)
            self._shm = None
        if self._shm_lock is not None:
            os.close(self._shm_lock)
            self._shm_lock = None
