"""Start-up of a run: the first batch needs CLIP alone, so Wav2Vec2 and a new cache's creation
happen in a set-up thread while frames encode (run.Backbones.start). A checkpoint that cannot be
loaded still stops the run and leaves no cache behind, whenever its error comes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

import media_fixtures as F
from expr.core.errors import WeightsNotFoundError
from expr.extract import run as run_module
from expr.extract.decode_pool import SHM_DIR, SHM_PREFIX
from expr.extract.encoder_feed import EncoderFeed
from expr.extract.run import run_extract
from test_extract_run import assert_same_cache, cache_arrays, tiny_config


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("startup")
    F.make_video(root / "a.mp4", n_frames=40)
    F.make_video(root / "b.mp4", n_frames=24, audio_rate=None)
    return root


def _slow_wav2vec2(monkeypatch, delay: float, error: Exception | None = None) -> dict:
    """Wav2Vec2's build takes ``delay`` s (then fails with ``error``); when it ended, in ``times``."""
    build, times = run_module.build_wav2vec2, {}

    def slow(spec, source):
        time.sleep(delay)
        times["built"] = time.monotonic()
        if error is not None:
            raise error
        return build(spec, source)

    monkeypatch.setattr(run_module, "build_wav2vec2", slow)
    return times


def _no_leftovers() -> None:
    assert not multiprocessing.active_children()
    assert not list(SHM_DIR.glob(f"{SHM_PREFIX}{os.getpid()}-*"))


def _wait_for_setup_threads() -> None:
    for thread in threading.enumerate():
        if thread.name == "expr-setup":
            thread.join(timeout=30)


def test_the_first_batch_does_not_wait_for_wav2vec2_and_the_cache_is_the_same(videos, tmp_path, monkeypatch):
    reference = run_extract(tiny_config(videos, tmp_path / "ref.zarr"))
    times = _slow_wav2vec2(monkeypatch, delay=2.0)
    batches: list[float] = []
    summary = run_extract(tiny_config(videos, tmp_path / "f.zarr"),
                          progress=lambda e: batches.append(time.monotonic()) if e.kind == "batch" else None)
    assert sorted(summary.ok) == ["a", "b"] == sorted(reference.ok) and summary.exit_code == 0
    assert batches and batches[0] < times["built"]  # frames were encoded while it built
    assert_same_cache(cache_arrays(tmp_path / "f.zarr"), cache_arrays(tmp_path / "ref.zarr"))


def test_a_checkpoint_failing_while_frames_encode_stops_the_run_and_leaves_no_cache(videos, tmp_path, monkeypatch):
    """The error comes from the set-up thread once the decode loop runs: the loop raises it at the
    next message (the workers stop, no shared memory is left) and no cache is made."""
    _slow_wav2vec2(monkeypatch, delay=0.0, error=WeightsNotFoundError("test-tiny-wav2vec2: no-checkpoint here"))
    handled = []
    handle = EncoderFeed.handle
    monkeypatch.setattr(EncoderFeed, "handle", lambda self, msg: (handled.append(msg), handle(self, msg))[1])
    out = tmp_path / "f.zarr"
    with pytest.raises(WeightsNotFoundError, match="no-checkpoint here"):
        run_extract(tiny_config(videos, out, workers=2, batch_size=4))
    assert handled  # the loop had started
    assert not out.exists()
    _no_leftovers()
    # the same run with loadable weights then makes the cache
    monkeypatch.undo()
    assert sorted(run_extract(tiny_config(videos, out)).ok) == ["a", "b"]


def test_both_backbones_without_weights_are_named_in_one_error(videos, tmp_path):
    broken = tmp_path / "no-checkpoint"
    broken.mkdir()
    out = tmp_path / "f.zarr"
    with pytest.raises(WeightsNotFoundError, match="2 backbones are missing") as error:
        run_extract(tiny_config(videos, out, workers=2, visual_weights=str(broken), audio_weights=str(broken)))
    assert "test-tiny-clip" in str(error.value) and "test-tiny-wav2vec2" in str(error.value)
    assert not out.exists()
    _no_leftovers()


def test_a_run_failing_otherwise_while_wav2vec2_builds_makes_no_cache_afterwards(videos, tmp_path, monkeypatch):
    """The set-up thread outlives the failed run by a moment: it must not make the cache then."""
    _slow_wav2vec2(monkeypatch, delay=1.0)

    def broken(self, msg):
        raise RuntimeError("boom in the feed")

    monkeypatch.setattr(EncoderFeed, "handle", broken)
    out = tmp_path / "f.zarr"
    with pytest.raises(RuntimeError, match="boom in the feed"):
        run_extract(tiny_config(videos, out))
    _wait_for_setup_threads()
    assert not out.exists()
