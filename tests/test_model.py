"""ExprHeadModel: size against DESIGN.md's layer list, shapes, gradients, causality, masks,
and each ablation switch."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from expr.train_heads.checkpoint import load_weights, save_checkpoint
from expr.train_heads.config import Fusion, HeadConfig
from expr.train_heads.model import TCN, ExprHeadModel, NoAttention
from expr.train_heads.run_dir import RunDir

SMALL: dict[str, Any] = dict(visual_dim=24, audio_dim=20, channels=16, tcn_levels=3, heads=4, text_dim=12)


def design_param_count(Dv=512, Da=768, C=512, levels=6, k=3, heads_in=None, text=512, classes=8,
                       audio=True, tcn=True, directions=2, weight_norm=False):
    """Counted by hand from DESIGN.md "Facts about the reference method"."""
    n = 0
    g = C if weight_norm else 0  # weight_norm adds one magnitude g per output channel of a conv
    if tcn:  # Bai et al. blocks: two convs (weight, bias [, g]) + 1x1 downsample if widths differ
        for i in range(levels):
            n_in = Dv if i == 0 else C
            n += n_in * C * k + C + g
            n += C * C * k + C + g
            n += (n_in * C + C) if n_in != C else 0
    elif Dv != C:
        n += Dv * C + C
    if audio:
        n += Da * C + C + 2 * C                      # adapter Linear + LayerNorm
        n += directions * (4 * C * C + 4 * C + 2 * C)  # MultiheadAttention (in + out proj) + LayerNorm
    fused = 2 * C if audio else C
    n += fused * 512 + 512 + 2 * 512 + 512 * 256 + 256 + 256 * classes + classes  # classifier
    n += C * text + text                             # contrastive projection
    return n


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def make(cfg: HeadConfig, seed=0):
    torch.manual_seed(seed)
    return ExprHeadModel(cfg, torch.randn(cfg.num_classes, cfg.text_dim), 100.0)


def inputs(cfg: HeadConfig, B=3, W=12, A=25, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(B, W, cfg.visual_dim, generator=g)
    a = torch.randn(B, A, cfg.audio_dim, generator=g)
    mask = torch.ones(B, A, dtype=torch.bool)
    mask[1, 17:] = False   # audio ends inside the window
    mask[2] = False        # a video without audio
    return v, a * mask[..., None], mask


def test_reference_size_matches_design():
    model = make(HeadConfig())
    assert n_params(model) == design_param_count() == 12_863_240  # no weight norm, as the authors
    assert n_params(make(HeadConfig(weight_norm=True))) == design_param_count(weight_norm=True) == 12_869_384
    # frozen CLIP parts are buffers, not trained
    assert {n for n, _ in model.named_buffers()} == {"text_embeddings", "logit_scale"}


def test_reference_forward_shapes():
    cfg = HeadConfig()
    model = make(cfg).eval()
    v, a, m = inputs(cfg, B=3, W=60, A=121)
    logits, embed = model.forward_with_aux(v, a, m)
    assert logits.shape == (3, 8) and embed.shape == (3, 512) and torch.isfinite(logits).all()
    assert torch.allclose(embed.norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("ablation", [{}, {"use_audio": False}, {"use_tcn": False}, {"weight_norm": True},
                                      {"fusion": "v2a"}, {"fusion": "a2v"}, {"fusion": "concat"}])
def test_forward_finite_and_every_parameter_learns(ablation):
    cfg = HeadConfig(**SMALL, **ablation)
    model = make(cfg).train()
    v, a, m = inputs(cfg)
    logits, embed = model(v, a, m, return_aux=True)
    assert logits.shape == (3, 8) and torch.isfinite(logits).all() and torch.isfinite(embed).all()
    target = torch.tensor([0, 3, 5])
    loss = F.cross_entropy(logits, target) + 0.1 * model.contrastive_loss(embed, target)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_ablation_switches_change_the_architecture():
    full = make(HeadConfig(**SMALL))
    counts = {k: n_params(make(HeadConfig(**SMALL, **kw))) for k, kw in {
        "no_audio": {"use_audio": False}, "no_tcn": {"use_tcn": False},
        "v2a": {"fusion": "v2a"}, "a2v": {"fusion": "a2v"}, "concat": {"fusion": "concat"}}.items()}
    small: dict[str, Any] = dict(Dv=24, Da=20, C=16, levels=3, text=12)
    assert n_params(full) == design_param_count(**small)
    assert counts["no_audio"] == design_param_count(**small, audio=False)
    assert counts["no_tcn"] == design_param_count(**small, tcn=False)
    assert counts["v2a"] == counts["a2v"] == design_param_count(**small, directions=1)
    assert counts["concat"] == design_param_count(**small, directions=0)
    assert isinstance(make(HeadConfig(**SMALL, fusion=Fusion.v2a)).fusion.a2v, NoAttention)
    assert isinstance(make(HeadConfig(**SMALL, fusion=Fusion.a2v)).fusion.v2a, NoAttention)
    assert not hasattr(make(HeadConfig(**SMALL, use_audio=False)), "audio_adapter")
    same_width = HeadConfig(**{**SMALL, "visual_dim": 16}, use_tcn=False)
    assert isinstance(make(same_width).temporal, torch.nn.Identity)


def test_no_audio_model_ignores_audio():
    cfg = HeadConfig(**SMALL, use_audio=False)
    model = make(cfg).eval()
    v, a, m = inputs(cfg)
    assert torch.equal(model(v, a, m), model(v, torch.randn_like(a), m))
    assert torch.equal(model(v, a, m), model(v))


@pytest.mark.parametrize("fusion", ["bica", "v2a", "a2v", "concat"])
def test_padded_audio_does_not_change_the_result(fusion):
    cfg = HeadConfig(**SMALL, fusion=fusion)
    model = make(cfg).eval()
    v, a, m = inputs(cfg)
    noisy = torch.where(m[..., None], a, 1e3 * torch.randn_like(a))  # garbage in every padded step
    with torch.no_grad():
        ref, ref_embed = model.forward_with_aux(v, a, m)
        out, out_embed = model.forward_with_aux(v, noisy, m)
    assert torch.allclose(ref, out, atol=1e-5) and torch.allclose(ref_embed, out_embed, atol=1e-5)
    # and the real audio matters (the mask does not simply drop everything)
    with torch.no_grad():
        changed = model(v, torch.where(m[..., None], torch.randn_like(a), a), m)
    assert not torch.allclose(ref[:2], changed[:2], atol=1e-4)
    assert torch.allclose(ref[2], changed[2], atol=1e-5)  # row 2 has no audio at all


def test_tcn_is_causal():
    torch.manual_seed(0)
    tcn = TCN(8, 16, levels=4, kernel=3, dropout=0.4).eval()
    x = torch.randn(2, 40, 8)
    t = 25
    y = x.clone()
    y[:, t + 1:] = torch.randn(2, 40 - t - 1, 8)
    with torch.no_grad():
        out_x, out_y = tcn(x), tcn(y)
    assert out_x.shape == (2, 40, 16)
    assert torch.equal(out_x[:, :t + 1], out_y[:, :t + 1])
    assert not torch.allclose(out_x[:, t + 1:], out_y[:, t + 1:])


def test_tcn_receptive_field_reaches_back_over_the_dilations():
    # 4 levels, kernel 3, dilations 1,2,4,8, two convs each: 1 + 2*2*(1+2+4+8) = 61 frames
    torch.manual_seed(0)
    tcn = TCN(4, 8, levels=4, kernel=3, dropout=0.0).eval()
    x = torch.randn(1, 80, 4)
    for back, changes in ((60, True), (61, False)):
        y = x.clone()
        y[:, 79 - back] += 5.0
        with torch.no_grad():
            assert (not torch.allclose(tcn(x)[:, -1], tcn(y)[:, -1])) == changes


def test_contrastive_loss_is_symmetric_infonce():
    cfg = HeadConfig(**SMALL)
    model = make(cfg)
    embed = F.normalize(torch.randn(4, cfg.text_dim), dim=-1)
    target = torch.tensor([1, 1, 4, 7])
    text = model.text_embeddings[target]
    logits = 100.0 * embed @ text.t()
    labels = torch.arange(4)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    assert torch.allclose(model.contrastive_loss(embed, target), expected)
    # aligned with its own class text (distinct classes), the loss is near zero
    distinct = torch.tensor([0, 2, 5, 6])
    assert model.contrastive_loss(model.text_embeddings[distinct], distinct) < 0.05


def test_v01_weight_normed_checkpoint_without_the_key_still_loads(tmp_path):
    # v0.1 wrote every head with weight_norm and a head_config that has no "weight_norm" key.
    cfg = HeadConfig(**SMALL, weight_norm=True)
    old = make(cfg).eval()
    tensors = {k: v.contiguous() for k, v in old.state_dict().items()}
    assert any(".parametrizations.weight.original1" in k for k in tensors)
    head_config = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "weight_norm"}
    save_file(tensors, str(tmp_path / "best.safetensors"),
              metadata={"meta": json.dumps({"epoch": 3}), "head_config": json.dumps(head_config)})
    loaded, meta = load_weights(tmp_path / "best.safetensors")
    assert loaded.cfg.weight_norm and meta == {"epoch": 3}
    v, a, m = inputs(cfg)
    with torch.no_grad():
        assert torch.equal(loaded(v, a, m), old(v, a, m))


def test_plain_tcn_checkpoint_round_trips(tmp_path):
    model = make(HeadConfig(**SMALL)).eval()
    assert not any("parametrizations" in k for k in model.state_dict())
    files = RunDir(tmp_path).checkpoint("last")
    save_checkpoint(files, model, meta={"epoch": 1})
    loaded, _ = load_weights(files.weights)
    assert loaded.cfg.weight_norm is False
    v, a, m = inputs(model.cfg)
    with torch.no_grad():
        assert torch.equal(loaded(v, a, m), model(v, a, m))
