"""Issue 21 item 5: degenerate training data is said out loud (terminal, config.json, report),
and label files far longer or shorter than their videos are summarised, or refused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from expr.train_heads.data_warnings import length_mismatches, length_summary, split_warnings


def _cfg(**kw):
    return SimpleNamespace(**{"batch_size": 32, "window": 60, "stride": 15, "windows": "reference", **kw})


def test_a_class_without_windows_and_fewer_windows_than_a_batch():
    targets = torch.tensor([0, 0, 1, 2, 3])  # no Happiness .. Other
    lines = split_warnings(_cfg(), "train", targets)
    assert lines[0].startswith("no training window of Happiness, Sadness, Surprise, Other (4 of 8 classes)")
    assert "their class weights are 0" in lines[0]
    assert lines[1].startswith("only 5 training windows, fewer than one batch (--batch-size 32)")
    val = split_warnings(_cfg(), "val", targets)
    assert len(val) == 1 and "their F1s count as 0 in the validation macro-F1" in val[0]  # no batch warning for val
    assert split_warnings(_cfg(batch_size=4), "train", torch.arange(8).repeat(2)) == []


def test_length_mismatch_tolerance_and_summary():
    labels = {"train": {"a": np.zeros(103), "b": np.zeros(400), "c": np.zeros(94)},
              "val": {"d": np.zeros(1000), "e": np.zeros(1030)}}
    frames = {"a": 100, "b": 100, "c": 100, "d": 1000, "e": 1000}
    found = length_mismatches(labels, frames.__getitem__)
    # a (+3) and e (+30 of 1000 = 3% > 2%: beyond), c (-6 > 5 frames) count; d matches
    assert [m.video_id for m in found] == ["b", "e", "c"]
    text = length_summary(found, 5)
    assert text is not None
    assert text.startswith("3 of 5 videos have a label file whose length differs")
    assert "b 400 labels for 100 frames, 4.0x" in text
    assert length_summary(length_mismatches({"t": {"a": np.zeros(103)}}, frames.__getitem__), 1) is None


@pytest.fixture(scope="module")
def short_clips(tmp_path_factory):
    from expr.train_heads import write_synthetic_dataset

    root = tmp_path_factory.mktemp("short")
    return write_synthetic_dataset(root, n_train=6, n_val=3, n_frames=(40, 80), visual_dim=16, audio_dim=8,
                                   text_dim=8, seed=3)


def _train(ds, out, *extra) -> int:
    from expr.app.cli import run

    torch.set_num_threads(1)
    return run(["train", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(out), "--window",
                "60", "--stride", "15", "--epochs", "1", "--channels", "8", "--tcn-levels", "1", "--heads", "2",
                "--device", "cpu", "--windows", "grid", *extra])


def test_the_readmes_window_60_on_short_clips_warns_everywhere(short_clips, tmp_path, capsys):
    from expr.app.cli import run

    ds = short_clips
    out = tmp_path / "run"
    assert _train(ds, out) == 0
    printed = " ".join(capsys.readouterr().out.split())
    config = json.loads((out / "config.json").read_text())
    warnings = config["warnings"]
    assert any(w.startswith("only ") and "fewer than one batch" in w for w in warnings)
    assert any("labelled training frames" in w and "lie in a window of --window 60" in w for w in warnings)
    assert any(w.startswith("no training window of ") for w in warnings)
    for w in warnings:
        assert f"warning: {' '.join(w.split())[:60]}" in printed  # printed as warnings, not notes
    assert run(["evaluate", "--run", str(out), "--cache", str(ds.cache), "--labels", str(ds.labels),
                "--device", "cpu"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "training: only " in html and "fewer than one batch" in html


def test_label_files_far_longer_than_the_video_are_summarised_or_refused(short_clips, tmp_path, capsys):
    import shutil

    ds = short_clips
    labels = tmp_path / "labels"
    shutil.copytree(ds.labels, labels)
    vid = ds.train_ids[0]
    path = labels / "Train_Set" / f"{vid}.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0]] + lines[1:] * 4) + "\n")  # 4x longer, as in the issue
    bad = SimpleNamespace(cache=ds.cache, labels=labels)
    assert _train(bad, tmp_path / "run") == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"warning: 1 of {len(ds.train_ids) + len(ds.val_ids)} videos have a label file whose length differs" in printed
    assert "4.0x" in printed
    assert _train(bad, tmp_path / "run2", "--strict-labels") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error:") and "--strict-labels is set, so training stops" in err and vid in err


def _coverage_by_loop(bank, windows, window: int) -> tuple[int, int, int]:
    """The reference: data_warnings._coverage as it was, one slice per window in Python."""
    from expr.core.abaw import IGNORE_LABEL

    labels = bank.labels.cpu().numpy() if bank.labels is not None else None
    if labels is None:
        return 0, 0, 0
    covered = np.zeros(len(labels), bool)
    offsets = bank.frame_offsets.cpu().numpy()
    rows_end = (offsets[windows.video_idx.cpu().numpy()] + windows.end_frame.cpu().numpy())
    for end, start in zip(rows_end, offsets[windows.video_idx.cpu().numpy()]):
        covered[max(start, end - window + 1):end + 1] = True
    labelled = labels != IGNORE_LABEL
    without = len(bank.video_ids) - len(set(windows.video_idx.cpu().tolist()))
    return int((covered & labelled).sum()), int(labelled.sum()), without


def _random_bank_and_windows(rng: np.random.Generator, window: int):
    """Videos of 1..3 windows' length (some shorter than one), labels with -1 gaps, and windows
    ending anywhere: near a video's start (cut at it), overlapping, repeated; some videos get none."""
    n_videos = int(rng.integers(1, 12))
    lengths = rng.integers(1, 3 * window + 2, n_videos)
    offsets = np.cumsum(lengths) - lengths
    labels = rng.integers(-1, 8, int(lengths.sum()))
    with_windows = np.flatnonzero(rng.random(n_videos) < 0.7)
    video_idx = rng.choice(with_windows, int(rng.integers(0, 40))) if with_windows.size else np.zeros(0, int)
    end_frame = (rng.random(video_idx.size) * lengths[video_idx]).astype(np.int64)
    early = rng.random(video_idx.size) < 0.3   # windows at a video's start: clipped at its first row
    end_frame[early] = np.minimum(end_frame[early], window // 2)
    bank = SimpleNamespace(labels=torch.from_numpy(labels), frame_offsets=torch.from_numpy(offsets),
                           video_ids=[f"v{i}" for i in range(n_videos)])
    windows = SimpleNamespace(video_idx=torch.from_numpy(video_idx.astype(np.int64)),
                              end_frame=torch.from_numpy(end_frame))
    return bank, windows


@pytest.mark.parametrize("seed", range(8))
def test_coverage_equals_the_per_window_loop(seed):
    from expr.train_heads.data_warnings import _coverage

    rng = np.random.default_rng(seed)
    for _ in range(50):
        window = int(rng.choice([1, 2, 5, 8, 30, 60]))
        bank, windows = _random_bank_and_windows(rng, window)
        assert _coverage(bank, windows, window) == _coverage_by_loop(bank, windows, window)


def test_coverage_edge_cases_equal_the_per_window_loop():
    from expr.train_heads.data_warnings import _coverage

    bank = SimpleNamespace(labels=torch.tensor([0, -1, 2, 3, 4, 5, -1, 7]), frame_offsets=torch.tensor([0, 3, 3]),
                           video_ids=["a", "empty", "b"])
    cases = [((), ()), ((0,), (0,)), ((0, 0, 2), (2, 2, 4)), ((2,), (4,)), ((0, 2), (2, 0))]
    for idx, end in cases:
        windows = SimpleNamespace(video_idx=torch.tensor(idx, dtype=torch.int64),
                                  end_frame=torch.tensor(end, dtype=torch.int64))
        for window in (1, 3, 10):
            assert _coverage(bank, windows, window) == _coverage_by_loop(bank, windows, window), (idx, end, window)
    windows = SimpleNamespace(video_idx=torch.tensor([0, 2]), end_frame=torch.tensor([2, 4]))
    # rows 0-2 (labelled: 0, 2) and 5-7 (5, 7; video b starts at row 3); "empty" has no window
    assert _coverage(bank, windows, 3) == (4, 6, 1)
    assert _coverage(SimpleNamespace(labels=None), windows, 3) == (0, 0, 0)
