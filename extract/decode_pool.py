"""Decode videos in worker processes, streaming messages back with bounded memory.

Why processes: decord can crash the whole process on a corrupt file (segfault). Each worker
decodes whole videos and talks to the parent through its OWN pipe, so a worker that dies
mid-message corrupts only a channel that is thrown away with it; the parent turns the death
into ``VideoFailed`` for that worker's current video and starts a fresh worker.

Why credits: a worker spends one credit per ``FrameBatch`` it sends and blocks when it has
none. The parent hands credits out ahead of time (shared among the busy workers) but never
more than ``max_pending`` beyond the batches the consumer has taken. So at most
``max_pending`` frame batches are in flight (plus one decoded batch per worker waiting for a
credit), however long the video and however slow the consumer, and workers keep decoding
while the consumer computes.

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
from multiprocessing.connection import wait

from expr.errors import ConfigError, MediaDecodeError
from expr.extract.media import decode_video
from expr.extract.messages import DecodeJob, FrameBatch, Message, VideoFailed

_IDLE = "idle"  # worker -> parent: finished its video, send the next job
_CREDIT = "credit"  # parent -> worker: send it
_STOP = None  # parent -> worker: exit

# Test-only: called in the worker with (job, message) just before the message is sent.
WorkerHook = Callable[[DecodeJob, Message], None]


def failure_reason(job: DecodeJob, error: BaseException) -> str:
    """One line for a video that failed: MediaDecodeError messages already name the file."""
    if isinstance(error, MediaDecodeError):
        return str(error)
    return f"{job.source}: {type(error).__name__}: {error}"


def _worker_main(conn, hook: WorkerHook | None) -> None:
    # why: N workers each running a multi-threaded torch resample would oversubscribe the cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    credits = 0
    while True:
        job = conn.recv()
        if job is _STOP:
            return
        if isinstance(job, str):  # a credit that came while idle
            credits += 1
            continue
        try:
            for msg in decode_video(job):
                if isinstance(msg, FrameBatch):
                    while credits == 0 or conn.poll():  # take what has arrived; block only at zero
                        control = conn.recv()
                        if control is _STOP:
                            return
                        credits += 1
                    credits -= 1
                if hook is not None:
                    hook(job, msg)
                conn.send(msg)
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
    proc: mp.process.BaseProcess
    conn: object  # multiprocessing.connection.Connection
    job: DecodeJob | None = None
    holds: int = 0  # credits granted and not yet turned into a received FrameBatch
    silent: float = 0.0  # seconds the parent waited without hearing from it while it worked


class DecodePool:
    """Iterate over the messages of all ``jobs``; a context manager that cleans up its workers.

    ``workers=0`` decodes in the calling process (debugging, tests). ``stall_timeout``: a busy
    worker that sends nothing for that many seconds is killed and its video failed (a decoder
    stuck in a loop must not hang the run). ``peak_pending`` records the most frame batches
    that were ever in flight.
    """

    def __init__(
        self,
        jobs: Sequence[DecodeJob],
        workers: int = 2,
        max_pending: int = 8,
        *,
        stall_timeout: float = 600.0,
        worker_hook: WorkerHook | None = None,
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
        self.peak_pending = 0
        self.restarts = 0  # workers that died while decoding (each replaced)
        self._pool: list[_Worker] = []
        self._pending = 0  # credits granted minus frame batches the consumer has taken

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

    def _start_worker(self) -> _Worker:
        ctx = mp.get_context("spawn")  # fork after torch/decord threads exist can deadlock
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_worker_main, args=(child, self.worker_hook), daemon=True, name="expr-decode")
        proc.start()
        child.close()  # so the parent sees EOF when the worker dies
        worker = _Worker(proc, parent)
        self._pool.append(worker)
        return worker

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
            self._pending -= worker.holds
            worker.holds = 0

    def _iter_workers(self) -> Iterator[Message]:
        todo = deque(self.jobs)
        self._pending = 0
        try:
            while True:
                while todo and sum(w.job is not None or w.proc.is_alive() for w in self._pool) < self.workers:
                    self._assign(self._start_worker(), todo)
                busy = [w for w in self._pool if w.job is not None]
                if not busy:
                    break
                self._grant(busy)
                # a worker with no credit while none can be granted is waiting, not stalled
                full = self._pending >= self.max_pending
                working = [w for w in busy if w.holds > 0 or not full]
                timeout = min((self.stall_timeout - w.silent for w in working), default=None)
                handles = {w.conn: w for w in busy} | {w.proc.sentinel: w for w in busy}
                t0 = time.monotonic()
                ready = wait(list(handles), timeout=None if timeout is None else max(0.01, timeout))
                for worker in working:
                    worker.silent += time.monotonic() - t0
                    if worker.silent >= self.stall_timeout and worker.proc.is_alive():
                        worker.proc.kill()  # a decoder stuck in a loop; its sentinel fires next
                for worker in dict.fromkeys(handles[h] for h in ready):
                    broken = False
                    for msg in self._drain(worker, todo):
                        if msg is None:
                            broken = True
                            break
                        yield msg
                        if isinstance(msg, FrameBatch):
                            self._pending -= 1
                            self._grant([w for w in self._pool if w.job is not None])  # keep workers busy
                    if worker.job is not None and not worker.proc.is_alive() and (broken or not worker.conn.poll()):
                        self._pending -= worker.holds
                        yield VideoFailed(worker.job.video_id, self._death_reason(worker))
                        self._bury(worker)
        finally:
            self.close()

    def _grant(self, busy: list[_Worker]) -> None:
        """Hand out credits up to the bound, fewest-held first, at most a fair share each."""
        if not busy:
            return
        share = -(-self.max_pending // len(busy))
        while self._pending < self.max_pending:
            worker = min(busy, key=lambda w: w.holds)
            if worker.holds >= share:
                break
            try:
                worker.conn.send(_CREDIT)
            except OSError:  # dead: its sentinel tells
                break
            worker.holds += 1
            self._pending += 1
            self.peak_pending = max(self.peak_pending, self._pending)

    def _drain(self, worker: _Worker, todo: deque) -> Iterator[Message | None]:
        """Receive what ``worker`` has sent so far: yields data messages, then None if the pipe broke."""
        while worker.job is not None and worker.conn.poll():
            try:
                msg = worker.conn.recv()
            except (EOFError, OSError):
                yield None  # died mid-message: the pipe holds half a message
                return
            worker.silent = 0.0
            if isinstance(msg, str) and msg == _IDLE:
                self._assign(worker, todo)
            else:
                if isinstance(msg, FrameBatch):
                    worker.holds -= 1
                yield msg

    def _bury(self, worker: _Worker) -> None:
        worker.proc.join(timeout=5)
        worker.conn.close()
        self._pool.remove(worker)
        self.restarts += 1

    def _death_reason(self, worker: _Worker) -> str:
        how = _describe_exit(worker.proc.exitcode)
        if worker.silent >= self.stall_timeout:
            how = f"stalled for {self.stall_timeout:g} s and was killed"
        return (
            f"{worker.job.source}: the decoding process died ({how}) while decoding this file; it is probably "
            "corrupt: re-encode it with ffmpeg (ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4) or leave it out"
        )

    def close(self) -> None:
        """Stop all workers (those blocked on a full pipe are terminated)."""
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
