"""Issue 17: the fast path of the training step is correct by default, proven on CPU.

1. The H200 crash of ``--compile auto`` (CUDA graphs) reproduced without a GPU: an
   aot_autograd backend applies the cudagraph-trees rule (at each new compiled forward, the
   live outputs of the previous generation are marked overwritten) and the product's own
   ``run_epoch`` runs two epochs through it.
2. The decision logic of the guard and of ``auto``'s start-up self-check, with injected
   failures (forward, backward) and an injected disagreement: each falls back with one
   message, and the run equals the eager one bit for bit.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch._dynamo.backends.common import aot_autograd
from torch.multiprocessing.reductions import StorageWeakRef

from expr.cache_format import open_cache
from expr.core.devices import Dist
from expr.train_heads import TrainConfig, gather, load_run, train, write_synthetic_dataset
from expr.train_heads import loop as loop_module
from expr.train_heads import step as step_module
from expr.train_heads.splits import read_splits
from train_helpers import SMALL, small_dataset, train_config

OVERWRITTEN = "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"
REAL_COMPILE = torch.compile


def _grad(p: torch.nn.Parameter) -> torch.Tensor:
    assert p.grad is not None, "a trained parameter has a gradient"
    return p.grad


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return small_dataset(tmp_path_factory, "guard")


def config(ds, out, **kw) -> TrainConfig:
    return train_config(ds, out, SMALL, **{"epochs": 2, **kw})


class CudaGraphRule:
    """torch.compile backend (aot_autograd, no inductor: compiles in seconds) that treats
    outputs the way cudagraph_trees.py does: the outputs of a generation (forward and
    backward) live in the graph's pool; when the next compiled forward starts a new
    generation, every one of them still alive is marked inaccessible
    (``dealloc_current_path_weakrefs``). Outputs that alias an input are not pool memory."""

    def __init__(self):
        self.live: list[StorageWeakRef] = []
        self.forwards = 0

    def _new_generation(self) -> None:
        self.forwards += 1
        msg = f"Error: {OVERWRITTEN}. (CPU test of the cudagraph-trees rule)"
        for ref in self.live:
            if not ref.expired():
                torch._C._set_storage_data_ptr_access_error_msg(ref.cdata, msg)
        self.live = []

    def _wrap(self, gm: torch.fx.GraphModule, forward: bool):
        def run(args):
            if forward:
                self._new_generation()
            inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
            outs = gm(*args)
            self.live += [StorageWeakRef(o.untyped_storage()) for o in outs
                          if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in inputs]
            return outs
        setattr(run, "_boxed_call", True)  # aot_autograd hands the arguments as one list
        return run

    def backend(self, gm, example_inputs):
        return aot_autograd(fw_compiler=lambda g, _: self._wrap(g, True),
                            bw_compiler=lambda g, _: self._wrap(g, False))(gm, example_inputs)


def build(cfg: TrainConfig, messages: list[str]):
    """The product's learner and splits for ``cfg`` (as ``train`` builds them)."""
    cache = open_cache(cfg.cache)
    splits, _ = read_splits(cfg, cache, {"train": None, "val": None}, torch.device("cpu"), messages.append)
    learner = loop_module._build_learner(cfg, cache, splits["train"], Dist(), torch.device("cpu"), messages.append)
    cache.close()
    return learner, splits["train"]


# 2: the grouped step (the default on one GPU); 1: one compiled call per micro-batch (~13 s more)
@pytest.mark.parametrize("accum", [2, pytest.param(1, marks=pytest.mark.slow)])
def test_cuda_graph_rule_two_epochs_of_run_epoch_keep_their_grads(ds, tmp_path, monkeypatch, accum):
    # On the H200, --compile auto died in the first epoch at loop.py's backward with
    # OVERWRITTEN: the first backward's gradients (graph outputs) became the .grad tensors,
    # zero_grad(set_to_none=False) kept them, and the next generation poisoned them.
    rule = CudaGraphRule()
    monkeypatch.setattr(step_module.torch, "compile",
                        lambda fn, **kw: REAL_COMPILE(fn, backend=rule.backend, dynamic=False))
    monkeypatch.setattr(step_module, "compile_mode", lambda *a: "reduce-overhead")  # auto on CUDA
    messages: list[str] = []
    cfg = config(ds, tmp_path / "r", accum=accum)
    learner, split = build(cfg, messages)
    params = [p for p in learner.module.parameters() if p.requires_grad]
    ptrs: list[int] = []
    for epoch in range(2):
        record = loop_module.run_epoch(learner, cfg, split, epoch)
        if epoch == 0:
            ptrs = [_grad(p).data_ptr() for p in params]
        assert all(torch.isfinite(torch.tensor(v)) for k, v in record.items() if k != "data_seconds")
    assert messages == []  # no fallback, no failed self-check
    steps = -(-len(split.all_targets) // cfg.batch_size) // accum  # optimiser steps per epoch
    assert learner.step.fast and rule.forwards > 2 * steps
    assert [_grad(p).data_ptr() for p in params] == ptrs  # the same persistent .grad tensors throughout


def test_without_persistent_grads_the_rule_breaks_the_step_and_it_falls_back(ds, tmp_path, monkeypatch):
    # The same run without the fix: the guard catches the backward's error, says so once and
    # redoes the group eagerly; the run finishes (it used to exit 1).
    rule = CudaGraphRule()
    monkeypatch.setattr(step_module.torch, "compile",
                        lambda fn, **kw: REAL_COMPILE(fn, backend=rule.backend, dynamic=False))
    monkeypatch.setattr(step_module, "compile_mode", lambda *a: "reduce-overhead")
    monkeypatch.setattr(step_module.LossStep, "allocate_grads", lambda self: None)
    monkeypatch.setattr(step_module.LossStep, "keeps_grads", property(lambda self: self.fast))
    messages: list[str] = []
    cfg = config(ds, tmp_path / "r", compile="on")  # no self-check: the guard alone
    learner, split = build(cfg, messages)
    for epoch in range(2):
        loop_module.run_epoch(learner, cfg, split, epoch)
    assert len(messages) == 1 and OVERWRITTEN in messages[0], messages
    assert messages[0].startswith("torch.compile of the training step failed (RuntimeError: Error: accessing")
    assert not learner.step.fast


def strip(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "data_seconds")} for r in history]


def same_weights(run_a, run_b) -> bool:
    a, b = load_run(run_a, "last").model.state_dict(), load_run(run_b, "last").model.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a)


class Boom(torch.autograd.Function):
    """Identity whose backward fails, like a broken graph replay in the backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("injected backward failure\nsecond line")


def fake_compiler(kind: str, at: int, calls: list[int]):
    """A torch.compile stand-in: the eager function itself, except on call ``at`` (1-based)
    and later, where it fails in the forward, fails in the backward, or disagrees."""
    def compile_(fn, **kwargs):
        def compiled(*args):
            calls.append(1)
            loss, ce, con = fn(*args)
            if len(calls) >= at:
                if kind == "forward":
                    raise RuntimeError("injected forward failure")
                if kind == "backward":
                    loss = Boom.apply(loss)
                if kind == "disagree":
                    loss = loss * 1.5
            return loss, ce, con
        return compiled
    return compile_


@pytest.fixture(scope="module")
def eager_run(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("eager") / "off"
    return out, train(config(ds, out, compile="off"))


@pytest.mark.parametrize("setting,kind,at,expected", [
    # auto: the self-check (calls 1-6 with dropout off: 3 rounds of 2 micro-batches) sees the
    # failure or the disagreement, also when only the third round (a CUDA-graph replay) differs
    ("auto", "forward", 1, "--compile auto: the compiled training step failed (RuntimeError: injected forward "
                           "failure) in its start-up check against the eager step; training eagerly "
                           "(--compile on skips the check)"),
    ("auto", "backward", 2, "--compile auto: the compiled training step failed (RuntimeError: injected backward "
                            "failure) in its start-up check against the eager step; training eagerly "
                            "(--compile on skips the check)"),
    ("auto", "disagree", 1, "--compile auto: the compiled training step disagreed (relative difference: losses "
                            "5.0e-01, tolerance 1e-02; gradients 5.0e-01, tolerance 5e-02) in its start-up "
                            "check against the eager step; training eagerly (--compile on skips the check)"),
    ("auto", "disagree", 5, "--compile auto: the compiled training step disagreed (relative difference: losses "
                            "5.0e-01, tolerance 1e-02; gradients 5.0e-01, tolerance 5e-02) in its start-up "
                            "check against the eager step; training eagerly (--compile on skips the check)"),
    # on (no check) and auto after a passing check: the guard catches a later failure in the
    # backward of a group's SECOND micro-batch (its first one already accumulated gradients)
    ("on", "backward", 4, "torch.compile of the training step failed (RuntimeError: injected backward failure); "
                          "continuing without it (--compile off skips the attempt)"),
    ("auto", "backward", 10, "torch.compile of the training step failed (RuntimeError: injected backward failure); "
                            "continuing without it (--compile off skips the attempt)"),
    ("auto", "forward", 9, "torch.compile of the training step failed (RuntimeError: injected forward failure); "
                           "continuing without it (--compile off skips the attempt)"),
    ("auto", "none", 0, None),  # an exact fast path passes the check and keeps running
])
def test_fallbacks_say_one_line_and_leave_the_result_unchanged(ds, tmp_path, monkeypatch, eager_run,
                                                               setting, kind, at, expected):
    calls: list[int] = []
    monkeypatch.setattr(step_module.torch, "compile", fake_compiler(kind, at or 10 ** 9, calls))
    monkeypatch.setattr(step_module, "compile_mode", lambda *a: "default")  # as on CUDA
    messages: list[str] = []
    result = train(config(ds, tmp_path / "r", compile=setting), on_message=messages.append)
    # the tiny data set's own warnings (empty validation classes) are not the step's
    step_messages = [m for m in messages if not m.startswith("warning:")]
    assert step_messages == ([expected] if expected else [])
    assert len(calls) >= max(at, 1)
    off_dir, off = eager_run
    # Bit for bit the eager run: the check ran from the run's state and restored it (RNG,
    # zero gradients, no optimiser step), a failed group was redone from its start.
    assert strip(result.history) == strip(off.history)
    assert same_weights(tmp_path / "r", off_dir)


def test_the_self_check_leaves_parameters_optimiser_and_rng_alone(ds, tmp_path, monkeypatch):
    monkeypatch.setattr(step_module.torch, "compile", fake_compiler("disagree", 1, []))
    monkeypatch.setattr(step_module, "compile_mode", lambda *a: "default")
    messages: list[str] = []
    learner, split = build(config(ds, tmp_path / "r", compile="auto"), messages)
    before = {k: v.clone() for k, v in learner.module.state_dict().items()}
    training = [m.training for m in learner.module.modules()]
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    bank, win = next(iter(split.chunks(config(ds, tmp_path), 0)))
    b = gather(bank, win.video_idx[:8], win.end_frame[:8], SMALL["window"])
    batch = (b.visual, b.audio, b.audio_mask, win.target[:8])
    learner.step.self_check(batch)
    assert len(messages) == 1 and "disagreed" in messages[0]
    assert all(torch.equal(v, learner.module.state_dict()[k]) for k, v in before.items())
    assert learner.opt.state == {} and torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in learner.module.modules()] == training
    assert all(p.grad is not None and not p.grad.any() for p in learner.module.parameters())


@pytest.mark.parametrize("accum", [1, 2])
def test_the_self_check_covers_the_per_micro_batch_path_beside_the_grouped_one(ds, tmp_path, monkeypatch, accum):
    # On one GPU (reduce-overhead) training calls the grouped step for full groups and the
    # per-micro-batch step for the rest: every group with --accum 1, the tail group otherwise.
    # A check of the grouped step alone passed a per-micro-batch step that was wrong.
    def compile_(fn, **kwargs):
        if fn.__name__ == "eager_grouped":
            return fn  # exact
        def wrong(*args):
            loss, ce, con = fn(*args)
            return loss * 1.5, ce, con
        return wrong
    monkeypatch.setattr(step_module.torch, "compile", compile_)
    monkeypatch.setattr(step_module, "compile_mode", lambda *a: "reduce-overhead")
    messages: list[str] = []
    cfg = config(ds, tmp_path / "r", accum=accum)
    learner, split = build(cfg, messages)
    loop_module.run_epoch(learner, cfg, split, 0)
    assert len(messages) == 1 and "disagreed" in messages[0] and "start-up check" in messages[0], messages
    assert not learner.step.fast


DDP_CHECK_SCRIPT = """
import os, sys, torch
from expr.train_heads import TrainConfig, train
from expr.train_heads import loop as loop_module, step as step_module
torch.set_num_threads(1)
loop_module.compile_mode = lambda *a: "default"  # as under DDP on CUDA

def compile_(fn, **kwargs):  # a fast path that fails on rank 0 only (out of memory there, say)
    def compiled(*args):
        if os.environ["RANK"] == "0":
            raise RuntimeError("injected failure on rank 0")
        return fn(*args)
    return compiled

step_module.torch.compile = compile_
cache, labels, out = sys.argv[1:4]
train(TrainConfig(cache=cache, labels=labels, out=out, window=16, stride=4, epochs=1, channels=16,
                  tcn_levels=2, heads=2, lr=1e-3, device="cpu", compile="auto"),
      on_message=lambda m: print(f"rank {os.environ['RANK']}: {m}", flush=True))
"""


@pytest.mark.slow  # two processes that import torch: ~30 s
def test_under_ddp_the_self_check_has_no_collectives_and_every_rank_decides_alike(ds, tmp_path):
    # The check's eager and fast groups all-reduced their gradients (DDP syncs a group's last
    # micro-batch); a rank whose fast path failed stopped checking while the other went on
    # all-reducing its check rounds, so the ranks' collectives no longer paired up (a hang, or
    # gradients averaged with another rank's check) and one rank trained fast, the other eagerly.
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_CHECK_SCRIPT)
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534",
         str(script), str(ds.cache), str(ds.labels), str(tmp_path / "ddp")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the ranks too, not only the launcher
        out, err = proc.communicate()
        pytest.fail("the two ranks hung: " + out[-2000:])
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    import re

    # the two ranks print to one pipe: their lines can run together
    notes = dict(re.findall(r"rank (\d): (--compile auto: .*?training eagerly)", out))
    assert sorted(notes) == ["0", "1"], out
    assert "failed (RuntimeError: injected failure on rank 0)" in notes["0"] and "another rank" in notes["1"]


def test_disagreement_tolerances():
    want, grads = torch.tensor([[2.0, 1.5, 5.0]]), torch.ones(100)
    assert step_module.disagreement(want, want * (1 + 5e-3), grads, grads * 1.03) is None
    assert "losses 2.0e-02" in (step_module.disagreement(want, want * 1.02, grads, grads) or "")
    assert "gradients 1.0e-01" in (step_module.disagreement(want, want, grads, grads * 1.1) or "")
    assert step_module.disagreement(want, want * float("nan"), grads, grads) == "gave non-finite values"
    assert step_module.disagreement(want, want, grads, grads[:50]) == "gave differently shaped results"


def test_the_grouped_step_gives_the_gradients_of_accumulating_its_groups(ds, tmp_path):
    # Issue 17's fixed-shape step: one forward + backward over 2 x 16 windows with the loss
    # computed per group and averaged, vs accumulating loss / 2 over the two micro-batches
    # (float32, dropout 0: the same function, so only float rounding differs).
    no_dropout = dict(dropout_tcn=0.0, dropout_audio=0.0, dropout_attn=0.0, dropout_head=0.0)
    cfg = config(ds, tmp_path / "r", compile="off", **no_dropout)
    learner, split = build(cfg, [])
    bank, win = next(iter(split.chunks(cfg, 0)))
    batches = []
    perm = torch.randperm(len(win), generator=torch.Generator().manual_seed(0))
    for rows in (perm[:16], perm[16:32]):
        b = gather(bank, win.video_idx[rows], win.end_frame[rows], SMALL["window"])
        batches.append((b.visual, b.audio, b.audio_mask, win.target[rows]))
    step, params = learner.step, list(learner.module.parameters())
    want_losses = step._group(False, batches)
    want = [_grad(p).clone() for p in params]
    learner.opt.zero_grad(set_to_none=True)
    visual, audio, mask, target = (torch.cat(parts) for parts in zip(*batches))
    loss, losses = step.eager_grouped(visual, audio, mask, target, 2)
    loss.backward()
    assert torch.allclose(losses, want_losses, rtol=1e-6, atol=0)
    worst = max(float((_grad(p) - w).abs().max() / w.abs().max()) for p, w in zip(params, want))
    assert worst < 2e-5, worst  # the issue measured 8e-6 on the reference head
    assert len(set(win.target[perm[:16]].tolist())) > 2  # the class weights do matter here
