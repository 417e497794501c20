"""--compile auto's start-up check of fused AdamW (the kernel runs only on a GPU in
training; torch also has it on the CPU, which is what lets this test run it)."""

import pytest
import torch

from expr.train_heads.step import check_fused_adamw

REAL_ADAMW = torch.optim.AdamW


def optimiser():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    return module, REAL_ADAMW(module.parameters(), lr=1e-3, weight_decay=1e-2, fused=True)


def test_a_correct_fused_adamw_passes_silently_and_touches_nothing():
    module, opt = optimiser()
    before = [p.detach().clone() for p in module.parameters()]
    rng = torch.random.get_rng_state()
    messages: list[str] = []
    check_fused_adamw(opt, messages.append)
    assert messages == [] and opt.param_groups[0]["fused"] is True
    assert all(torch.equal(a, p) for a, p in zip(before, module.parameters()))
    assert all(p.grad is None for p in module.parameters()) and opt.state == {}
    assert torch.equal(rng, torch.random.get_rng_state())


class WrongFused(REAL_ADAMW):
    """A fused kernel that applies twice the learning rate."""

    def __init__(self, params, lr=1e-3, fused=None, **kw):
        super().__init__(params, lr=lr * (2 if fused else 1), fused=fused, **kw)


class BrokenFused(REAL_ADAMW):
    def step(self, closure=None):
        if self.param_groups[0]["fused"]:
            raise RuntimeError("no kernel image is available for execution on the device")
        return super().step(closure)


@pytest.mark.parametrize("impl, says", [
    (WrongFused, "fused AdamW disagreed (relative difference of the updates 1.0e+00, tolerance 1e-04)"),
    (BrokenFused, "fused AdamW failed (RuntimeError: no kernel image is available for execution on the device)"),
])
def test_a_wrong_or_broken_fused_adamw_says_one_line_and_the_run_uses_the_default(monkeypatch, impl, says):
    module, opt = optimiser()
    monkeypatch.setattr(torch.optim, "AdamW", impl)
    messages: list[str] = []
    check_fused_adamw(opt, messages.append)
    assert len(messages) == 1 and says in messages[0] and "using the default" in messages[0]
    assert opt.param_groups[0]["fused"] is None
    # the run's optimiser now steps with torch's default implementation
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    monkeypatch.setattr(torch.optim, "AdamW", REAL_ADAMW)
    opt.step()
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_an_optimiser_without_fused_is_not_checked(monkeypatch):
    module = torch.nn.Linear(4, 2)
    opt = REAL_ADAMW(module.parameters(), foreach=True)
    monkeypatch.setattr(torch.optim, "AdamW", BrokenFused)
    messages: list[str] = []
    check_fused_adamw(opt, messages.append)
    assert messages == []
