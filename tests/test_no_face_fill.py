"""Issue 19: per-frame inference fills no-face frames as training does, causally by the face
mask: a no-face frame shows the last face frame's visual features (its own audio stays) for
up to 5 no-face frames in a row; the 6th on, and frames before a video's first face, show
the cache's. `--no-face raw` shows the cache's features everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cache_helpers import backbones
from expr.cache_format import VideoEntry, open_writer
from expr.core.errors import ConfigError
from expr.train_heads import (ExprHeadModel, HeadConfig, frame_probabilities, load_bank, with_face_fill)
from expr.train_heads.data import FeatureBank, gather
from expr.train_heads.inference import face_fill_rows
from expr.train_heads.synthetic import audio_steps_for
from window_oracle import authors_loop

# video "a", 40 frames: no face at 0-1 (before the first face), 10 (a run of 1), 15-19 (5),
# 25-30 (6); video "b", 12 frames: no face at 0-2 (video a ends on a face: no fill across)
NO_FACE = {"a": [0, 1, 10, *range(15, 20), *range(25, 31)], "b": [0, 1, 2]}
LENGTHS = {"a": 40, "b": 12}
# frame -> the frame whose visual features it shows under fill; every other frame shows its own
FILLED = {"a": {10: 9, **{f: 14 for f in range(15, 20)}, **{f: 24 for f in range(25, 30)}}, "b": {}}


def _shown(video: str) -> list[int]:
    return [FILLED[video].get(t, t) for t in range(LENGTHS[video])]


@pytest.fixture(scope="module")
def index_bank(tmp_path_factory):
    """Both videos at 25 fps; every visual row and audio step holds its own in-video index."""
    path = tmp_path_factory.mktemp("noface") / "feats.zarr"
    writer = open_writer(path, backbones=backbones(4, 4), text_embeddings=np.eye(8, 4, dtype=np.float32), logit_scale=100.0)
    fps = 25.0
    for vid, T in LENGTHS.items():
        S = audio_steps_for(T / fps)
        mask = np.ones(T, bool)
        mask[NO_FACE[vid]] = False
        writer.write_video(vid, VideoEntry(visual=np.repeat(np.arange(T, dtype=np.float16)[:, None], 4, axis=1),
                                           audio=np.repeat(np.arange(S, dtype=np.float16)[:, None], 4, axis=1),
                                           frame_mask=mask, timestamps=np.arange(T) / fps, fps=fps,
                                           duration=T / fps, source=f"{vid}.mp4", source_size=0, source_mtime=0.0))
    return load_bank(path, list(LENGTHS), None)


def _frames(bank):
    ends = torch.cat([torch.arange(n) for n in bank.n_frames.tolist()])
    vids = torch.repeat_interleave(torch.arange(len(bank.n_frames)), bank.n_frames)
    return vids, ends


def test_fill_shows_exactly_the_specified_frames(index_bank):
    vids, ends = _frames(index_bank)
    filled = gather(with_face_fill(index_bank, "fill"), vids, ends, 1)
    raw = gather(with_face_fill(index_bank, "raw"), vids, ends, 1)
    shown = filled.visual[:, 0, 0].long().tolist()
    assert shown == _shown("a") + _shown("b")
    # which frames changed: the run of 1, all of the run of 5, the first 5 of the run of 6
    changed = [t for t, s in enumerate(shown[:40]) if s != t]
    assert changed == [10, 15, 16, 17, 18, 19, 25, 26, 27, 28, 29]
    assert raw.visual[:, 0, 0].long().tolist() == list(range(40)) + list(range(12))
    # audio is each frame's own in both
    assert torch.equal(filled.audio, raw.audio) and torch.equal(filled.audio_mask, raw.audio_mask)
    assert face_fill_rows(index_bank).tolist() == _shown("a") + [40 + t for t in _shown("b")]


def test_a_causal_window_shows_the_filled_frames_and_pads_with_frame_0(index_bank):
    view = with_face_fill(index_bank)
    b = gather(view, torch.tensor([0, 0, 0, 1]), torch.tensor([12, 20, 31, 1]), 8)
    assert b.visual[0, :, 0].long().tolist() == [5, 6, 7, 8, 9, 9, 11, 12]
    assert b.visual[1, :, 0].long().tolist() == [13, 14, 14, 14, 14, 14, 14, 20]
    assert b.visual[2, :, 0].long().tolist() == [24, 24, 24, 24, 24, 24, 30, 31]
    # before frame 0 the first frame repeats; b's first frames have no face before them: own
    assert b.visual[3, :, 0].long().tolist() == [0, 0, 0, 0, 0, 0, 0, 1]


def test_face_fill_is_the_training_fill_rule_per_video():
    """--no-face fill and reference windows share one fill rule (windows.fill_sources): with
    every frame labelled, a frame shows what the authors' loop appends for it, video by video
    (never a face of the previous video); frames the loop drops show their own features."""
    rng = np.random.default_rng(7)
    masks = [rng.random(int(n)) < rng.uniform(0.2, 0.9) for n in rng.integers(0, 60, size=40)]
    n = torch.tensor([len(m) for m in masks])
    face = np.concatenate(masks).astype(bool)
    bank = FeatureBank(video_ids=[f"v{i}" for i in range(len(masks))], visual=torch.zeros(0, 1),
                       audio=torch.zeros(1, 1), frame_offsets=torch.cumsum(n, 0) - n,
                       audio_offsets=torch.zeros_like(n), n_frames=n, audio_steps=torch.zeros_like(n),
                       fps=torch.full((len(n),), 25.0, dtype=torch.float64),
                       timestamps=torch.zeros(len(face), dtype=torch.float64),
                       frame_mask=torch.from_numpy(face), labels=None)
    want, start = [], 0
    for m in masks:
        _, source = authors_loop([0] * len(m), m.tolist(), 10 ** 6, 1)   # never emits: sources only
        want += [start + (s if s >= 0 else t) for t, s in enumerate(source)]
        start += len(m)
    assert face_fill_rows(bank).tolist() == want
    assert want != list(range(len(face)))   # some frames are filled


def test_unknown_rule_is_refused(index_bank):
    with pytest.raises(ConfigError, match="fill, raw"):
        with_face_fill(index_bank, "black")


def test_logits_equal_a_manually_filled_cache(index_bank):
    """The model's per-frame probabilities with fill equal those of raw inference on a bank
    whose visual rows were filled by hand; and differ from raw on the original."""
    torch.manual_seed(0)
    cfg = HeadConfig(visual_dim=4, audio_dim=4, text_dim=4, channels=8, tcn_levels=2, heads=2)
    model = ExprHeadModel(cfg, torch.randn(8, 4), 100.0).eval()
    rng = np.random.default_rng(0)
    visual = torch.from_numpy(rng.normal(size=tuple(index_bank.visual.shape)).astype(np.float16))
    bank = type(index_bank)(**{**vars(index_bank), "visual": visual})
    manual = visual.clone()
    for v, vid in enumerate(LENGTHS):
        start = int(bank.frame_offsets[v])
        for own, src in FILLED[vid].items():
            manual[start + own] = visual[start + src]
    by_hand = type(index_bank)(**{**vars(index_bank), "visual": manual})
    window = 6
    fill = frame_probabilities(model, bank, window, batch_size=16)
    want = frame_probabilities(model, by_hand, window, batch_size=16, no_face="raw")
    raw = frame_probabilities(model, bank, window, batch_size=16, no_face="raw")
    for got, expected in zip(fill, want):
        np.testing.assert_array_equal(got, expected)
    # a frame's output changes exactly when its causal window holds a filled frame
    touched = {t for f in FILLED["a"] for t in range(f, min(f + window, 40))}
    differs = [t for t in range(40) if not np.array_equal(fill[0][t], raw[0][t])]
    assert differs == sorted(touched)
    np.testing.assert_array_equal(fill[1], raw[1])


# -- evaluate and predict record the rule -----------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from report_helpers import trained_run

    root = tmp_path_factory.mktemp("noface_run")
    return trained_run(root, window=16, stride=8, epochs=1, dataset={"masked_frames_frac": 0.15})


def test_evaluate_records_the_rule(trained):
    from expr.app.cli import run

    ds, run_dir = trained
    base = ["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(ds.labels), "--device", "cpu"]
    assert run(base) == 0
    fill = json.loads((run_dir / "eval_Validation_Set.json").read_text())
    assert fill["no_face"] == "fill" and fill["protocols"]["per_frame"]["no_face"] == "fill"
    assert run([*base, "--no-face", "raw"]) == 0
    raw = json.loads((run_dir / "eval_Validation_Set.json").read_text())
    assert raw["no_face"] == "raw" and raw["protocols"]["per_frame"]["no_face"] == "raw"
    assert raw["protocols"]["window"] == fill["protocols"]["window"]   # window-level is not affected
    assert run([*base, "--no-face", "black"]) == 2


def test_predict_fills_by_default_and_records_it(trained, tmp_path):
    from expr.app.cli import run
    from expr.cache_format import open_cache
    from expr.evaluate.submission import read_probabilities

    ds, run_dir = trained
    with open_cache(ds.cache) as cache:
        masks = [cache.frame_mask(vid) for vid in cache.video_ids]
    expected_filled = 0
    for mask in masks:  # the rule, counted directly from the masks
        since_face = None
        for face in mask:
            since_face = 0 if face else (None if since_face is None else since_face + 1)
            expected_filled += since_face is not None and 1 <= since_face <= 5
    assert expected_filled > 0
    base = ["predict", "--run", str(run_dir), "--cache", str(ds.cache), "--device", "cpu", "--no-timelines"]
    assert run([*base, "--out", str(tmp_path / "fill"), "--probs", str(tmp_path / "fill.csv")]) == 0
    assert run([*base, "--out", str(tmp_path / "raw"), "--probs", str(tmp_path / "raw.csv"), "--no-face", "raw"]) == 0
    fill = json.loads((tmp_path / "fill" / "manifest.json").read_text())["settings"]
    raw = json.loads((tmp_path / "raw" / "manifest.json").read_text())["settings"]
    assert (fill["no_face"], fill["filled_frames"]) == ("fill", expected_filled)
    assert (raw["no_face"], raw["filled_frames"]) == ("raw", 0)
    p_fill, p_raw = read_probabilities(tmp_path / "fill.csv"), read_probabilities(tmp_path / "raw.csv")
    assert any(not np.allclose(p_fill[v], p_raw[v]) for v in p_fill)
