"""Extract says what it did: missing weights of both backbones in one message, one-line
backbone mismatch, the options that change features recorded and never mixed (issue 21)."""

from __future__ import annotations

from pathlib import Path

import pytest

import media_fixtures as F
from expr.errors import WeightsNotFoundError
from expr.extract.config import ExtractConfig
from expr.extract.run import run_extract

TINY = dict(visual_model="test-tiny-clip", audio_model="test-tiny-wav2vec2")


def tiny_config(videos: Path, out: Path, **kw) -> ExtractConfig:
    return ExtractConfig(videos=videos, out=out, **{"batch_size": 8, "workers": 0, **TINY, **kw})


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    F.make_video(root / "a.mp4", n_frames=12, size=(96, 64))
    F.make_video(root / "b.mp4", n_frames=9, size=(96, 64), audio_rate=None)
    return root


def test_both_backbones_without_weights_are_named_in_one_message(videos, tmp_path):
    """Issue 21.7: offline, extract named only CLIP's missing weights; the user fixed that and
    only then learnt that Wav2Vec2's were missing too."""
    clip_dir, w2v_dir = tmp_path / "clip-empty", tmp_path / "w2v-empty"
    clip_dir.mkdir(), w2v_dir.mkdir()
    with pytest.raises(WeightsNotFoundError) as err:
        run_extract(tiny_config(videos, tmp_path / "f.zarr", visual_weights=str(clip_dir),
                                audio_weights=str(w2v_dir)))
    msg = str(err.value)
    assert "\n" not in msg and "clip-empty" in msg and "w2v-empty" in msg
    assert "test-tiny-clip" in msg and "test-tiny-wav2vec2" in msg
    assert not (tmp_path / "f.zarr").exists()
