"""Issue 21 item 6: Ctrl-C prints one line: what is committed, and the command that continues."""

from __future__ import annotations

import shlex

import pytest
import torch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from expr.train_heads import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("ctrlc"), n_train=3, n_val=2, n_frames=(40, 60),
                                   visual_dim=16, audio_dim=8, text_dim=8)


def test_ctrl_c_in_train_says_what_is_committed_and_how_to_resume(dataset, tmp_path, capsys, monkeypatch):
    import expr.train_heads as heads
    from expr.app.cli import run

    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = ["train", "--cache", str(dataset.cache), "--labels", str(dataset.labels), "--out", str(out),
            "--window", "8", "--stride", "4", "--epochs", "3", "--channels", "8", "--tcn-levels", "1",
            "--heads", "2", "--device", "cpu"]
    real_train = heads.train

    def train_until_ctrl_c(cfg, on_epoch=None, **kw):
        assert on_epoch is not None  # the CLI passes one

        def epoch_then_interrupt(record):
            on_epoch(record)
            if record["epoch"] == 2:  # after epoch 2 was committed
                raise KeyboardInterrupt
        return real_train(cfg, on_epoch=epoch_then_interrupt, **kw)

    monkeypatch.setattr(heads, "train", train_until_ctrl_c)
    assert run(args) == 130
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1
    flat = " ".join((captured.out + captured.err).split())
    assert f"interrupted: 2 of 3 epochs committed in {out} (last.safetensors); continue with: expr train " in flat
    assert "aborted" not in flat
    command = flat.split("continue with: ", 1)[1]
    assert command.endswith("--resume")
    # the printed command continues the run to the end
    monkeypatch.setattr(heads, "train", real_train)
    assert run(shlex.split(command)[1:]) == 0
    assert "resuming" in capsys.readouterr().out
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_ctrl_c_before_the_first_epoch_says_nothing_is_committed(dataset, tmp_path, capsys, monkeypatch):
    import expr.train_heads as heads
    from expr.app.cli import run

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(heads, "train", interrupted)
    out = tmp_path / "run"
    assert run(["train", "--cache", str(dataset.cache), "--labels", str(dataset.labels), "--out", str(out)]) == 130
    flat = " ".join(capsys.readouterr().out.split())
    assert f"interrupted: no epoch committed in {out}; start again with: expr train " in flat
    assert flat.rstrip().endswith("--overwrite")


def test_ctrl_c_in_extract_says_how_many_videos_are_committed(tmp_path, capsys, monkeypatch):
    import expr.extract as extract_run  # the command reaches run_extract through the interface
    from expr.app.cli import run
    from expr.extract.encoder_feed import ExtractEvent

    def fake_run_extract(config, progress):
        progress(ExtractEvent("start", 4, 0, 0, 0.0, 0.0, skipped=2, device="cpu"))
        progress(ExtractEvent("video", 4, 1, 10, 1.0, 1.0, video_id="a"))
        progress(ExtractEvent("video", 4, 2, 10, 1.0, 1.0, video_id="b", error="cannot decode"))
        progress(ExtractEvent("video", 4, 3, 20, 2.0, 2.0, video_id="c"))
        raise KeyboardInterrupt

    monkeypatch.setattr(extract_run, "run_extract", fake_run_extract)
    videos = tmp_path / "videos"
    videos.mkdir()
    out = tmp_path / "feats.zarr"
    assert run(["extract", "--videos", str(videos), "--out", str(out), "--overwrite"]) == 130
    flat = " ".join(capsys.readouterr().out.split())
    assert (f"interrupted: 2 of 4 video(s) committed to {out} by this run (2 were complete before); continue "
            "with the same command, complete videos are skipped: expr extract --videos") in flat
    assert "--overwrite" not in flat.split("complete videos are skipped:")[1]  # it would redo them all


@pytest.mark.parametrize(("before", "nth", "resumes_after"), [
    ("run/best.safetensors", 1, 1),     # epoch 1's set staged with its record, nothing moved yet
    ("run/last.state.json", 2, 2),      # epoch 2's set committed, all but its record moved
    (".saving/last.state.json", 2, 1),  # epoch 2's set staged without its record: discarded
], ids=["epoch-1-staged", "epoch-2-half-moved", "epoch-2-uncommitted"])
def test_ctrl_c_while_saving_says_the_epoch_resume_continues_after(dataset, tmp_path, capsys, monkeypatch,
                                                                   before, nth, resumes_after):
    """A Ctrl-C among an epoch's checkpoint writes leaves a real RUN/.saving/; --resume
    finishes a set whose commit record is in it and discards one without. The line names
    the epoch --resume then continues after (and says --resume, not --overwrite, when only
    the staged set holds it), and the printed command does continue there."""
    import os
    from pathlib import Path

    from expr.app.cli import run

    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = ["train", "--cache", str(dataset.cache), "--labels", str(dataset.labels), "--out", str(out),
            "--window", "8", "--stride", "4", "--epochs", "3", "--channels", "8", "--tcn-levels", "1",
            "--heads", "2", "--device", "cpu"]
    real_replace, seen = os.replace, []

    def replace(src, dst, *a, **kw):  # every checkpoint write and move of a commit is an os.replace
        name = f"{Path(dst).parent.name}/{Path(dst).name}"
        seen.append(name)
        if name == before and seen.count(name) == nth:
            raise KeyboardInterrupt
        return real_replace(src, dst, *a, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", replace)
        assert run(args) == 130
    assert (out / ".saving").is_dir()  # the state this test is about
    flat = " ".join(capsys.readouterr().out.split())
    assert (f"interrupted: {resumes_after} of 3 epochs committed in {out} (last.safetensors); "
            "continue with: expr train ") in flat
    command = flat.split("continue with: ", 1)[1]
    assert command.endswith("--resume")
    assert run(shlex.split(command)[1:]) == 0
    resumed = " ".join(capsys.readouterr().out.split())
    assert f"resuming {out} after epoch {resumes_after} " in resumed
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3 and not (out / ".saving").exists()
