"""The paper's audio-visual head over cached CLIP / Wav2Vec2 features.

"Multimodal Emotion Recognition with CLIP, Wav2Vec 2.0, TCN and Bi-directional
Cross-Attention" (ABAW 10th EXPR; see /work/shared/paper.txt and DESIGN.md):

    visual (B, W, Dv) -> TCN (6 causal dilated temporal blocks, Bai et al. 2018) -> (B, W, C)
    audio  (B, A, Da) -> AudioAdapter (Linear, LayerNorm, ReLU, Dropout)        -> (B, A, C)
    CrossAttentionFusion: visual queries audio, audio queries visual (8 heads, residual + LN)
    masked temporal mean pool of each stream, concat (B, 2C) -> ClassifierHead -> (B, 8)
    contrastive: Linear(C, text_dim) on the pooled visual stream, L2-normalised, against the
    frozen CLIP text embeddings of "A face expressing {class}" scaled by CLIP's logit scale.

Ablations switch parts off as ``nn.Identity`` (TCN, attention directions) or drop the audio
stream (classifier input C instead of 2C). Masks are explicit: ``audio_mask`` (B, A) is True
for real audio steps; padding never changes the result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from expr.train_heads.config import Fusion, HeadConfig


class TemporalBlock(nn.Module):
    """Bai et al.'s residual block: two causal dilated convs, ReLU, dropout. Bai wraps the
    convs in weight_norm; the paper's authors do not (``weight_norm`` turns it on)."""

    def __init__(self, n_in: int, n_out: int, kernel: int, dilation: int, dropout: float,
                 weight_norm: bool = False):
        super().__init__()
        self.pad = (kernel - 1) * dilation  # left padding only: output t sees inputs <= t
        wrap = parametrizations.weight_norm if weight_norm else (lambda conv: conv)
        self.conv1 = wrap(nn.Conv1d(n_in, n_out, kernel, dilation=dilation))
        self.conv2 = wrap(nn.Conv1d(n_out, n_out, kernel, dilation=dilation))
        self.drop = nn.Dropout(dropout)
        self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, W) -> (B, C_out, W)
        # Padding on the left is the same as Bai's pad-both-sides-then-chomp, without the copy.
        h = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        h = self.drop(F.relu(self.conv2(F.pad(h, (self.pad, 0)))))
        return F.relu(h + self.downsample(x))


class TCN(nn.Module):
    def __init__(self, n_in: int, channels: int, levels: int, kernel: int, dropout: float,
                 weight_norm: bool = False):
        super().__init__()
        self.blocks = nn.Sequential(*[
            TemporalBlock(n_in if i == 0 else channels, channels, kernel, 2 ** i, dropout, weight_norm)
            for i in range(levels)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, W, D) -> (B, W, C)
        return self.blocks(x.transpose(1, 2)).transpose(1, 2)


class AudioAdapter(nn.Module):
    def __init__(self, n_in: int, channels: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(n_in, channels)
        self.norm = nn.LayerNorm(channels)
        self.drop = nn.Dropout(dropout)

    def forward(self, a: torch.Tensor) -> torch.Tensor:  # (B, A, Da) -> (B, A, C)
        return self.drop(F.relu(self.norm(self.proj(a))))


class CrossAttention(nn.Module):
    """``query`` attends to ``context`` (keys = values), residual + LayerNorm."""

    def __init__(self, channels: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(channels, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(channels)

    def forward(self, query, context, context_mask, query_weight):
        # context_mask (B, Lc) True = real; query_weight (B, 1, 1) 0 where the context is
        # entirely padding: such rows keep their input (softmax over no keys would be NaN).
        keep_all = ~context_mask.any(1, keepdim=True)                  # (B, 1)
        pad = ~(context_mask | keep_all)                               # (B, Lc) True = ignore
        out, _ = self.attn(query, context, context, key_padding_mask=pad, need_weights=False)
        return self.norm(query + query_weight * out)                   # (B, Lq, C)


class NoAttention(nn.Identity):
    """A disabled attention direction: the query stream passes through unchanged."""

    def forward(self, input, *_):  # named as nn.Identity's parameter, so it overrides cleanly
        return input


class CrossAttentionFusion(nn.Module):
    """Bi-directional cross-attention; a disabled direction is ``NoAttention``."""

    def __init__(self, channels: int, heads: int, dropout: float, v_queries_a: bool, a_queries_v: bool):
        super().__init__()
        self.v2a = CrossAttention(channels, heads, dropout) if v_queries_a else NoAttention()
        self.a2v = CrossAttention(channels, heads, dropout) if a_queries_v else NoAttention()

    def forward(self, v, a, a_mask):  # (B, W, C), (B, A, C), (B, A) -> same shapes
        has_audio = a_mask.any(1).to(v.dtype)[:, None, None]          # (B, 1, 1)
        v_mask = torch.ones(v.shape[:2], dtype=torch.bool, device=v.device)
        # Both directions read the streams as they came in (symmetric, as in the paper).
        return self.v2a(v, a, a_mask, has_audio), self.a2v(a, v, v_mask, torch.ones_like(has_audio))


class ClassifierHead(nn.Module):
    def __init__(self, n_in: int, num_classes: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, 512), nn.LayerNorm(512), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(512, 256), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n_in) -> (B, classes)
        return self.net(x)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, C), (B, L) bool -> (B, C); rows with no True give zeros."""
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp(min=1.0)


class ExprHeadModel(nn.Module):
    text_embeddings: torch.Tensor  # buffers, declared: nn.Module types any attribute as Tensor | Module
    logit_scale: torch.Tensor

    def __init__(self, cfg: HeadConfig, text_embeddings: torch.Tensor, logit_scale: float):
        super().__init__()
        self.cfg = cfg
        C = cfg.channels
        if cfg.use_tcn:
            self.temporal = TCN(cfg.visual_dim, C, cfg.tcn_levels, cfg.tcn_kernel, cfg.dropout_tcn,
                                cfg.weight_norm)
        elif cfg.visual_dim != C:
            self.temporal = nn.Linear(cfg.visual_dim, C)  # only to match the fusion width
        else:
            self.temporal = nn.Identity()
        if cfg.use_audio:
            self.audio_adapter = AudioAdapter(cfg.audio_dim, C, cfg.dropout_audio)
            self.fusion = CrossAttentionFusion(C, cfg.heads, cfg.dropout_attn,
                                               v_queries_a=cfg.fusion in (Fusion.bica, Fusion.v2a),
                                               a_queries_v=cfg.fusion in (Fusion.bica, Fusion.a2v))
        self.head = ClassifierHead(C * (2 if cfg.use_audio else 1), cfg.num_classes, cfg.dropout_head)
        self.text_proj = nn.Linear(C, cfg.text_dim)
        text = F.normalize(torch.as_tensor(text_embeddings, dtype=torch.float32), dim=-1)
        self.register_buffer("text_embeddings", text)                  # (classes, text_dim), frozen
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))  # frozen, as the reference

    def forward_features(self, visual, audio=None, audio_mask=None):
        """-> fused (B, 2C) (or (B, C) without audio) and pooled visual (B, C)."""
        v = self.temporal(visual)                                      # (B, W, C)
        if not self.cfg.use_audio:
            pooled_v = v.mean(1)
            return pooled_v, pooled_v
        if audio is None or audio_mask is None:
            raise ValueError("this head fuses audio: pass audio (B, A, D) and audio_mask (B, A)")
        a = self.audio_adapter(audio)                                  # (B, A, C)
        v, a = self.fusion(v, a, audio_mask)
        pooled_v = v.mean(1)                                           # (B, C) every frame is real
        pooled_a = masked_mean(a, audio_mask)                          # (B, C) zeros without audio
        return torch.cat([pooled_v, pooled_a], dim=1), pooled_v

    def forward_head(self, fused: torch.Tensor) -> torch.Tensor:
        return self.head(fused)                                        # (B, classes)

    def forward(self, visual, audio=None, audio_mask=None, return_aux: bool = False):
        """-> logits (B, classes); with ``return_aux`` also the L2-normalised visual
        embedding (B, text_dim). (One entry point, so DistributedDataParallel sees both.)"""
        fused, pooled_v = self.forward_features(visual, audio, audio_mask)
        logits = self.forward_head(fused)
        if not return_aux:
            return logits
        return logits, F.normalize(self.text_proj(pooled_v), dim=-1)

    def forward_with_aux(self, visual, audio=None, audio_mask=None):
        """-> logits (B, classes) and the L2-normalised visual embedding (B, text_dim)."""
        return self.forward(visual, audio, audio_mask, return_aux=True)

    def contrastive_loss(self, visual_embed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE of each sample against its class's text embedding (targets arange(B))."""
        text = self.text_embeddings[target]                            # (B, text_dim)
        logits = self.logit_scale * visual_embed @ text.t()            # (B, B)
        labels = torch.arange(len(target), device=target.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
