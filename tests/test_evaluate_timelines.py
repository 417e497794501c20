"""`expr evaluate --timelines N`: the N worst videos by per-frame accuracy are drawn (truth band
included) and report.html embeds them; the report is rewritten with each evaluate."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from expr.core.abaw import CLASS_NAMES
from expr.evaluate.palette import CLASS_COLOURS, UNLABELLED_COLOUR
from report_helpers import trained_run

SPLIT = "Validation_Set"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # big enough to learn something in 4 CPU epochs (~8 s): not every video ties at 0
    return trained_run(tmp_path_factory.mktemp("timelines"), n_val=5, n_frames=(60, 120),
                       dataset=dict(masked_frames_frac=0.2), window=16, stride=4, epochs=4, channels=32,
                       lr=3e-3, batch_size=8, accum=1)


def _cli(*args: str) -> int:
    from expr.app.cli import run

    return run([*args, "--device", "cpu"])


def _per_video_accuracy(ds, run_dir, tmp_path) -> dict[str, tuple[float, int]]:
    """Each validation video's per-frame accuracy and annotated frames, from `expr predict`'s
    per-video CSVs and the label files, with sklearn (not the code under test)."""
    from sklearn.metrics import accuracy_score

    out = tmp_path / "pred"
    assert _cli("predict", "--run", str(run_dir), "--cache", str(ds.cache), "--out", str(out), "--no-timelines") == 0
    scores = {}
    for vid in ds.val_ids:
        with open(out / "frames" / f"{vid}.csv", encoding="utf-8", newline="") as fh:
            predicted = np.array([CLASS_NAMES.index(r["predicted"]) for r in csv.DictReader(fh)])
        truth = np.loadtxt(ds.labels / SPLIT / f"{vid}.txt", skiprows=1, dtype=np.int64)[:len(predicted)]
        keep = truth != -1
        scores[vid] = (accuracy_score(truth[keep], predicted[keep]), int(keep.sum()))
    return scores


def test_timelines_are_the_n_worst_videos_with_their_truth(trained, tmp_path, capsys, monkeypatch):
    from matplotlib.colors import to_rgba

    from expr.evaluate import video_outputs

    ds, run_dir = trained
    drawn, titles = {}, {}
    real_plot = video_outputs.plot_timeline

    def plot(path, **kw):
        titles[kw["video_id"]] = kw["title_extra"]
        return drawn.setdefault(kw["video_id"], real_plot(path, **kw))

    monkeypatch.setattr(video_outputs, "plot_timeline", plot)
    assert _cli("evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(ds.labels),
                "--timelines", "2") == 0
    printed = capsys.readouterr().out
    scores = _per_video_accuracy(ds, run_dir, tmp_path)
    # lowest accuracy first; a tie goes to the video with more annotated frames, then the id
    worst = sorted(scores, key=lambda v: (scores[v][0], -scores[v][1], v))[:2]
    for rank, vid in enumerate(worst, start=1):  # the title names the figure it ranks by
        assert titles[vid].startswith(f"per-frame accuracy {scores[vid][0]:.3f} · macro-F1 over the ")
        assert titles[vid].endswith(f"worst {rank} of {len(ds.val_ids)} by accuracy")
    folder = run_dir / f"timelines_{SPLIT}"
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(worst)
    assert list(drawn) == worst  # drawn worst first
    assert f"timelines of the 2 worst videos: {folder}" in " ".join(printed.split())
    for vid in worst:
        truth = np.loadtxt(ds.labels / SPLIT / f"{vid}.txt", skiprows=1, dtype=np.int64)
        expected = [to_rgba(UNLABELLED_COLOUR if k == -1 else CLASS_COLOURS[k]) for k in truth]
        np.testing.assert_allclose(drawn[vid].truth_rgba, expected[:len(drawn[vid].truth_rgba)], atol=1e-6)
    # the report embeds exactly those timelines, worst first
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert f"report: {run_dir / 'report.html'}" in " ".join(printed.split())
    assert [html.index(f"timeline {v}") for v in worst] == sorted(html.index(f"timeline {v}") for v in worst)

    # evaluating again without --timelines drops the stale pictures from the folder and the report
    assert _cli("evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(ds.labels)) == 0
    assert not folder.exists()
    assert "timeline " not in (run_dir / "report.html").read_text(encoding="utf-8")


def test_retraining_with_overwrite_removes_the_reports(trained, tmp_path):
    from expr.train_heads import TrainConfig, train

    ds, run_dir = trained
    run = tmp_path / "run"
    cfg = TrainConfig(cache=ds.cache, labels=ds.labels, out=run, window=8, stride=4, epochs=1, channels=16,
                      tcn_levels=1, heads=2, device="cpu")
    train(cfg)
    assert _cli("evaluate", "--run", str(run), "--cache", str(ds.cache), "--labels", str(ds.labels),
                "--timelines", "1") == 0
    assert (run / "report.html").is_file() and (run / f"timelines_{SPLIT}").is_dir()
    train(TrainConfig(**{**cfg.__dict__, "overwrite": True}))
    assert not (run / "report.html").exists() and not (run / f"timelines_{SPLIT}").exists()
