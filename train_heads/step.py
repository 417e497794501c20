"""The training step's fast path (``--compile auto|on|off``), its start-up self-check, and
sync-free progress.

What the fast path changes, and what it costs in exactness:
- AdamW: ``fused=True`` on CUDA (a few kernels instead of ~10 per parameter tensor; equal
  to the default up to float rounding), ``foreach=True`` on CPU (bit-identical to torch's
  default per-tensor loop on CPU, measured faster).
- torch.compile of forward + loss: ``auto`` on CUDA with CUDA graphs in a single process
  (mode reduce-overhead: the step of this 12.9 M-parameter head at batch 32 is kernel-launch
  bound, so replaying a recorded graph is what removes the overhead); ``on`` without CUDA
  graphs on any device. On CPU ``auto`` stays eager: compiling takes minutes on two cores
  (measured ~140 s for the tests' tiny head).
- Gradients of a compiled step live in persistent ``.grad`` tensors allocated here, outside
  any CUDA-graph pool, and zeroed in place. Left to autograd, the first backward would make
  the graph's own output tensor the ``.grad`` (AccumulateGrad steals a fresh gradient), and
  the next replay generation marks that memory overwritten: the H200 crash of issue 17
  ("accessing tensor output of CUDAGraphs that has been overwritten", pytorch#169545).
  Compiled kernels round differently and draw dropout masks from their own RNG: a compiled
  run equals an eager one statistically, not bit for bit.

Correct by default:
- The fast path guards the whole micro-batch, forward AND backward. If any part of it fails
  (compiler, backend, a CUDA-graph replay), the step says so once, and the accumulation group
  in progress is redone eagerly from the state it started from (gradients zero, the same RNG
  state): the run continues as if it had been eager from that group on.
- ``auto`` proves itself before the run trusts it (``check=True``): on the first batch, from
  the same state and with dropout switched off in both, two accumulated micro-batches go
  through the eager step once and through the fast path CHECK_ROUNDS times (warm-up, graph
  recording, replay), each fast path training uses (grouped and per micro-batch); under DDP
  without all-reducing (each rank checks its own batch), and all ranks fall back if any fails; losses and gradients must agree every time within LOSS_RTOL / GRAD_RTOL. On an exception or a disagreement the step says so in one line and
  trains eagerly. The check never steps the optimiser: parameters, optimiser state and RNG
  are as before it. (Two micro-batches, because the crash above came on the second.)

bf16 autocast of the forward on CUDA is the same with or without the fast path (the
losses are computed in float32 either way).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from expr.train_heads.config import Compile, TrainConfig
from expr.train_heads.loss import head_loss
from expr.train_heads.model import ExprHeadModel

# CUDA: hand per-step losses to the progress callback every this many micro-batches (one
# host sync each time); the CPU has no queue to stall, so it reports every step.
REPORT_EVERY_CUDA = 50

# The self-check's tolerances, relative: |loss_fast - loss_eager| <= LOSS_RTOL * |loss_eager|
# for each of (loss, ce, contrastive), and ||g_fast - g_eager|| <= GRAD_RTOL * ||g_eager|| over
# all gradients as one vector. Sized for bf16 autocast on CUDA (8-bit mantissa: fused kernels
# round differently by ~1e-2 relative); float32 on CPU agrees to ~1e-6. A real fault (stale,
# missing or doubled gradients) is off by O(1).
LOSS_RTOL = 1e-2
GRAD_RTOL = 5e-2

# Rounds of the fast path in the self-check: with CUDA graphs the first call warms up, the
# second records the graph and the third replays it (into the same persistent gradients).
CHECK_ROUNDS = 3

Batch = Sequence[torch.Tensor]  # (visual, audio, audio_mask, target) of one micro-batch


def compile_mode(setting: str, device: torch.device, world: int) -> str | None:
    """torch.compile mode of the step, or None for eager."""
    if setting == Compile.off or (setting == Compile.auto and device.type != "cuda"):
        return None
    # CUDA graphs replay one process's kernels; under DDP the all-reduce hooks run between
    # them, so DDP compiles without graphs.
    graphs = setting == Compile.auto and device.type == "cuda" and world == 1
    return "reduce-overhead" if graphs else "default"


def optimizer_flags(setting: str, device: torch.device) -> dict:
    """AdamW implementation switches: torch's defaults for --compile off."""
    if setting == Compile.off:
        return {"foreach": None, "fused": None}
    return {"foreach": None, "fused": True} if device.type == "cuda" else {"foreach": True, "fused": None}


def make_optimizer(module: torch.nn.Module, cfg: TrainConfig, lr: float, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=cfg.weight_decay,
                             **optimizer_flags(cfg.compile, device))


# fused vs torch's default AdamW on the same parameters and gradients: the updates differ by
# float rounding only (~1e-7 relative in float32); a broken kernel is off by O(1).
ADAMW_RTOL = 1e-4


def check_fused_adamw(opt: torch.optim.Optimizer, say: Callable[[str], None]) -> None:
    """``--compile auto``'s start-up check of fused AdamW (a CUDA kernel no CPU test runs):
    two steps of ``opt``'s implementation and of torch's default one, each on copies of the
    parameters with the same seeded gradients; on an exception or a disagreement of the
    updates, one message and the default implementation from the first real step on. The
    run's parameters, gradients, optimiser state and RNG are not touched."""
    groups = [g for g in opt.param_groups if g.get("fused")]
    params = [p for g in groups for p in g["params"] if p.requires_grad]
    if not params:
        return
    gen = torch.Generator(device=params[0].device).manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in params]
    group = groups[0]

    def updates(fused: bool | None) -> torch.Tensor:
        copies = [p.detach().clone().requires_grad_(True) for p in params]
        for copy, grad in zip(copies, grads):
            copy.grad = grad.clone()
        adamw = torch.optim.AdamW(copies, lr=group["lr"], betas=group["betas"], eps=group["eps"],
                                  weight_decay=group["weight_decay"], fused=fused)
        for _ in range(2):  # the second step reads the moments the first one wrote
            adamw.step()
        return torch.cat([(c.detach() - p.detach()).float().reshape(-1) for c, p in zip(copies, params)])

    try:
        want, got = updates(None), updates(True)
        rel = float((got - want).norm() / want.norm().clamp_min(1e-30))
        verdict = (None if rel <= ADAMW_RTOL else
                   f"disagreed (relative difference of the updates {rel:.1e}, tolerance {ADAMW_RTOL:.0e})")
    except Exception as exc:
        verdict = f"failed ({_first_line(exc)})"
    if verdict is None:
        return
    for g in groups:  # AdamW reads its switches from the group at every step
        g["fused"] = None
    say(f"--compile auto: fused AdamW {verdict} in its start-up check against torch's default AdamW; "
        "using the default (--compile off skips the check)")


def make_step(model: torch.nn.Module, module: ExprHeadModel, weights: torch.Tensor, cfg: TrainConfig,
              device: torch.device, world: int, say: Callable[[str], None]
              ) -> tuple[torch.optim.Optimizer, LossStep]:
    """The optimiser and the training step of ``cfg`` exactly as `expr train` runs them (and
    the benchmarks measure them): AdamW with the --compile flags (fused AdamW proven first on
    ``auto``), the compile mode, and the guarded LossStep (self-checked on ``auto``; grouped
    with CUDA graphs). ``model`` is ``module`` or DDP around it; the epoch loop sets each
    epoch's learning rate, so AdamW starts at ``cfg.lr`` here."""
    opt = make_optimizer(module, cfg, cfg.lr, device)
    if cfg.compile == Compile.auto:
        check_fused_adamw(opt, say)  # fused on CUDA: a kernel only a GPU runs
    mode = compile_mode(cfg.compile, device, world)
    if mode is not None and device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the step's shapes are fixed: pick conv algorithms once
    # auto on one GPU: a fixed-shape step over the whole group, proven by the self-check
    step = LossStep(model, module, weights, cfg.contrastive_weight, device, mode, say,
                    check=cfg.compile == Compile.auto, grouped=mode == "reduce-overhead")
    return opt, step


def optimizer_step(step: LossStep, opt: torch.optim.Optimizer, batches: Sequence[Batch],
                   grad_clip: float) -> torch.Tensor:
    """One optimiser step over an accumulation group: its gradients (``step.accumulate``),
    clipped to a norm of ``grad_clip`` (0: not clipped), the update, the gradients zeroed
    (in place when the step keeps them, see above); the group's (n, 3) losses."""
    losses = step.accumulate(batches)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(step.module.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=not step.keeps_grads)
    return losses


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


@contextlib.contextmanager
def dropout_off(module: torch.nn.Module):
    """Dropout layers and attention dropout off (eval mode for exactly those modules), so that
    the eager and the compiled step compute the same function; restored afterwards."""
    dropping = [m for m in module.modules() if isinstance(m, (torch.nn.Dropout, torch.nn.MultiheadAttention))]
    modes = [m.training for m in dropping]
    for m in dropping:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(dropping, modes):
            m.training = mode


class RngState:
    """The global CPU (and this CUDA device's) RNG state, to replay a group's dropout."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class LossStep:
    """``accumulate(batches)`` -> (n, 3) detached (loss, ce, contrastive) of one accumulation
    group: forward (bf16 autocast on CUDA), float32 loss and backward of ``loss / n`` per
    micro-batch, through the fast path when ``mode`` says so, else eagerly."""

    def __init__(self, model: torch.nn.Module, module: ExprHeadModel, weights: torch.Tensor,
                 contrastive_weight: float, device: torch.device, mode: str | None,
                 say: Callable[[str], None], *, check: bool = False, grouped: bool = False):
        self.model, self.module, self.weights = model, module, weights
        self.contrastive_weight, self.device, self.mode, self.say = contrastive_weight, device, mode, say
        self.fn = torch.compile(self.eager, mode=mode, dynamic=False) if mode else self.eager
        # One fixed-shape forward + backward per full group instead of one per micro-batch
        # (fast path only; see grouped_loss): half the launches and graph replays.
        self.fn_grouped = torch.compile(self.eager_grouped, mode=mode, dynamic=False) if mode and grouped else None
        self.fast = mode is not None  # the fast path is in use (False from the first fallback on)
        self.check_pending = check and self.fast
        if self.fast:
            self.allocate_grads()

    @property
    def keeps_grads(self) -> bool:
        """Zero gradients in place (never free them) between optimiser steps: see above."""
        return self.fast

    def allocate_grads(self) -> None:
        """Fresh zero ``.grad`` of every trainable parameter, outside any graph pool. Every
        parameter of the head receives a gradient each step (tests/test_model.py), so a
        zero .grad changes no update compared with None."""
        for p in self.module.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)

    def eager(self, visual, audio, mask, target):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits, embed = self.model(visual, audio, mask, return_aux=True)
        return head_loss(self.module, logits, embed, target, self.weights, self.contrastive_weight)

    def eager_grouped(self, visual, audio, mask, target, groups: int):
        """(mean loss over the groups, (groups, 3) losses) of ``groups`` equal micro-batches
        concatenated along the batch."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits, embed = self.model(visual, audio, mask, return_aux=True)
        return grouped_loss(self.module, logits, embed, target, self.weights, self.contrastive_weight, groups)

    def _micro(self, fast: bool, batch: Batch, n: int, last: bool) -> torch.Tensor:
        """Forward, loss and backward of one micro-batch, through the fast path or eagerly; its
        (3,) losses, detached copies (safe from CUDA-graph memory reuse). DDP all-reduces only
        on the group's last one."""
        sync = (self.model.no_sync() if isinstance(self.model, DistributedDataParallel) and not last
                else contextlib.nullcontext())
        with sync:
            if fast and self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # a new iteration: older outputs may be reused
            loss, ce, con = (self.fn if fast else self.eager)(*batch)
            (loss / n).backward()
        return torch.stack([loss, ce, con]).detach()

    def _group(self, fast: bool, batches: Sequence[Batch], grouped: bool = True) -> torch.Tensor:
        n = len(batches)
        if (fast and grouped and self.fn_grouped is not None and n > 1
                and len({len(b[3]) for b in batches}) == 1):
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            visual, audio, mask, target = (torch.cat(parts) for parts in zip(*batches))  # (n * B, ...) each
            loss, losses = self.fn_grouped(visual, audio, mask, target, n)
            loss.backward()
            return losses.detach().clone()  # a copy: safe from CUDA-graph memory reuse
        return torch.stack([self._micro(fast, b, n, i == n - 1) for i, b in enumerate(batches)])

    def accumulate(self, batches: Sequence[Batch]) -> torch.Tensor:
        """Gradients of the group accumulated into ``.grad`` (zero on entry); its losses."""
        if self.check_pending:
            self.check_pending = False
            self.self_check(batches[0])
        if not self.fast:
            return self._group(False, batches)
        start = RngState(self.device)
        try:
            return self._group(True, batches)
        except Exception as exc:  # compiler, backend or graph replay broken: the eager step still works
            self.fall_back(f"torch.compile of the training step failed ({_first_line(exc)}); "
                           "continuing without it (--compile off skips the attempt)")
            start.restore()  # redo the whole group eagerly from where it started
            return self._group(False, batches)

    def fall_back(self, message: str) -> None:
        """Eager from now on. Gradients are replaced, not zeroed in place: a failed graph
        replay may have left them in memory that must not be touched again."""
        self.say(message)
        self.fn, self.fn_grouped, self.fast = self.eager, None, False
        for p in self.module.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)

    def _grads(self) -> torch.Tensor:
        return torch.cat([p.grad.detach().float().reshape(-1) for p in self.module.parameters()
                          if p.requires_grad and p.grad is not None])

    def self_check(self, batch: Batch) -> None:
        """Eager vs fast path on ``batch`` (twice, accumulated) from the same state; falls
        back to eager with one message on an exception or a disagreement."""
        start = RngState(self.device)
        verdict = None
        # Under DDP no gradient is all-reduced in the check: a rank that stops early (a failure,
        # a disagreement) would otherwise leave the ranks' collectives unpaired (a hang).
        ddp = isinstance(self.model, DistributedDataParallel)
        sync = (self.model.no_sync() if isinstance(self.model, DistributedDataParallel)
                else contextlib.nullcontext())
        with dropout_off(self.module), sync:
            try:
                want = self._group(False, [batch, batch])
                want_g = self._grads()
                # both fast paths training takes: the grouped step (full groups) and the
                # per-micro-batch one (--accum 1, and a group with a short last micro-batch)
                paths = (True, False) if self.fn_grouped is not None else (False,)
                for grouped in paths:
                    for _ in range(CHECK_ROUNDS):  # each round from zero gradients, as after an optimiser step
                        self._zero_grads()
                        start.restore()
                        got = self._group(True, [batch, batch], grouped)
                        verdict = disagreement(want, got, want_g, self._grads())
                        if verdict is not None:
                            break
                    if verdict is not None:
                        break
            except Exception as exc:
                verdict = f"failed ({_first_line(exc)})"
        start.restore()
        if ddp:
            verdict = _agree(verdict, self.device)
        if verdict is None:
            self._zero_grads()
            return
        self.fall_back(f"--compile auto: the compiled training step {verdict} in its start-up check "
                       "against the eager step; training eagerly (--compile on skips the check)")

    def _zero_grads(self) -> None:
        for p in self.module.parameters():
            if p.grad is not None:
                p.grad.zero_()


def _agree(verdict: str | None, device: torch.device) -> str | None:
    """Every rank's verdict made one (one collective, on every rank): all ranks fall back when
    any rank's check failed, so that none trains fast while another trains eagerly."""
    import torch.distributed as td

    failed = torch.tensor([0.0 if verdict is None else 1.0], device=device)
    td.all_reduce(failed, op=td.ReduceOp.MAX)
    if verdict is None and failed.item() > 0:
        return "failed on another rank"
    return verdict


def grouped_loss(module: ExprHeadModel, logits: torch.Tensor, embed: torch.Tensor, target: torch.Tensor,
                 weights: torch.Tensor, contrastive_weight: float, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over groups of head_loss, (groups, 3) per-group (loss, ce, contrastive)) of a batch
    of ``groups`` equal micro-batches in a row. The class-weighted CE and the InfoNCE normalise
    per micro-batch, so the mean's gradient is that of accumulating ``loss / groups`` over the
    micro-batches: equal up to float rounding (tests/test_compile_guard.py)."""
    per = [torch.stack(head_loss(module, lg, em, tg, weights, contrastive_weight))
           for lg, em, tg in zip(logits.chunk(groups), embed.chunk(groups), target.chunk(groups))]
    losses = torch.stack(per)                                          # (groups, 3)
    return losses[:, 0].mean(), losses


def disagreement(want: torch.Tensor, got: torch.Tensor, want_g: torch.Tensor, got_g: torch.Tensor) -> str | None:
    """None when the fast path's losses (n, 3) and gradients match the eager ones within
    LOSS_RTOL / GRAD_RTOL, else what differs (non-finite values never match)."""
    if got.shape != want.shape or got_g.shape != want_g.shape:
        return "gave differently shaped results"
    if not (torch.isfinite(got).all() and torch.isfinite(got_g).all()):
        return "gave non-finite values"
    loss_rel = float(((got - want).abs() / want.abs().clamp(min=1e-12)).max())
    grad_rel = float((got_g - want_g).norm() / want_g.norm().clamp(min=1e-12))
    if loss_rel > LOSS_RTOL or grad_rel > GRAD_RTOL:
        return (f"disagreed (relative difference: losses {loss_rel:.1e}, tolerance {LOSS_RTOL:.0e}; "
                f"gradients {grad_rel:.1e}, tolerance {GRAD_RTOL:.0e})")
    return None


class StepReporter:
    """Per-micro-batch losses for ``on_step(n, loss)`` without a host sync every step: the
    losses wait in a device buffer and are read in one transfer every ``every`` steps."""

    def __init__(self, on_step: Callable[[int, float], None] | None, device: torch.device,
                 every: int | None = None):
        self.on_step, self.n = on_step, 0
        self.every = every or (REPORT_EVERY_CUDA if device.type == "cuda" else 1)
        self.buffer = torch.empty(self.every, dtype=torch.float32, device=device)
        self.pending = 0

    def add(self, loss: torch.Tensor) -> None:
        if self.on_step is None:
            return
        self.buffer[self.pending] = loss.detach()  # a device copy: also safe from CUDA-graph reuse
        self.pending += 1
        if self.pending == self.every:
            self.flush()

    def flush(self) -> None:
        if self.on_step is None or not self.pending:
            return
        for value in self.buffer[:self.pending].tolist():
            self.n += 1
            self.on_step(self.n, value)
        self.pending = 0
