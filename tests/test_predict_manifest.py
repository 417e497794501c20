"""Issue 21 item 3: `expr predict --out` records which run, checkpoint and cache made the
predictions, and refuses to replace another run's predictions without --overwrite."""

from __future__ import annotations

import json

import pytest

from report_helpers import trained_run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    from expr.train_heads import TrainConfig, train

    root = tmp_path_factory.mktemp("manifest")
    ds, run_a = trained_run(root, window=8, stride=4, epochs=1)
    run_b = root / "run_b"
    train(TrainConfig(cache=ds.cache, labels=ds.labels, out=run_b, window=8, stride=4, epochs=1, channels=16,
                      tcn_levels=1, heads=2, device="cpu", seed=7))
    return ds, run_a, run_b


def _predict(run_dir, cache, out, *extra) -> int:
    from expr.app.cli import run

    return run(["predict", "--run", str(run_dir), "--cache", str(cache), "--out", str(out), "--no-timelines",
                "--device", "cpu", *extra])


def test_manifest_names_the_run_checkpoint_and_cache(two_runs, tmp_path, capsys):
    from expr import __version__

    ds, run_a, _ = two_runs
    out = tmp_path / "pred"
    assert _predict(run_a, ds.cache, out, "--checkpoint", "last") == 0
    printed = " ".join(capsys.readouterr().out.split())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["path"] == str(run_a.resolve()) and manifest["run"]["checkpoint"] == "last"
    assert manifest["run"]["epoch"] == 1
    config = json.loads((run_a / "config.json").read_text())
    assert manifest["run"]["trained_on_fingerprint"] == config["cache"]["fingerprint"]
    assert manifest["cache"]["path"] == str(ds.cache.resolve())
    assert manifest["cache"]["backbones"]["visual"]["weights"] is None
    assert manifest["expr"].startswith(f"expr {__version__}") and manifest["written"].endswith("UTC")
    assert manifest["videos"] == len(ds.train_ids) + len(ds.val_ids) and manifest["frames"] > 0
    assert manifest["submission"] == str(out / "submission.csv") and manifest["device"] == "cpu"
    assert f"made by {run_a} (last): {out / 'manifest.json'}" in printed
    assert "RANDOM BACKBONE WEIGHTS" in printed  # the synthetic cache records weights null


def test_another_runs_predictions_need_overwrite(two_runs, tmp_path, capsys):
    ds, run_a, run_b = two_runs
    out = tmp_path / "pred"
    assert _predict(run_a, ds.cache, out) == 0
    assert _predict(run_a, ds.cache, out) == 0  # the same run again: fine
    before = (out / "submission.csv").read_bytes()
    (out / "frames" / "stale.csv").write_text((out / "frames" / f"{ds.val_ids[0]}.csv").read_text())
    capsys.readouterr()
    assert _predict(run_b, ds.cache, out) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"holds the predictions of another run, {run_a.resolve()} (best checkpoint" in err
    assert "pass --overwrite to replace them, or choose another --out" in err
    assert (out / "submission.csv").read_bytes() == before
    assert json.loads((out / "manifest.json").read_text())["run"]["path"] == str(run_a.resolve())
    assert _predict(run_b, ds.cache, out, "--overwrite") == 0
    assert json.loads((out / "manifest.json").read_text())["run"]["path"] == str(run_b.resolve())
    assert not (out / "frames" / "stale.csv").exists()  # run A's per-video files went with it


def test_a_csv_out_gets_its_manifest_beside_it(two_runs, tmp_path, capsys):
    ds, run_a, run_b = two_runs
    out = tmp_path / "sub.csv"
    assert _predict(run_a, ds.cache, out) == 0
    assert json.loads((tmp_path / "sub.manifest.json").read_text())["run"]["path"] == str(run_a.resolve())
    assert _predict(run_b, ds.cache, out) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_predictions_of_unknown_origin_are_not_replaced_silently(two_runs, tmp_path, capsys):
    ds, run_a, _ = two_runs
    out = tmp_path / "old"
    out.mkdir()
    (out / "submission.csv").write_text("made by v0.2\n")
    assert _predict(run_a, ds.cache, out) == 1
    assert "no manifest.json to say which run made them" in " ".join(capsys.readouterr().err.split())
    assert (out / "submission.csv").read_text() == "made by v0.2\n"
    assert _predict(run_a, ds.cache, out, "--overwrite") == 0


def test_overwrite_keeps_what_predict_did_not_write(two_runs, tmp_path, capsys):
    """--overwrite replaces the earlier predictions' per-video files, and only those: a
    frames/ folder of the user's own (ABAW cropped_aligned jpgs, say, the --frames input)
    and other files in timelines/ stay."""
    ds, run_a, run_b = two_runs
    out = tmp_path / "data"
    assert _predict(run_a, ds.cache, out) == 0
    theirs = out / "frames" / "video_1" / "00001.jpg"   # the user's frames, beside predict's CSVs
    theirs.parent.mkdir()
    theirs.write_bytes(b"\xff\xd8\xff jpg")
    notes = out / "frames" / "notes.csv"                 # a CSV that is not a frame table
    notes.write_text("id,comment\nv1,blurry\n")
    drawing = out / "timelines" / "sketch.svg"
    drawing.parent.mkdir(exist_ok=True)
    drawing.write_text("<svg/>")
    stale = out / "frames" / "gone_video.csv"            # a frame table of a video run B does not predict
    stale.write_text((out / "frames" / f"{ds.val_ids[0]}.csv").read_text())
    assert _predict(run_b, ds.cache, out, "--overwrite") == 0
    assert theirs.read_bytes() == b"\xff\xd8\xff jpg"
    assert notes.read_text() == "id,comment\nv1,blurry\n" and drawing.read_text() == "<svg/>"
    assert not stale.exists()  # run A's per-video files went with its submission
    assert (out / "frames" / f"{ds.val_ids[0]}.csv").is_file()


def test_overwrite_leaves_a_linked_frames_folder_alone(two_runs, tmp_path):
    ds, run_a, run_b = two_runs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.csv").write_text("frame,time\n")
    out = tmp_path / "linked"
    out.mkdir()
    (out / "submission.csv").write_text("made by v0.2\n")
    (out / "timelines").symlink_to(elsewhere)
    assert _predict(run_b, ds.cache, out, "--overwrite") == 0
    assert (elsewhere / "keep.csv").read_text() == "frame,time\n"


def test_an_interrupted_overwrite_never_leaves_the_old_runs_manifest(two_runs, tmp_path, monkeypatch):
    """The per-video CSVs and timelines take the longest; a Ctrl-C among them must not leave
    run B's submission.csv beside a manifest.json that still names run A."""
    from expr.evaluate import PredictConfig
    from expr.evaluate import prediction

    ds, run_a, run_b = two_runs
    out = tmp_path / "pred"
    assert _predict(run_a, ds.cache, out) == 0

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prediction, "_write_per_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prediction.predict_run(PredictConfig(run=run_b, out=out, cache=ds.cache, timelines=False, device="cpu",
                                             overwrite=True))
    made_by = json.loads((out / "manifest.json").read_text())["run"]["path"]
    assert made_by == str(run_b.resolve())  # the submission now there is run B's


def _ids_file(path, ids):
    path.write_text("".join(f"{vid}\n" for vid in ids))
    return path


def test_a_rerun_of_fewer_videos_leaves_only_their_per_video_files(two_runs, tmp_path):
    """The same run again into the same folder (no --overwrite needed) for a subset of the
    videos: the folder then holds exactly that subset's CSVs and timelines, as its
    submission and manifest say; a user's own files in frames/ and timelines/ stay."""
    ds, run_a, _ = two_runs
    out = tmp_path / "pred"
    three, one = (ds.train_ids + ds.val_ids)[:3], ds.val_ids[:1]
    assert _predict(run_a, ds.cache, out, "--ids", str(_ids_file(tmp_path / "three.txt", three)),
                    "--timelines") == 0
    assert sorted(p.stem for p in (out / "frames").glob("*.csv")) == sorted(three)
    assert sorted(p.stem for p in (out / "timelines").glob("*.png")) == sorted(three)
    notes = out / "frames" / "notes.csv"                     # the user's: a CSV that is not a frame table
    notes.write_text("id,comment\nv1,blurry\n")
    theirs = out / "frames" / "video_1" / "00001.jpg"      # the user's frames, beside predict's CSVs
    theirs.parent.mkdir()
    theirs.write_bytes(b"\xff\xd8\xff jpg")
    assert _predict(run_a, ds.cache, out, "--ids", str(_ids_file(tmp_path / "one.txt", one)), "--timelines") == 0
    assert sorted(p.name for p in (out / "frames").glob("*.csv")) == sorted([f"{one[0]}.csv", "notes.csv"])
    assert [p.stem for p in (out / "timelines").glob("*.png")] == one
    submitted = {row.split("/")[0] for row in (out / "submission.csv").read_text().splitlines()[1:]}
    assert submitted == set(one) and json.loads((out / "manifest.json").read_text())["videos"] == 1
    assert notes.read_text() == "id,comment\nv1,blurry\n" and theirs.read_bytes() == b"\xff\xd8\xff jpg"


def test_a_rerun_without_timelines_removes_the_earlier_ones(two_runs, tmp_path):
    """--no-timelines on a re-run: the earlier run's PNGs drew other predictions than the
    CSVs now beside them, so they go too."""
    ds, run_a, _ = two_runs
    out = tmp_path / "pred"
    assert _predict(run_a, ds.cache, out, "--timelines") == 0
    assert any((out / "timelines").glob("*.png"))
    assert _predict(run_a, ds.cache, out) == 0      # _predict passes --no-timelines
    assert not (out / "timelines").exists()
    assert len(list((out / "frames").glob("*.csv"))) == len(ds.train_ids) + len(ds.val_ids)


def test_a_rerun_killed_before_its_submission_keeps_the_earlier_files(two_runs, tmp_path, monkeypatch):
    """The stale files go only after the new submission and manifest are in place: a kill
    before that leaves the earlier folder whole (its submission still names every CSV)."""
    from expr.evaluate import PredictConfig
    from expr.evaluate import prediction

    ds, run_a, _ = two_runs
    out = tmp_path / "pred"
    assert _predict(run_a, ds.cache, out) == 0
    before = sorted((out / "frames").glob("*.csv"))

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prediction, "write_submission", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prediction.predict_run(PredictConfig(run=run_a, out=out, cache=ds.cache, timelines=False, device="cpu",
                                             ids=_ids_file(tmp_path / "one.txt", ds.val_ids[:1])))
    assert sorted((out / "frames").glob("*.csv")) == before
