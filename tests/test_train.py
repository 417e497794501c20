"""`expr train` end to end on the synthetic cache: learning, outputs, resume, run-dir
rules, ablation switches, streaming, reuse of a preloaded bank, DDP, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from sklearn.metrics import f1_score

from expr.app.cli import app, run
from expr.core.errors import ConfigError
from expr.core.devices import Dist, resolve_device
from expr.train_heads import (TrainConfig, class_weights, load_bank, load_run, load_split, lr_at, macro_f1_accuracy,
                              bank_windows, WindowSpec, predict_logits, read_metrics, train, with_sources,
                              write_synthetic_dataset)
from expr.train_heads.loop import pick_device
from train_helpers import SMALL, train_config



pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("train"), visual_dim=128, audio_dim=96, text_dim=16)


def config(ds, out, **kw) -> TrainConfig:
    return train_config(ds, out, SMALL, **{"epochs": 2, **kw})


@pytest.fixture(scope="module")
def learned(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "learned"
    messages = []
    result = train(config(ds, out, epochs=4), on_message=messages.append)
    return result, messages


def test_synthetic_cache_is_learned_to_macro_f1_09(learned):
    result, _ = learned
    assert result.best_val_f1 >= 0.9
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_run_directory_contents(learned, ds):
    result, _ = learned
    run_dir = result.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.safetensors", "config.json", "last.optim.safetensors", "last.safetensors",
        "last.state.json", "metrics.jsonl"]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert set(cfg["train"]) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert cfg["train"]["window"] == 16 and cfg["train"]["cache"] == str(ds.cache)
    assert cfg["cache"]["backbones"]["visual"]["dim"] == 128 and len(cfg["cache"]["fingerprint"]) == 16
    assert cfg["head"]["visual_dim"] == 128 and cfg["head"]["audio_dim"] == 96 and cfg["head"]["text_dim"] == 16
    assert cfg["data"]["train_videos"] == 8 and cfg["data"]["val_videos"] == 4
    assert len(cfg["data"]["class_weights"]) == 8
    metrics = read_metrics(run_dir)
    assert metrics == json.loads(json.dumps(result.history))
    assert {"epoch", "lr", "loss", "ce", "contrastive", "val_f1", "val_acc", "seconds"} <= set(metrics[0])


def test_best_checkpoint_reproduces_its_val_f1(learned, ds):
    result, _ = learned
    loaded = load_run(result.run_dir, "best")
    assert not loaded.model.training
    assert loaded.train_config.window == 16 and loaded.head_config.channels == 32
    assert loaded.meta["epoch"] == result.best_epoch
    assert loaded.meta["cache"]["fingerprint"] == json.loads((result.run_dir / "config.json").read_text())["cache"]["fingerprint"]
    bank = load_bank(ds.cache, ds.val_ids, load_split(ds.labels, "Validation_Set"))
    win = bank_windows(bank, WindowSpec(16, 4))
    pred = predict_logits(loaded.model, with_sources(bank, win), win.video_idx, win.end_frame, 16).argmax(1)
    f1 = f1_score(win.target.numpy(), pred.numpy(), average="macro", labels=range(8))
    assert f1 == pytest.approx(result.best_val_f1, abs=1e-9)


def test_resume_equals_an_uninterrupted_run(ds, tmp_path):
    full = train(config(ds, tmp_path / "full", epochs=3))

    class Stop(Exception):
        pass

    def stop_after_2(record):
        if record["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(config(ds, tmp_path / "cut", epochs=3), on_epoch=stop_after_2)
    assert len(read_metrics(tmp_path / "cut")) == 2
    resumed = train(config(ds, tmp_path / "cut", epochs=3, resume=True))

    def strip(history):
        return [{k: v for k, v in r.items() if k not in ("seconds", "data_seconds")} for r in history]

    assert strip(resumed.history) == strip(full.history)
    a, b = load_run(tmp_path / "full", "last").model.state_dict(), load_run(tmp_path / "cut", "last").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_reads_the_runs_config_once(ds, tmp_path, monkeypatch):
    # the options check, the provenance checks and the resumed record all use one reading
    from expr.train_heads.run_dir import RunDir

    class Stop(Exception):
        pass

    def stop(record):
        raise Stop

    with pytest.raises(Stop):
        train(config(ds, tmp_path / "r", epochs=2), on_epoch=stop)
    reads = []
    real = RunDir.read_config
    monkeypatch.setattr(RunDir, "read_config", lambda self: reads.append(self.path) or real(self))
    resumed = train(config(ds, tmp_path / "r", epochs=2, resume=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert reads == [tmp_path / "r"]


def test_resume_refuses_other_options(learned, ds):
    with pytest.raises(ConfigError, match="--lr 0.001 \\(now 0.01\\)"):
        train(config(ds, learned[0].run_dir, epochs=4, lr=1e-2, resume=True))
    # --epochs is the cosine T_max: a different value would change every epoch's lr
    with pytest.raises(ConfigError, match="--epochs 4 \\(now 6\\)"):
        train(config(ds, learned[0].run_dir, epochs=6, resume=True))


def test_resume_of_a_moved_run_folder(ds, tmp_path):
    # --out names the run being resumed: another spelling of it (moved folder, absolute vs
    # relative path) is the same run, not "other options".
    train(config(ds, tmp_path / "before", epochs=1))
    (tmp_path / "before").rename(tmp_path / "after")
    resumed = train(config(ds, tmp_path / "after", epochs=1, resume=True))
    assert resumed.run_dir == tmp_path / "after" and [r["epoch"] for r in resumed.history] == [1]


def test_non_empty_run_dir_needs_overwrite(learned, ds, tmp_path):
    with pytest.raises(ConfigError, match="not empty; pass --overwrite"):
        train(config(ds, learned[0].run_dir))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an expr run"):
        train(config(ds, foreign, overwrite=True))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_overwrite_replaces_a_run_with_its_evaluation_reports(ds, tmp_path):
    run_dir = tmp_path / "evaluated"
    train(config(ds, run_dir, epochs=1))
    # what `expr evaluate` leaves (--overwrite checks the content, not only the names)
    (run_dir / "eval_Validation_Set.json").write_text('{"protocols": {}}')
    (run_dir / "confusion_Validation_Set_window.png").write_bytes(b"\x89PNG\r\n\x1a\n...")
    train(config(ds, run_dir, epochs=1, overwrite=True))
    assert not (run_dir / "eval_Validation_Set.json").exists()  # stale reports of the old run go
    assert (run_dir / "best.safetensors").exists()


def test_overwrite_replaces_a_run(ds, tmp_path):
    train(config(ds, tmp_path / "r", epochs=2))
    result = train(config(ds, tmp_path / "r", epochs=1, overwrite=True))
    assert len(read_metrics(tmp_path / "r")) == 1 and len(result.history) == 1


@pytest.mark.parametrize("switch", [dict(no_audio=True), dict(no_tcn=True), dict(fusion="v2a"),
                                    dict(fusion="a2v"), dict(fusion="concat"), dict(contrastive_weight=0.0),
                                    dict(weight_norm=True)])
def test_ablation_switches_train(ds, tmp_path, switch):
    result = train(config(ds, tmp_path / "abl", epochs=1, **switch))
    loaded = load_run(result.run_dir, "last")
    head = loaded.head_config
    assert head.use_audio == (not switch.get("no_audio", False))
    assert head.use_tcn == (not switch.get("no_tcn", False))
    assert head.fusion == switch.get("fusion", "bica")
    assert head.weight_norm == switch.get("weight_norm", False)
    rec = result.history[0]
    assert np.isfinite(rec["loss"]) and 0 <= rec["val_f1"] <= 1
    if "contrastive_weight" in switch:
        assert rec["loss"] == pytest.approx(rec["ce"])
    else:
        assert rec["loss"] == pytest.approx(rec["ce"] + 0.1 * rec["contrastive"])


def test_streamed_chunks_match_the_preloaded_validation(ds, tmp_path, learned):
    result = train(config(ds, tmp_path / "none", epochs=1, preload="none", chunk_frames=300))
    cpu = read_metrics(learned[0].run_dir)[0]
    assert result.history[0]["val_windows"] == cpu["val_windows"]
    cfg = json.loads((tmp_path / "none" / "config.json").read_text())
    assert cfg["data"]["train_windows"] == json.loads((learned[0].run_dir / "config.json").read_text())["data"]["train_windows"]
    # the model of the streamed run, evaluated on a preloaded bank, gives its recorded F1
    loaded = load_run(tmp_path / "none", "last")
    bank = load_bank(ds.cache, ds.val_ids, load_split(ds.labels, "Validation_Set"))
    win = bank_windows(bank, WindowSpec(16, 4))
    pred = predict_logits(loaded.model, with_sources(bank, win), win.video_idx, win.end_frame, 16).argmax(1)
    assert f1_score(win.target, pred, average="macro", labels=range(8)) == pytest.approx(result.history[0]["val_f1"])


def test_preloaded_banks_give_the_same_run(ds, tmp_path):
    from_cache = train(config(ds, tmp_path / "a", epochs=1))
    bank = load_bank(ds.cache, ds.train_ids, load_split(ds.labels, "Train_Set"))
    val_bank = load_bank(ds.cache, ds.val_ids, load_split(ds.labels, "Validation_Set"))
    from_bank = train(config(ds, tmp_path / "b", epochs=1), bank=bank, val_bank=val_bank)
    assert from_bank.history[0]["loss"] == from_cache.history[0]["loss"]
    assert from_bank.best_val_f1 == from_cache.best_val_f1


def test_missing_entries_are_reported(ds, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(ds.labels, labels)
    shutil.copy(labels / "Train_Set" / "train_000.txt", labels / "Train_Set" / "ghost_1.txt")
    (labels / "Validation_Set" / "val_003.txt").unlink()
    lines = (labels / "Train_Set" / "train_001.txt").read_text().splitlines()
    (labels / "Train_Set" / "train_001.txt").write_text("\n".join(lines[:-10]) + "\n")
    messages = []
    train(config(ds, tmp_path / "r", labels=labels, epochs=1), on_message=messages.append)
    assert "label files without a cache entry (skipped): 1 (ghost_1)" in messages
    assert "cache entries without labels (unused): 1 (val_003)" in messages
    assert any(m.startswith("train_001: ") and "labels but" in m for m in messages)


def test_epoch_loss_is_the_mean_of_the_step_losses(ds, tmp_path):
    steps = []
    result = train(config(ds, tmp_path / "r", epochs=1), on_step=lambda n, loss: steps.append((n, loss)))
    assert [n for n, _ in steps] == list(range(1, len(steps) + 1))
    assert result.history[0]["loss"] == pytest.approx(np.mean([loss for _, loss in steps]), rel=1e-12)
    assert isinstance(result.history[0]["ce"], float)


def test_lr_schedule_is_cosine_to_min_lr():
    cfg = TrainConfig(cache=Path("c"), labels=Path("l"), out=Path("o"), epochs=30)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr), T_max=cfg.epochs, eta_min=cfg.min_lr)
    for epoch in range(cfg.epochs):
        assert lr_at(epoch, cfg) == pytest.approx(sched.get_last_lr()[0], rel=1e-9)
        sched.optimizer.step()
        sched.step()
    assert lr_at(0, cfg) == 1e-5 and lr_at(30, cfg) == pytest.approx(1e-6)


def test_class_weights_and_metric():
    w = class_weights(torch.tensor([0, 0, 0, 1, 2, 2]))
    assert w[:3].tolist() == pytest.approx([6 / 24, 6 / 8, 6 / 16]) and (w[3:] == 0).all()
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 7, 200), rng.integers(0, 8, 200)  # class 7 never true
    confusion = torch.bincount(torch.tensor(y * 8 + p), minlength=64).reshape(8, 8)
    f1, acc = macro_f1_accuracy(confusion)
    assert f1 == pytest.approx(f1_score(y, p, average="macro", labels=range(8)))
    assert acc == pytest.approx((y == p).mean())


def test_unknown_device_is_a_config_error(ds, tmp_path):
    with pytest.raises(ConfigError, match="'gpu0' is not a device"):
        train(config(ds, tmp_path / "r", device="gpu0"))
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("tpu:x")


def test_each_ddp_rank_takes_and_selects_its_own_gpu(monkeypatch, ds, tmp_path):
    # NCCL collectives run on the CURRENT CUDA device: ranks must set it, or all meet on cuda:0.
    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    rank1 = Dist(rank=1, world=2, local_rank=1)
    for name in ("auto", "cuda"):
        assert pick_device(config(ds, tmp_path, device=name), rank1) == torch.device("cuda:1")
    assert selected == [torch.device("cuda:1")] * 2
    assert pick_device(config(ds, tmp_path, device="cuda"), Dist()) == torch.device("cuda:0")
    assert len(selected) == 2  # one process: nothing to select


def test_cli_options_mirror_train_config():
    command = typer.main.get_group(app).commands["train"]
    assert {p.name for p in command.params} == {f.name for f in dataclasses.fields(TrainConfig)}
    defaults = {p.name: p.default for p in command.params}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            assert getattr(defaults[f.name], "value", defaults[f.name]) == f.default, f.name


def test_cli_end_to_end_and_errors(ds, tmp_path, capsys):
    args = ["train", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(tmp_path / "cli"),
            "--window", "16", "--stride", "8", "--epochs", "1", "--channels", "16", "--tcn-levels", "2",
            "--heads", "2", "--device", "cpu"]
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "val macro-F1" in out and "best.safetensors" in out
    assert (tmp_path / "cli" / "best.safetensors").is_file()
    assert run(args) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad"
    shutil.copytree(ds.labels, bad)
    (bad / "Train_Set" / "train_002.txt").write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n0\n12\n")
    assert run([*args[:3], "--labels", str(bad), "--out", str(tmp_path / "cli2"), *args[7:]]) == 1
    assert f"{bad / 'Train_Set' / 'train_002.txt'}:3: label 12 is outside -1..7" in capsys.readouterr().err
    assert run([*args, "--overwrite", "--fusion", "sideways"]) == 2  # click rejects the choice
    assert run([*args, "--overwrite", "--channels", "30", "--heads", "4"]) == 1
    assert "divisible by heads" in capsys.readouterr().err


DDP_SCRIPT = """
import sys, torch
from expr.train_heads import TrainConfig, train
torch.set_num_threads(1)
cache, labels, out = sys.argv[1:4]
train(TrainConfig(cache=cache, labels=labels, out=out, window=16, stride=4, epochs=1, channels=16,
                  tcn_levels=2, heads=2, lr=1e-3, device="cpu"))
"""


@pytest.mark.slow
def test_ddp_two_cpu_ranks_with_gloo(ds, tmp_path, learned):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(script), str(ds.cache), str(ds.labels), str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_metrics(tmp_path / "ddp")
    assert len(metrics) == 1
    # every validation window counted once across the two ranks
    assert metrics[0]["val_windows"] == read_metrics(learned[0].run_dir)[0]["val_windows"]
    assert load_run(tmp_path / "ddp", "best").model is not None


def test_train_on_a_cache_made_by_expr_extract(tmp_path, capsys):
    import media_fixtures as media

    from expr.train_heads.labels import HEADER

    videos, labels = tmp_path / "videos", tmp_path / "labels"
    splits = {"Train_Set": [("a", 25.0), ("b", 30.0), ("c", 25.0)], "Validation_Set": [("d", 30.0), ("e", 25.0)]}
    for split, items in splits.items():
        (labels / split).mkdir(parents=True)
        for i, (vid, fps) in enumerate(items):
            media.make_video(videos / f"{vid}.mp4", n_frames=24, fps=fps, audio_rate=None if vid == "c" else 16000)
            values = [(i + k // 8) % 8 for k in range(24)]
            (labels / split / f"{vid}.txt").write_text(HEADER + "\n" + "\n".join(map(str, values)) + "\n")
    cache = tmp_path / "feats.zarr"
    assert run(["extract", "--videos", str(videos), "--out", str(cache), "--visual-model", "test-tiny-clip",
                "--audio-model", "test-tiny-wav2vec2", "--workers", "0", "--batch-size", "8"]) == 0
    capsys.readouterr()
    assert run(["train", "--cache", str(cache), "--labels", str(labels), "--out", str(tmp_path / "run"),
                "--window", "8", "--stride", "4", "--epochs", "2", "--channels", "16", "--tcn-levels", "2",
                "--heads", "2", "--device", "cpu"]) == 0
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) == 2 and all(np.isfinite(m["loss"]) for m in metrics)
    assert metrics[0]["val_windows"] == 2 * 5  # ends 7, 11, 15, 19, 23 of two 24-frame videos
    loaded = load_run(tmp_path / "run")
    assert loaded.meta["cache"]["backbones"]["visual"]["name"] == "test-tiny-clip"
