"""Names from the user and the filesystem print as written (issue 13, problem 4): `[`, `]`,
`[/bold]` are not rich markup and `:x:` is no emoji, in `expr extract` and `expr train`."""

from __future__ import annotations

import pytest

import media_fixtures as F
from expr.cache_format import open_cache
from expr.app.cli import run
from expr.train_heads import write_synthetic_dataset

HOSTILE = "w[/bold]v [x] :x:"
TINY = ["--visual-model", "test-tiny-clip", "--audio-model", "test-tiny-wav2vec2", "--workers", "0",
        "--batch-size", "8"]


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # long tmp paths on one line, as a user's terminal would not wrap them


def test_extract_prints_hostile_names_as_written(tmp_path, capsys):
    videos = tmp_path / HOSTILE
    (videos / "bad[").mkdir(parents=True)  # `w[/bold]v` is the folder `w[` holding `bold]v`
    F.make_video(videos / "ok [b].mp4", n_frames=6)
    F.make_text_as_video(videos / "bad[/bold]:x:.mp4")  # unreadable: its failure quotes the path
    out = tmp_path / "c[/].zarr"
    assert run(["extract", "--videos", str(videos), "--out", str(out), *TINY]) == 1  # one video failed
    text = capsys.readouterr().out
    assert "❌" not in text, text
    # the progress line (the id is the file's stem: `bold]:x:`), then the summary table
    assert f"\nfailed bold]:x:: {videos / 'bad[/bold]:x:.mp4'}: not a video" in text
    assert f"expr extract -> {out}" in " ".join(text.split())  # (a table title wraps at its width)
    assert f"│ bold]:x:: {videos / 'bad[/bold]:x:.mp4'}" in " ".join(text.split())
    with open_cache(out) as cache:
        assert cache.video_ids == ["ok [b]"]  # the run went on past the failure


def test_train_prints_hostile_paths_as_written(tmp_path, capsys):
    ds = write_synthetic_dataset(tmp_path / "data", visual_dim=16, audio_dim=12, text_dim=8, n_train=2, n_val=1)
    out = tmp_path / HOSTILE
    argv = ["train", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(out), "--device", "cpu",
            "--epochs", "1", "--window", "8", "--stride", "4", "--channels", "8", "--tcn-levels", "1",
            "--heads", "2"]
    assert run(argv) == 0
    text = capsys.readouterr().out
    assert "❌" not in text, text
    assert f"expr train -> {out}" in " ".join(text.split())  # (a table title wraps at its width)
    assert f"(window level) -> {out / 'best.safetensors'}\n" in text


def test_evaluate_prints_hostile_paths_as_written(tmp_path, capsys):
    from report_helpers import trained_run

    ds, run_dir = trained_run(tmp_path / HOSTILE, window=16, stride=8, epochs=1)
    assert run(["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(ds.labels),
                "--split", "Validation_Set", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "❌" not in text, text
    assert f"report: {run_dir / 'report.html'}\n" in text
    assert f"-> {run_dir / 'eval_Validation_Set.json'}\n" in text
