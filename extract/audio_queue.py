"""One background thread that encodes audio tracks, whatever is waiting in one batched call.

Why: Wav2Vec2 must keep up with the image encoder (issue 18: at 12k frames/s of 30 fps
video, 400 s of audio arrive every second). One track per forward leaves a GPU idle, so the
thread takes every track that is waiting when it becomes free and hands them all to
``AudioEncoder.encode_many`` (padded batches across tracks, same features). It never waits
for more tracks to come: a lone track is encoded at once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

EncodeMany = Callable[[Sequence[np.ndarray]], list]
_STOP = None


class AudioQueue:
    """``submit(samples)`` -> a Future of ``encode_many([samples])[0]``, run in one thread
    named ``expr-audio``. When a batched call fails (e.g. out of memory), its tracks are
    retried one by one, so that a failure belongs to the track that causes it."""

    def __init__(self, encode_many: EncodeMany, name: str = "expr-audio"):
        self.encode_many = encode_many
        self.batches: list[int] = []  # tracks per encode_many call (tests, benchmarks)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._started = False
        self._closed = False

    def submit(self, samples: np.ndarray) -> Future:
        if self._closed:
            raise RuntimeError("the audio queue is shut down")
        future: Future = Future()
        self._queue.put((samples, future))
        if not self._started:
            self._started = True
            self._thread.start()
        return future

    def _take(self) -> tuple[list, bool]:
        """Block for one track, then take every other one waiting; True when told to stop."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        items, stop = [first], False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items, stop
            if item is _STOP:
                stop = True  # encode what came before it first
            else:
                items.append(item)

    def _loop(self) -> None:
        while True:
            items, stop = self._take()
            items = [(s, f) for s, f in items if f.set_running_or_notify_cancel()]
            if items:
                self._encode(items)
            if stop:
                return

    def _encode(self, items: list) -> None:
        self.batches.append(len(items))
        try:
            results = self.encode_many([s for s, _ in items])
        except Exception as exc:  # noqa: BLE001 - retried alone, so each track keeps its own error
            if len(items) == 1:
                items[0][1].set_exception(exc)
            else:
                for item in items:
                    self._encode([item])
            return
        for (_, future), result in zip(items, results):
            future.set_result(result)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop after the tracks submitted so far (or cancel those not started)."""
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item[1].cancel()
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        if wait and self._started:
            self._thread.join()
