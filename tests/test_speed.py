"""The fast paths of issue 12 on CPU: the training step's switch (--compile), staged
batches, sync-free progress and inference give the same numbers as the plain paths."""

from __future__ import annotations

import pytest
import torch

from expr.train_heads import (BatchFeeder, TrainConfig, WindowSpec, bank_windows, gather, load_bank, load_run,
                              load_split, predict_logits, read_metrics, train, write_synthetic_dataset)
from expr.train_heads import step as step_module
from expr.train_heads.step import StepReporter, compile_mode, optimizer_flags
from train_helpers import SMALL, small_dataset, train_config



pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return small_dataset(tmp_path_factory, "speed")


def config(ds, out, **kw) -> TrainConfig:
    return train_config(ds, out, SMALL, **{"epochs": 1, **kw})


def strip(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "data_seconds")} for r in history]


def same_weights(run_a, run_b) -> bool:
    a, b = load_run(run_a, "last").model.state_dict(), load_run(run_b, "last").model.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_switch_picks_compile_and_adamw_per_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode("auto", cpu, 1) is None and compile_mode("off", cuda, 1) is None
    assert compile_mode("auto", cuda, 1) == "reduce-overhead"  # CUDA graphs
    assert compile_mode("on", cuda, 1) == "default" == compile_mode("auto", cuda, 2)  # no graphs; DDP: none
    assert compile_mode("on", cpu, 1) == "default"
    assert optimizer_flags("auto", cuda) == {"foreach": None, "fused": True}
    assert optimizer_flags("auto", cpu) == {"foreach": True, "fused": None}
    assert optimizer_flags("off", cuda) == {"foreach": None, "fused": None}  # torch's defaults


def test_fast_epoch_equals_the_plain_epoch_bit_for_bit(ds, tmp_path):
    # On CPU the fast path is eager + foreach AdamW, which computes exactly what the default
    # per-tensor AdamW does: equality, not a tolerance.
    fast = train(config(ds, tmp_path / "fast", compile="auto"))
    plain = train(config(ds, tmp_path / "plain", compile="off"))
    assert strip(fast.history) == strip(plain.history)
    assert same_weights(tmp_path / "fast", tmp_path / "plain")


def test_resume_with_the_fast_path_is_bit_identical(ds, tmp_path):
    full = train(config(ds, tmp_path / "full", epochs=3, compile="auto"))

    class Stop(Exception):
        pass

    def stop_after_1(record):
        if record["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):  # cut under the plain path: --compile is free to change on --resume
        train(config(ds, tmp_path / "cut", epochs=3, compile="off"), on_epoch=stop_after_1)
    resumed = train(config(ds, tmp_path / "cut", epochs=3, compile="auto", resume=True))
    assert strip(resumed.history) == strip(full.history) == strip(read_metrics(tmp_path / "cut"))
    assert same_weights(tmp_path / "full", tmp_path / "cut")


def test_a_failing_compile_falls_back_to_the_eager_step(ds, tmp_path, monkeypatch):
    def broken_compile(fn, **kwargs):
        def compiled(*args):
            raise RuntimeError("no C++ compiler\nsecond line")
        return compiled

    monkeypatch.setattr(step_module.torch, "compile", broken_compile)
    messages = []
    fallback = train(config(ds, tmp_path / "on", compile="on"), on_message=messages.append)
    failed = [m for m in messages if "torch.compile of the training step failed" in m]
    assert failed == ["torch.compile of the training step failed (RuntimeError: no C++ compiler); "
                      "continuing without it (--compile off skips the attempt)"]
    plain = train(config(ds, tmp_path / "off", compile="off"))
    assert strip(fallback.history) == strip(plain.history)


def test_step_losses_reach_on_step_in_batches_and_in_order():
    seen = []
    reporter = StepReporter(lambda n, loss: seen.append((n, loss)), torch.device("cpu"), every=4)
    for k in range(10):
        reporter.add(torch.tensor(k + 0.5))
        assert len(seen) == 4 * ((k + 1) // 4)  # nothing read back between flushes
    reporter.flush()
    assert seen == [(k + 1, k + 0.5) for k in range(10)]
    StepReporter(None, torch.device("cpu")).add(torch.tensor(1.0))  # no callback: no buffer use


@pytest.fixture(scope="module")
def bank(ds):
    return load_bank(ds.cache, ds.train_ids, load_split(ds.labels, "Train_Set"))


def test_staged_batches_equal_gathered_ones(bank):
    window = 16
    feed = BatchFeeder(bank, window, torch.device("cpu"), max_batch=8, stage=True)
    assert feed.staged and not feed.slots[0].visual.is_pinned()
    gen = torch.Generator().manual_seed(0)
    video_idx = torch.randint(0, len(bank), (40,), generator=gen)
    # ends from 0 on: per-frame windows that repeat the first frame and start before the audio
    end_frame = torch.cat([torch.arange(8), torch.randint(window, 140, (32,), generator=gen)])
    staged = [feed(video_idx[i:i + 8], end_frame[i:i + 8]) for i in range(0, 40, 8)]  # > SLOTS rounds
    for i, got in zip(range(0, 40, 8), staged):  # compared after all: no batch overwrote another
        want = gather(bank, video_idx[i:i + 8], end_frame[i:i + 8], window)
        assert got.visual.dtype == torch.float32 and torch.equal(got.visual, want.visual)
        assert torch.equal(got.audio, want.audio) and torch.equal(got.audio_mask, want.audio_mask)
    assert not BatchFeeder(bank, window, torch.device("cpu"), 8).staged  # CPU -> CPU: the plain gather
    with pytest.raises(ValueError, match="exceeds the staging size 8"):
        feed(video_idx[:9], end_frame[:9])


def test_batches_from_precomputed_rows_equal_gathered_ones(bank):
    # Training computes every window's bank rows once per chunk (data.window_rows) and a batch
    # only looks them up: the same tensors as gathering each batch from scratch.
    from expr.train_heads.data import select_rows, window_rows
    from expr.train_heads.windows import with_sources
    windows = bank_windows(bank, WindowSpec(16, 4))
    src = with_sources(bank, windows)  # reference windows: filled frames read their source rows
    rows = window_rows(src, windows.video_idx, windows.end_frame, 16)
    idx = torch.randperm(len(windows), generator=torch.Generator().manual_seed(1))[:24]
    want = gather(src, windows.video_idx[idx], windows.end_frame[idx], 16)
    for staged in (False, True):
        got = BatchFeeder(src, 16, torch.device("cpu"), 24, stage=staged).take(select_rows(rows, idx))
        assert torch.equal(got.visual, want.visual) and torch.equal(got.audio, want.audio)
        assert torch.equal(got.audio_mask, want.audio_mask)


def test_inference_equals_the_plain_forward_exactly_on_cpu(bank, tmp_path, ds):
    result = train(config(ds, tmp_path / "r"))
    model = load_run(result.run_dir, "last").model
    win = bank_windows(bank, WindowSpec(16, 4))
    got = predict_logits(model, bank, win.video_idx, win.end_frame, 16, batch_size=32)
    with torch.no_grad():  # the implementation before issue 12: gather, forward, per batch
        want = torch.cat([model(*vars(gather(bank, win.video_idx[i], win.end_frame[i], 16)).values())
                          for i in torch.arange(len(win)).split(32)])
    assert torch.equal(got, want)


@pytest.mark.slow
def test_compiled_step_on_cpu_matches_eager_within_tolerance(ds, tmp_path):
    # ~2-4 min on 2 cores (inductor compiles the forward and backward, once per batch shape).
    # No dropout: compiled kernels draw dropout masks from their own RNG. Compiled kernels
    # round differently (fused reductions), so the check is a tolerance, not equality.
    no_dropout = dict(dropout_tcn=0.0, dropout_audio=0.0, dropout_attn=0.0, dropout_head=0.0)
    messages = []
    compiled = train(config(ds, tmp_path / "on", compile="on", **no_dropout), on_message=messages.append)
    assert not any("failed" in m for m in messages), messages
    eager = train(config(ds, tmp_path / "off", compile="off", **no_dropout))
    assert compiled.history[0]["loss"] == pytest.approx(eager.history[0]["loss"], rel=1e-4)
    # Weights per tensor by relative norm: Adam divides by sqrt(v), so where a gradient is
    # near zero, rounding-level differences still move a weight by up to lr per step.
    a, b = load_run(tmp_path / "on", "last").model.state_dict(), load_run(tmp_path / "off", "last").model.state_dict()
    rel = {k: float((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-12)) for k in a if b[k].is_floating_point()}
    assert max(rel.values()) < 1e-2, sorted(rel.items(), key=lambda kv: -kv[1])[:5]


def test_resume_loads_the_optimiser_state_under_this_runs_adamw_switches(tmp_path):
    # AdamW.load_state_dict places each ``step`` by the param groups it is GIVEN: fused
    # groups on the parameters' device, others on the CPU. A run saved under --compile off
    # (fused None) and resumed under auto on CUDA (fused True) must load with fused=True,
    # else fused AdamW meets CPU steps ("Expected all tensors to be on the same device ...
    # state_steps"). On the CPU the device is the same either way, so watch what is loaded.
    from expr.train_heads import HeadConfig, RunDir
    from expr.train_heads.checkpoint import load_optimizer_state, save_checkpoint
    from expr.train_heads.model import ExprHeadModel

    cfg = HeadConfig(visual_dim=8, audio_dim=8, channels=8, tcn_levels=1, heads=2, text_dim=4)
    model = ExprHeadModel(cfg, torch.zeros(cfg.num_classes, cfg.text_dim), 1.0)
    saved_opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **optimizer_flags("off", torch.device("cpu")))
    torch.stack([p.sum() for p in model.parameters()]).sum().backward()
    saved_opt.step()
    files = RunDir(tmp_path).checkpoint("last")
    save_checkpoint(files, model, optimizer=saved_opt, meta={"epoch": 1})

    fused = {"foreach": None, "fused": True}  # what --compile auto gives on CUDA
    resumed = torch.optim.AdamW(model.parameters(), lr=1e-3, **fused)
    loaded_groups = []
    real_load = resumed.load_state_dict
    setattr(resumed, "load_state_dict", lambda sd: (loaded_groups.extend(sd["param_groups"]), real_load(sd))[1])
    load_optimizer_state(files, resumed)
    assert loaded_groups and all(g["fused"] is True and g["foreach"] is None for g in loaded_groups)
    assert all(g["fused"] is True for g in resumed.param_groups)
    assert all(torch.equal(resumed.state[p]["exp_avg"], saved_opt.state[p]["exp_avg"]) for p in model.parameters())
    resumed.step()  # the fused CPU kernel takes the loaded state
