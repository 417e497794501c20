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
