"""Feature bank, windows, targets and the one-gather batch: alignment at 25 and 30 fps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cache_helpers import backbones
from expr.cache_format import VideoEntry, open_writer
from expr.train_heads.config import Target, WindowRule
from expr.train_heads.data import gather, load_bank
from expr.train_heads.windows import WindowSpec, bank_windows, window_targets
from expr.train_heads.synthetic import audio_steps_for

BACKBONES = backbones(4, 3, name="test")


def _video(T, fps, with_audio=True):
    # Every feature row holds its own index, so a gathered value says which row it came from.
    visual = np.repeat(np.arange(T, dtype=np.float16)[:, None], 4, axis=1)
    S = audio_steps_for(T / fps)
    audio = np.repeat(np.arange(S, dtype=np.float16)[:, None], 3, axis=1) if with_audio else None
    return VideoEntry(visual=visual, audio=audio, frame_mask=np.ones(T, bool), timestamps=np.arange(T) / fps,
                      fps=fps, duration=T / fps, source="x.mp4", source_size=0, source_mtime=0.0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("win") / "feats.zarr"
    writer = open_writer(path, backbones=BACKBONES, text_embeddings=np.eye(8, 4, dtype=np.float32), logit_scale=100.0)
    v25 = _video(100, 25.0)
    v25.frame_mask[19] = False  # no face at frame 19
    writer.write_video("v25", v25)
    writer.write_video("v30", _video(90, 30.0))
    writer.write_video("noaudio", _video(50, 25.0, with_audio=False))
    return path


def labels_for():
    lab = {"v25": np.repeat(np.arange(5), 20), "v30": np.full(90, 6), "noaudio": np.full(50, 2)}
    lab["v25"][14] = -1
    return lab


@pytest.fixture(scope="module")
def bank(cache):
    return load_bank(cache, ["v25", "v30", "noaudio"], labels_for())


def test_bank_layout(bank):
    assert bank.visual.dtype == torch.float16 and bank.visual.shape == (240, 4)
    assert bank.frame_offsets.tolist() == [0, 100, 190]
    assert bank.audio_steps.tolist() == [audio_steps_for(4.0), audio_steps_for(3.0), 0]
    assert bank.audio.shape[0] == sum(bank.audio_steps.tolist()) + 1  # + the zero padding row
    assert bank.fps.tolist() == [25.0, 30.0, 25.0]
    assert bank.audio_rate == 50.0
    assert not bank.valid[14] and not bank.valid[19] and bank.valid[15]


def test_windows_full_at_stride_with_valid_last_frame(bank):
    w = bank_windows(bank, WindowSpec(window=10, stride=5, rule=WindowRule.grid))
    v25 = w.end_frame[w.video_idx == 0].tolist()
    # ends 9, 14, ..., 99 minus 14 (label -1) and 19 (no face)
    assert v25 == [e for e in range(9, 100, 5) if e not in (14, 19)]
    assert w.target[w.video_idx == 0].tolist() == [e // 20 for e in v25]
    assert w.end_frame[w.video_idx == 1].tolist() == list(range(9, 90, 5))
    assert (w.target[w.video_idx == 1] == 6).all() and (w.target[w.video_idx == 2] == 2).all()


def test_windows_skip_videos_shorter_than_the_window(bank):
    w = bank_windows(bank, WindowSpec(window=60, stride=15, rule=WindowRule.grid))
    assert set(w.video_idx.tolist()) == {0, 1}  # noaudio has 50 frames


def test_center_and_majority_targets(bank):
    ends = torch.tensor([29, 39, 45])
    vids = torch.zeros(3, dtype=torch.long)
    center, ok = window_targets(bank, vids, ends, 20, "center")
    assert center[1:].tolist() == [(e - 10) // 20 for e in (39, 45)]
    assert ok.tolist() == [False, True, True]  # center of the first is frame 19: no face
    # frames 10..29: ten of class 0 (one of them -1, one without face) vs ten of class 1
    major, ok = window_targets(bank, vids, ends, 20, "majority")
    assert major.tolist() == [1, 1, 1]
    major, _ = window_targets(bank, vids[:1], torch.tensor([26]), 20, "majority")  # frames 7..26
    assert major.tolist() == [0]


def test_gather_visual_rows_and_first_frame_padding(bank):
    b = gather(bank, torch.tensor([0, 1, 0]), torch.tensor([79, 89, 3]), 10)
    assert b.visual.dtype == torch.float32 and b.visual.shape == (3, 10, 4)
    assert b.visual[0, :, 0].tolist() == list(range(70, 80))
    assert b.visual[1, :, 0].tolist() == list(range(80, 90))
    assert b.visual[2, :, 0].tolist() == [0] * 7 + [1, 2, 3]  # frames -6..-1 repeat frame 0


def test_audio_covers_the_same_seconds_at_25_fps(bank):
    # Window of 60 frames ending at frame 79 at 25 fps: frames 20..79 = 0.8 s .. 3.2 s,
    # i.e. Wav2Vec2 steps 40..159 at 50 steps/s (a global 30 fps would give 33..132).
    b = gather(bank, torch.tensor([0]), torch.tensor([79]), 60)
    A = bank.audio_len(60)
    assert A == 121 and b.audio.shape == (1, A, 3)
    assert b.audio_mask[0].sum() == 120
    assert b.audio[0, :120, 0].tolist() == list(range(40, 160))
    assert (b.audio[0, 120:] == 0).all()


def test_audio_at_30_fps_is_shorter_and_masked_past_the_end(bank):
    # 60 frames ending at 89 at 30 fps: 1.0 s .. 3.0 s = steps 50..149, but 3 s of audio
    # has only audio_steps_for(3.0) = 149 steps (0..148): the last one is padding.
    b = gather(bank, torch.tensor([1]), torch.tensor([89]), 60)
    assert audio_steps_for(3.0) == 149
    assert b.audio_mask[0].sum() == 99
    assert b.audio[0, :99, 0].tolist() == list(range(50, 149))
    assert (b.audio[0, 99:] == 0).all()


def test_audio_before_time_zero_is_masked(bank):
    b = gather(bank, torch.tensor([0]), torch.tensor([3]), 60)  # frames -56..3
    assert b.audio_mask[0].sum() == 8  # 0 s .. 0.16 s
    assert b.audio[0][b.audio_mask[0], 0].tolist() == list(range(8))


def test_video_without_audio_gives_masked_zeros(bank):
    b = gather(bank, torch.tensor([2, 0]), torch.tensor([30, 30]), 20)
    assert not b.audio_mask[0].any() and (b.audio[0] == 0).all()
    assert b.audio_mask[1].any()


def test_label_length_mismatch_is_truncated_with_one_warning(cache):
    lab = labels_for()
    lab["v25"] = lab["v25"][:80]                      # fewer labels than frames
    lab["v30"] = np.concatenate([lab["v30"], [1, 1]])  # more labels than frames
    bank = load_bank(cache, ["v25", "v30", "noaudio"], lab)
    assert bank.n_frames.tolist() == [80, 90, 50]
    assert len(bank.warnings) == 2
    assert "v25: 80 labels but 100 cached frames" in bank.warnings[0]
    assert bank_windows(bank, WindowSpec(10, 5, rule=WindowRule.grid)).end_frame.max() <= 89


def test_label_only_bank_gives_the_same_windows(cache, bank):
    light = load_bank(cache, ["v25", "v30", "noaudio"], labels_for(), features=False)
    assert light.visual.shape[0] == 0
    spec = WindowSpec(10, 5, Target.majority, WindowRule.grid)
    a, b = bank_windows(light, spec), bank_windows(bank, spec)
    assert torch.equal(a.end_frame, b.end_frame) and torch.equal(a.target, b.target)


def test_window_spec_is_the_configs_four_options_checked_once():
    from pathlib import Path

    from expr.core.errors import ConfigError
    from expr.train_heads import TrainConfig

    cfg = TrainConfig(cache=Path("c"), labels=Path("l"), out=Path("o"), window=30, stride=45,
                      target=Target.majority, windows=WindowRule.grid)
    spec = WindowSpec.of(cfg)
    assert spec == WindowSpec(30, 45, Target.majority, WindowRule.grid)
    assert WindowSpec(30, 45, "majority", "grid") == spec  # type: ignore[arg-type]  # strings from JSON
    assert isinstance(WindowSpec(3, 1, "center").target, Target)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--windows must be one of reference, grid"):
        WindowSpec(3, 1, Target.last, "sliding")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 1"):
        WindowSpec(0, 1)
