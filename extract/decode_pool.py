"""Decode videos in worker processes, streaming messages back with bounded memory.

Why processes: decord can crash the whole process on a corrupt file (segfault). Each worker
decodes whole videos and talks to the parent through its OWN pipe, so a worker that dies
mid-message corrupts only a channel that is thrown away with it; the parent turns the death
into ``VideoFailed`` for that worker's current video and starts a fresh worker.

Why shared memory: pickling a batch of 224x224 frames through a pipe costs the parent more
CPU per frame than everything else it does (measured: ~140 us/frame). Frames travel in
``max_pending`` slots of one shared-memory block instead; the pipe carries only the small
rest of a ``FrameBatch`` (start, mask, timestamps) and the slot number, as a ``_SlotBatch``.

Why credits: a credit is a free slot. A worker spends one per ``FrameBatch`` it sends and
blocks when it has none. The parent hands credits out ahead of time (shared among the busy
workers, fewest-held first) and gets a slot back when the consumer has taken its batch. So at
most ``max_pending`` frame batches are in flight (plus one decoded batch per worker waiting
for a credit), however long the video and however slow the consumer, and workers keep
decoding while the consumer computes.

Messages of different videos interleave; within a video they are in order. A ``VideoFailed``
can follow a video's header and some batches: the consumer drops what it had for that video.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from expr.errors import ConfigError, MediaDecodeError
from expr.extract.media import decode_video
from expr.extract.messages import DecodeJob, FrameBatch, Message, VideoFailed

_IDLE = "idle"  # worker -> parent: finished its video, send the next job
_STOP = None  # parent -> worker: exit
# parent -> worker: an int, a credit: the number of a free frame slot


@dataclass(frozen=True)
class _SlotBatch:
    """A ``FrameBatch`` on the pipe: its pixels are in shared-memory slot ``slot``, not pickled."""

    video_id: str
    start: int
    slot: int
    shape: tuple[int, ...]  # of the pixels
    mask: np.ndarray
    timestamps: np.ndarray


def _slot_view(shm: SharedMemory, slot: int, slot_bytes: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ndarray(shape, np.uint8, buffer=shm.buf, offset=slot * slot_bytes)

# Test-only: called in the worker with (job, message) just before the message is sent.
WorkerHook = Callable[[DecodeJob, Message], None]


def failure_reason(job: DecodeJob, error: BaseException) -> str:
    """One line for a video that failed: MediaDecodeError messages already name the file."""
    if isinstance(error, MediaDecodeError):
        return str(error)
    return f"{job.source}: {type(error).__name__}: {error}"


def _worker_main(conn, hook: WorkerHook | None, shm_name: str, slot_bytes: int) -> None:
    # why: N workers each running multi-threaded torch ops (geometry, resample) would
    # oversubscribe the cores; set before torch is imported, which reads it once
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Ctrl-C in a terminal signals the whole process group: the parent answers it (one line,
    # exit 130) and stops its workers in close(); one KeyboardInterrupt traceback per worker
    # would bury that line.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Attached, not owned: the parent unlinks it (the resource tracker is shared with the parent).
    shm = SharedMemory(name=shm_name)
    slots: deque[int] = deque()
    while True:
        job = conn.recv()
        if job is _STOP:
            return
        if isinstance(job, int):  # a credit that came while idle
            slots.append(job)
            continue
        try:
            for msg in decode_video(job):
                wire: Message | _SlotBatch = msg
                if isinstance(msg, FrameBatch):
                    while not slots or conn.poll():  # take what has arrived; block only at zero
                        control = conn.recv()
                        if control is _STOP:
                            return
                        slots.append(control)
                    slot, pixels = slots.popleft(), np.ascontiguousarray(msg.pixels, dtype=np.uint8)
                    if pixels.nbytes > slot_bytes:
                        raise MediaDecodeError(f"{job.source}: a frame batch {pixels.shape} does not fit a frame slot")
                    _slot_view(shm, slot, slot_bytes, pixels.shape)[...] = pixels
                    wire = _SlotBatch(msg.video_id, msg.start, slot, pixels.shape, msg.mask, msg.timestamps)
                if hook is not None:
                    hook(job, msg)
                conn.send(wire)
        except Exception as e:  # one bad video must not end the worker
            conn.send(VideoFailed(job.video_id, failure_reason(job, e)))
        conn.send(_IDLE)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass(eq=False)
class _Worker:
    proc: BaseProcess
    conn: Connection
    job: DecodeJob | None = None
    slots: deque = field(default_factory=deque)  # credits granted, not yet back in a FrameBatch
    silent: float = 0.0  # seconds the parent waited without hearing from it while it worked


class DecodePool:
    """Iterate over the messages of all ``jobs``; a context manager that cleans up its workers.

    ``workers=0`` decodes in the calling process (debugging, tests). ``stall_timeout``: a busy
    worker that sends nothing for that many seconds is killed and its video failed (a decoder
    stuck in a loop must not hang the run). ``peak_pending`` records the most frame batches
    that were ever in flight. ``borrow_frames``: a FrameBatch's pixels are a view of its
    shared-memory slot, valid only until the next message is asked for (the consumer copies
    what it keeps, once); otherwise they are copied out and can be kept.
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
    ):
        if workers < 0:
            raise ConfigError(f"--workers must be 0 or more, got {workers}")
        if max_pending < 1:
            raise ConfigError(f"max pending batches must be at least 1, got {max_pending}")
        self.jobs = list(jobs)
        self.workers = workers
        self.max_pending = max_pending
        self.stall_timeout = stall_timeout
        self.worker_hook = worker_hook
        self.borrow_frames = borrow_frames
        self.peak_pending = 0
        self.restarts = 0  # workers that died while decoding (each replaced)
        self._pool: list[_Worker] = []
        self._free: deque[int] = deque()  # frame slots no worker holds and no consumer reads
        self._shm: SharedMemory | None = None
        self._slot_bytes = max((j.batch_frames * j.image_size ** 2 * 3 for j in self.jobs), default=1)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        if self.workers == 0:
            return self._iter_inline()
        return self._iter_workers()

    def _iter_inline(self) -> Iterator[Message]:
        for job in self.jobs:
            try:
                for msg in decode_video(job):
                    if self.worker_hook is not None:
                        self.worker_hook(job, msg)
                    yield msg
            except Exception as e:
                yield VideoFailed(job.video_id, failure_reason(job, e))

    # ------------------------------------------------------------ worker processes

    @property
    def _pending(self) -> int:
        """Frame batches in flight: slots granted to workers or not yet given back by the consumer."""
        return self.max_pending - len(self._free)

    def _start_worker(self, shm: SharedMemory) -> _Worker:
        ctx = mp.get_context("spawn")  # fork after torch/decord threads exist can deadlock
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker_main, args=(child, self.worker_hook, shm.name, self._slot_bytes),
                           daemon=True, name="expr-decode")
        proc.start()
        child.close()  # so the parent sees EOF when the worker dies
        worker = _Worker(proc, parent)
        self._pool.append(worker)
        return worker

    def _return_slots(self, worker: _Worker) -> None:
        self._free.extend(worker.slots)
        worker.slots.clear()

    def _assign(self, worker: _Worker, todo: deque) -> None:
        worker.job = todo.popleft() if todo else None
        worker.silent = 0.0
        try:
            worker.conn.send(worker.job if worker.job is not None else _STOP)
        except OSError:  # it died between two videos: put the job back for a fresh worker
            if worker.job is not None:
                todo.appendleft(worker.job)
            worker.job = None
        if worker.job is None:  # no more work, or dead: its unused credits go back
            self._return_slots(worker)

    def _iter_workers(self) -> Iterator[Message]:
        todo = deque(self.jobs)
        self._shm = shm = SharedMemory(create=True, size=self.max_pending * self._slot_bytes)
        self._free = deque(range(self.max_pending))
        try:
            while True:
                while todo and sum(w.job is not None or w.proc.is_alive() for w in self._pool) < self.workers:
                    self._assign(self._start_worker(shm), todo)
                busy = [w for w in self._pool if w.job is not None]
                if not busy:
                    break
                self._grant(busy)
                # a worker with no credit while none can be granted is waiting, not stalled
                full = not self._free
                working = [w for w in busy if w.slots or not full]
                timeout = min((self.stall_timeout - w.silent for w in working), default=None)
                handles = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
                t0 = time.monotonic()
                ready = set(wait(handles, timeout=None if timeout is None else max(0.01, timeout)))
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
            if not isinstance(msg, _SlotBatch):
                yield msg
                continue
            view = _slot_view(shm, msg.slot, self._slot_bytes, msg.shape)
            pixels = view if self.borrow_frames else view.copy()
            yield FrameBatch(msg.video_id, msg.start, pixels, msg.mask, msg.timestamps)
            # the consumer is done with it: the slot is free again
            self._free.append(msg.slot)
            self._grant([w for w in self._pool if w.job is not None])  # keep workers busy
        job = worker.job
        if job is not None and not worker.proc.is_alive() and (broken or not worker.conn.poll()):
            self._return_slots(worker)
            yield VideoFailed(job.video_id, self._death_reason(worker, job))
            self._bury(worker)

    def _grant(self, busy: list[_Worker]) -> None:
        """Hand out free slots as credits, fewest-held first, at most a fair share each."""
        if not busy:
            return
        share = -(-self.max_pending // len(busy))
        while self._free:
            worker = min(busy, key=lambda w: len(w.slots))
            if len(worker.slots) >= share:
                break
            try:
                worker.conn.send(self._free[0])
            except OSError:  # dead: its sentinel tells
                break
            worker.slots.append(self._free.popleft())
            self.peak_pending = max(self.peak_pending, self._pending)

    def _drain(self, worker: _Worker, todo: deque) -> Iterator[Message | _SlotBatch | None]:
        """Receive what ``worker`` has sent so far: yields data messages, then None if the pipe broke."""
        while worker.job is not None and worker.conn.poll():
            try:
                msg = worker.conn.recv()
            except (EOFError, OSError):
                yield None  # died mid-message: the pipe holds half a message
                return
            worker.silent = 0.0
            if isinstance(msg, str):  # _IDLE, the only string a worker sends
                self._assign(worker, todo)
            else:
                if isinstance(msg, _SlotBatch):
                    worker.slots.remove(msg.slot)  # in flight now: the consumer gives it back
                yield msg

    def _bury(self, worker: _Worker) -> None:
        worker.proc.join(timeout=5)
        worker.conn.close()
        self._pool.remove(worker)
        self.restarts += 1

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
        deadline = time.monotonic() + 2.0
        for worker in self._pool:
            worker.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.proc.is_alive():
                worker.proc.terminate()
                worker.proc.join(timeout=2.0)
            worker.conn.close()
        self._pool.clear()
        if self._shm is not None:
            try:
                self._shm.close()
            except BufferError:  # a consumer still holds a borrowed view: unlinked, freed with it
                pass
            self._shm.unlink()
            self._shm = None
