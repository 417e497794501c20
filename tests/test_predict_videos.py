"""`expr predict --videos`: raw videos in, per-frame CSVs, timelines and the submission out,
extracted with exactly the run's backbones (tiny random-init ones here)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import media_fixtures as F
from expr.core.abaw import CLASS_NAMES, LABEL_HEADER
from expr.evaluate.palette import CLASS_COLOURS
from expr.evaluate.submission import read_submission

TINY: dict[str, Any] = dict(visual_model="test-tiny-clip", audio_model="test-tiny-wav2vec2", visual_weights="none",
            audio_weights="none")
FRAMES = {"clip_a": 20, "clip_b": 14}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run trained on a cache of tiny-backbone features of two PyAV-made videos."""
    import torch

    from expr.app.pipeline import extract_features
    from expr.train_heads import TrainConfig, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny_run")
    for i, vid in enumerate(("train_a", "train_b")):
        F.make_video(root / "videos" / f"{vid}.mp4", n_frames=24 + 4 * i)
    summary = extract_features(videos=root / "videos", out=root / "feats.zarr", device="cpu", workers=0,
                               batch_size=8, **TINY)
    assert sorted(summary.ok) == ["train_a", "train_b"]
    rng = np.random.default_rng(0)
    for split in ("Train_Set", "Validation_Set"):
        (root / "labels" / split).mkdir(parents=True)
        for vid, n in (("train_a", 24), ("train_b", 28)):
            body = "\n".join(str(v) for v in rng.integers(0, 8, n))
            (root / "labels" / split / f"{vid}.txt").write_text(f"{LABEL_HEADER}\n{body}\n")
    train(TrainConfig(cache=root / "feats.zarr", labels=root / "labels", out=root / "run", window=8, stride=4,
                      epochs=1, channels=16, tcn_levels=1, heads=2, lr=1e-3, batch_size=4, accum=1, device="cpu"))
    return root / "run"


@pytest.fixture()
def new_videos(tmp_path) -> Path:
    for vid, n in FRAMES.items():
        F.make_video(tmp_path / "new" / f"{vid}.mp4", n_frames=n)
    return tmp_path / "new"


def _predict(run_dir, *args: str) -> int:
    from expr.app.cli import run

    return run(["predict", "--run", str(run_dir), "--device", "cpu", *args])


def _read_frame_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def test_raw_videos_in_csvs_timelines_and_submission_out(tiny_run, new_videos, tmp_path, capsys, monkeypatch):
    from expr.cache_format import open_cache
    from expr.evaluate import video_outputs

    drawn = {}
    real_plot = video_outputs.plot_timeline

    def spy(path, **kw):  # keep what each PNG shows, read back from its artists
        drawn[kw["video_id"]] = real_plot(path, **kw)
        return drawn[kw["video_id"]]

    monkeypatch.setattr(video_outputs, "plot_timeline", spy)
    out = tmp_path / "out"
    assert _predict(tiny_run, "--videos", str(new_videos), "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "extracting 2 video(s)" in printed and "validated" in printed

    with open_cache(out / "feats.zarr") as cache:  # extracted with the run's backbones
        assert cache.video_ids == sorted(FRAMES)
        assert cache.backbones.to_dict() == json.loads((tiny_run / "config.json").read_text())["cache"]["backbones"]
        timestamps = {v: cache.timestamps(v) for v in cache.video_ids}
    submission = read_submission(out / "submission.csv", FRAMES)
    for vid, n in FRAMES.items():
        rows = _read_frame_csv(out / "frames" / f"{vid}.csv")
        assert list(rows[0]) == ["frame", "time", "face", *CLASS_NAMES, "predicted"]
        assert [int(r["frame"]) for r in rows] == list(range(1, n + 1))
        np.testing.assert_allclose([float(r["time"]) for r in rows], timestamps[vid], atol=1e-4)
        probs = np.array([[float(r[c]) for c in CLASS_NAMES] for r in rows])
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
        predicted = [CLASS_NAMES.index(r["predicted"]) for r in rows]
        assert predicted == probs.argmax(1).tolist() == submission[vid].tolist()
        # the timeline shows exactly what the CSV says
        assert (out / "timelines" / f"{vid}.png").stat().st_size > 10_000
        data = drawn[vid]
        np.testing.assert_allclose(data.probs, probs, atol=1e-6)
        np.testing.assert_allclose(data.times, [float(r["time"]) for r in rows], atol=1e-4)
        expected_rgba = np.array([_rgba(CLASS_COLOURS[k]) for k in predicted])
        np.testing.assert_allclose(data.predicted_rgba, expected_rgba, atol=1e-6)
        assert data.truth_rgba is None  # no labels: no truth band
        assert data.shaded_no_face.tolist() == [r["face"] == "0" for r in rows]


def _rgba(colour: str) -> tuple:
    from matplotlib.colors import to_rgba

    return to_rgba(colour)


def test_videos_already_in_the_cache_are_not_extracted_again(tiny_run, new_videos, tmp_path):
    from expr.app.pipeline import PredictVideosConfig, predict_videos

    cache = tmp_path / "shared.zarr"
    cfg = PredictVideosConfig(run=tiny_run, out=tmp_path / "out", videos=new_videos, cache=cache, device="cpu",
                              timelines=False)
    first = predict_videos(cfg)
    assert sorted(first.extracted) == sorted(FRAMES) and first.reused == []
    groups = {v: (cache / "videos" / v / "zarr.json").stat().st_mtime_ns for v in FRAMES}

    F.make_video(new_videos / "clip_c.mp4", n_frames=9)
    events = []
    second = predict_videos(cfg, on_extract=events.append)
    assert second.extracted == ["clip_c"] and sorted(second.reused) == sorted(FRAMES)
    assert [e.video_id for e in events if e.kind == "video"] == ["clip_c"]
    assert {v: (cache / "videos" / v / "zarr.json").stat().st_mtime_ns for v in FRAMES} == groups
    assert second.n_videos == 3 and second.n_rows == sum(FRAMES.values()) + 9
    assert not second.timelines and len(second.frame_csvs) == 3


def test_a_run_whose_backbones_cannot_be_loaded_is_refused_before_any_work(tiny_run, new_videos, tmp_path, capsys):
    other = tmp_path / "run_other"
    shutil.copytree(tiny_run, other)
    config = json.loads((other / "config.json").read_text())
    config["cache"]["backbones"]["visual"]["name"] = "clip-of-another-lab"
    (other / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    assert _predict(other, "--videos", str(new_videos), "--out", str(out)) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "was trained on features of visual clip-of-another-lab (weights none)" in err
    assert "unknown visual model 'clip-of-another-lab'" in err
    assert not (out / "feats.zarr").exists()


def test_a_cache_of_other_backbones_is_refused(tiny_run, new_videos, tmp_path, capsys):
    from expr.train_heads import write_synthetic_dataset

    ds = write_synthetic_dataset(tmp_path / "syn", n_train=1, n_val=1, n_frames=(20, 30))
    before = sorted(p.name for p in (ds.cache / "videos").iterdir())
    assert _predict(tiny_run, "--videos", str(new_videos), "--cache", str(ds.cache), "--out",
                    str(tmp_path / "out")) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "extracting --videos with them failed" in err and str(ds.cache) in err
    assert sorted(p.name for p in (ds.cache / "videos").iterdir()) == before


def test_ids_file_replaces_the_old_videos_file(tiny_run, new_videos, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("clip_b\n")
    assert _predict(tiny_run, "--videos", str(ids), "--out", str(tmp_path / "x")) == 1
    assert "pass a text file of video ids as --ids" in " ".join(capsys.readouterr().err.split())
    out = tmp_path / "out"
    assert _predict(tiny_run, "--videos", str(new_videos), "--ids", str(ids), "--out", str(out)) == 0
    assert list(read_submission(out / "submission.csv")) == ["clip_b"]
    assert sorted(p.name for p in (out / "frames").iterdir()) == ["clip_b.csv"]


def test_formula_video_names_are_refused_before_extraction(tiny_run, new_videos, tmp_path, capsys):
    F.make_video(new_videos / "=cmd.mp4", n_frames=5)
    out = tmp_path / "out"
    assert _predict(tiny_run, "--videos", str(new_videos), "--out", str(out)) == 1
    assert "'=cmd'" in capsys.readouterr().err
    assert not out.exists()
