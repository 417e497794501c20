"""`expr evaluate` end to end on a synthetic cache, the per-frame protocol, and bad input."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import typer

from expr.app.cli import app, run
from expr.evaluate import AblateConfig, EvaluateConfig
from expr.evaluate.protocols import causal_window
from expr.app.pipeline import PredictVideosConfig

WINDOW = 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic dataset and a 2-epoch run of a small head on it."""
    from expr.train_heads import TrainConfig, train, write_synthetic_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval")
    ds = write_synthetic_dataset(root, n_train=4, n_val=2, n_frames=(80, 120), visual_dim=32, audio_dim=16,
                                 text_dim=16)
    cfg = TrainConfig(cache=ds.cache, labels=ds.labels, out=root / "run", window=WINDOW, stride=8, epochs=2,
                      channels=16, tcn_levels=2, heads=2, lr=1e-3, device="cpu")
    train(cfg)
    return ds, root / "run"


def _params(command: str) -> set[str]:
    click_app = typer.main.get_group(app)
    return {p.name for p in click_app.commands[command].params}


@pytest.mark.parametrize("command, config", [("evaluate", EvaluateConfig), ("predict", PredictVideosConfig),
                                             ("ablate", AblateConfig)])
def test_cli_options_mirror_config_fields(command, config):
    assert _params(command) - {"help"} == {f.name for f in dataclasses.fields(config)}


def _evaluate(ds, run_dir, *extra):
    return run(["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(ds.labels),
                "--device", "cpu", *extra])


def _annotated(ds, split="Validation_Set"):
    from expr.train_heads import load_split

    return load_split(ds.labels, split)


def test_evaluate_end_to_end(trained, capsys):
    ds, run_dir = trained
    assert _evaluate(ds, run_dir) == 0
    out = capsys.readouterr().out
    assert "window-level (reference protocol" in out and "per-frame (official ABAW metric)" in out
    assert "confusion (rows: true class" in out
    data = json.loads((run_dir / "eval_Validation_Set.json").read_text())
    w, f = data["protocols"]["window"], data["protocols"]["per_frame"]
    labels = _annotated(ds)
    # per-frame: exactly the annotated frames (label != -1) of the split, each once
    assert f["n"] == sum(int((lab != -1).sum()) for lab in labels.values())
    assert sum(f["support"]) == f["n"] and np.sum(f["confusion"]) == f["n"]
    assert f["support"] == np.bincount(np.concatenate([l[l != -1] for l in labels.values()]), minlength=8).tolist()
    # window-level: the run's stride/target windows, and it reproduces training's own val score
    from expr.train_heads import read_metrics

    best = max(read_metrics(run_dir), key=lambda r: r["val_f1"])
    assert (w["window"], w["stride"], w["target"]) == (WINDOW, 8, "last")
    assert w["n"] == best["val_windows"]
    assert w["macro_f1"] == pytest.approx(best["val_f1"], abs=1e-6)
    assert f["macro_f1"] == pytest.approx(np.mean(f["f1"]))
    for key in ("window", "per_frame"):
        assert (run_dir / f"confusion_Validation_Set_{key}.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_smoothing_is_recorded_and_changes_predictions(trained):
    ds, run_dir = trained
    assert _evaluate(ds, run_dir, "--smooth", "9", "--smooth-mode", "mean", "--checkpoint", "last") == 0
    f = json.loads((run_dir / "eval_Validation_Set.json").read_text())["protocols"]["per_frame"]
    assert (f["smooth"], f["smooth_mode"]) == (9, "mean")
    assert f["n"] == sum(int((lab != -1).sum()) for lab in _annotated(ds).values())


class _Probe(torch.nn.Module):
    """Logits that expose the window: [first frame's feature 0, last frame's feature 0, 0...]."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # predict_logits reads the device from here

    def forward(self, visual, audio, audio_mask):
        logits = torch.zeros(visual.shape[0], 8)
        logits[:, 0] = visual[:, 0, 0]
        logits[:, 1] = visual[:, -1, 0]
        return logits


def test_per_frame_protocol_one_causal_window_per_annotated_frame_padded_at_start(trained):
    from expr.evaluate.protocols import annotated_frames
    from expr.train_heads import frame_probabilities, load_bank

    ds, _ = trained
    labels = _annotated(ds)
    bank = load_bank(ds.cache, list(labels), labels)
    sel = annotated_frames(labels, bank.video_ids, bank.n_frames.tolist())
    probs = frame_probabilities(_Probe(), bank, WINDOW, sel.frames, batch_size=7, no_face="raw")
    for v, (p, frames) in enumerate(zip(probs, sel.frames)):
        assert p.shape == (len(frames), 8)  # one prediction per annotated frame
        log_p = np.log(p.astype(np.float64))
        first, last = log_p[:, 0] - log_p[:, 2], log_p[:, 1] - log_p[:, 2]
        feats = bank.visual[bank.video_slice(v), 0].float().numpy()
        expected_first = np.array([feats[causal_window(e, WINDOW)[0]] for e in frames])
        np.testing.assert_allclose(last, feats[frames], atol=1e-3)
        np.testing.assert_allclose(first, expected_first, atol=1e-3)
        early = frames < WINDOW - 1  # windows that start before frame 0 repeat frame 0
        assert early.any()
        np.testing.assert_allclose(first[early], feats[0], atol=1e-3)
    # the default, --no-face fill: a no-face frame <= 5 after a face frame shows that face frame
    filled = frame_probabilities(_Probe(), bank, WINDOW, sel.frames, batch_size=7)
    n_filled = 0
    for v, (p, frames) in enumerate(zip(filled, sel.frames)):
        face = bank.frame_mask[bank.video_slice(v)].numpy()
        shown, last = np.arange(len(face)), None
        for t, has_face in enumerate(face):
            last = t if has_face else last
            if not has_face and last is not None and t - last <= 5:
                shown[t] = last
        n_filled += int((shown[frames] != frames).sum())
        feats = bank.visual[bank.video_slice(v), 0].float().numpy()
        last_logit = np.log(p[:, 1].astype(np.float64)) - np.log(p[:, 2].astype(np.float64))
        np.testing.assert_allclose(last_logit, feats[shown[frames]], atol=1e-3)
    assert n_filled > 0


# -- bad input: one clear line, exit 1 ---------------------------------------------------------------
def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "Traceback" not in err
    return " ".join(err.split())


def test_run_dir_without_checkpoint(trained, tmp_path, capsys):
    ds, run_dir = trained
    empty = tmp_path / "norun"
    empty.mkdir()
    shutil.copy(run_dir / "config.json", empty / "config.json")
    assert _evaluate(ds, empty) == 1
    assert "no best.safetensors checkpoint" in _error(capsys)
    assert _evaluate(ds, tmp_path / "missing") == 1
    assert "no such run directory" in _error(capsys)


def test_cache_with_other_backbones_is_refused(trained, tmp_path, capsys):
    from expr.train_heads.synthetic import write_synthetic_dataset

    ds, run_dir = trained
    other = write_synthetic_dataset(tmp_path, n_train=1, n_val=2, n_frames=(40, 40), visual_dim=24,
                                    audio_dim=16, text_dim=16)
    assert run(["evaluate", "--run", str(run_dir), "--cache", str(other.cache), "--labels", str(ds.labels),
                "--device", "cpu"]) == 1
    err = _error(capsys)
    # the differing key, not both whole records (778 characters of JSON in issue 22)
    assert f"its visual features are not the kind run {run_dir} was trained on: dim 24 (the run's: 32); " in err
    assert len(err) < 400


def test_labels_for_videos_not_in_cache(trained, tmp_path, capsys):
    ds, run_dir = trained
    labels = tmp_path / "labels"
    shutil.copytree(ds.labels, labels)
    shutil.copy(labels / "Validation_Set" / "val_000.txt", labels / "Validation_Set" / "ghost_video.txt")
    assert run(["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(labels),
                "--device", "cpu"]) == 1
    assert "1 video(s) not in the cache (ghost_video)" in _error(capsys)


def test_empty_split_and_unannotated_split(trained, tmp_path, capsys):
    ds, run_dir = trained
    labels = tmp_path / "labels"
    (labels / "Validation_Set").mkdir(parents=True)
    assert run(["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(labels),
                "--device", "cpu"]) == 1
    assert "no .txt annotation files" in _error(capsys)
    n = len(_annotated(ds)["val_000"])
    (labels / "Validation_Set" / "val_000.txt").write_text(
        "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n" + "-1\n" * n)
    assert run(["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(labels),
                "--device", "cpu"]) == 1
    assert "no annotated frames (every label is -1)" in _error(capsys)


def test_bad_options(trained, capsys):
    ds, run_dir = trained
    assert _evaluate(ds, run_dir, "--smooth", "-1") == 2  # typer range check
    assert "--smooth" in capsys.readouterr().err
    assert _evaluate(ds, run_dir, "--device", "tpu") == 1
    assert "--device 'tpu'" in _error(capsys)
