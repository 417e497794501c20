"""Wav2Vec2 on several waveforms in one padded batch, equal to one forward per waveform.

Why: one forward per track (batch 1) leaves a GPU mostly idle. At 12k frames/s of 30 fps
video, 400 s of audio arrive every second (issue 18), so the audio must run batched.

Why not just zero-pad and call the model: Wav2Vec2-Base (``feat_extract_norm="group"``)
GroupNorms the first conv layer's output with one group per channel, i.e. a per-channel
mean/variance over the WHOLE time axis, padding included. So the first conv layer's norm is
computed here per item over its valid steps only. The later conv layers have no norm: a
valid output step sees only valid input steps (no padding inside the stack), so the padded
tail can be cut afterwards. ``feat_extract_norm="layer"`` models norm each frame on its own:
padding cannot leak there. Then the feature projection (per frame) and the encoder with an
attention mask: transformers' ``Wav2Vec2Encoder`` (and its stable-layer-norm twin) zero the
padded hidden states before the positional conv (as a one-shot run's zero padding of that
conv) and mask the padded keys in every attention layer (checked in transformers 5.25's
modeling_wav2vec2.py). Everything runs through the model's own submodules, so pretrained
weights take this path unchanged.

Measured (fp32, CPU): the batched features differ from one forward per waveform by at most
2.7e-6 (tiny group-norm model), 3.1e-6 (tiny layer-norm model) and 3.9e-6 (full-size
Wav2Vec2-Base, random weights, values up to 4.6): float rounding only (tests: 1e-4, 1e-3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def conv_steps(model, n_samples: int) -> int:
    """Output steps of the model's conv stack for ``n_samples`` (0 when too short)."""
    n = n_samples
    for layer in model.feature_extractor.conv_layers:
        k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def batchable(model) -> bool:
    """Whether ``model`` is the plain Wav2Vec2Model layout this module knows how to pad:
    no adapter (it would change the lengths again)."""
    return (hasattr(model, "feature_extractor") and hasattr(model, "feature_projection")
            and hasattr(model, "encoder") and getattr(model, "adapter", None) is None)


def plan_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches, longest first, each padded to its first (longest)
    item's length and holding at most ``budget`` padded samples (a longer item goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _group_norm_conv(layer, x, valid):
    """``Wav2Vec2GroupNormConvLayer`` on a padded batch, its norm over each item's valid steps.

    x: (B, 1, N) padded waveforms; valid: (B,) int64 valid output steps of this layer."""
    import torch

    h = layer.conv(x)  # (B, C, T)
    norm = layer.layer_norm  # GroupNorm(C groups, C channels): per channel over time
    mask = (torch.arange(h.shape[-1], device=h.device)[None] < valid[:, None])[:, None]  # (B, 1, T)
    hf = h.float()  # the statistics in fp32, as autocast runs group_norm
    count = valid.to(hf.dtype)[:, None, None]  # (B, 1, 1)
    mean = (hf * mask).sum(-1, keepdim=True) / count  # (B, C, 1)
    var = (((hf - mean) * mask) ** 2).sum(-1, keepdim=True) / count  # biased, as GroupNorm
    y = (hf - mean) * torch.rsqrt(var + norm.eps)
    if norm.affine:
        y = y * norm.weight.float()[None, :, None] + norm.bias.float()[None, :, None]
    return layer.activation(y)


def forward_padded(model, waves: list):
    """``last_hidden_state`` of each 1-D waveform tensor (all on the model's device), as a
    list of (S_i, D) tensors, computed in ONE padded batch. Every waveform must give at least
    one step (``conv_steps`` > 0)."""
    import torch

    device = waves[0].device
    lengths = [int(w.shape[0]) for w in waves]
    x = torch.zeros(len(waves), max(lengths), dtype=waves[0].dtype, device=device)  # (B, N)
    for b, w in enumerate(waves):
        x[b, : lengths[b]] = w
    valid = torch.tensor(lengths, device=device)
    h = x[:, None]  # (B, 1, N)
    for i, layer in enumerate(model.feature_extractor.conv_layers):
        k, s = layer.conv.kernel_size[0], layer.conv.stride[0]
        valid = (valid - k) // s + 1  # this layer's valid output steps per item
        if i == 0 and isinstance(getattr(layer, "layer_norm", None), torch.nn.GroupNorm):
            h = _group_norm_conv(layer, h, valid)
        else:  # no norm, or LayerNorm per frame: the padding cannot reach a valid step
            h = layer(h)
    h = h.transpose(1, 2)  # (B, T, C)
    steps = valid.tolist()
    mask = torch.arange(h.shape[1], device=device)[None] < valid[:, None]  # (B, T) bool: valid steps
    hidden, _ = model.feature_projection(h)  # (B, T, D)
    # as Wav2Vec2Model.forward: the encoder zeroes the padded steps and masks them as keys
    out = model.encoder(hidden, attention_mask=mask).last_hidden_state  # (B, T, D)
    return [out[b, : steps[b]] for b in range(len(waves))]


def encode_pieces(model, pieces: Sequence[np.ndarray], device, budget: int, autocast: bool) -> list[np.ndarray]:
    """(S_i, D) float32 features of each piece (1-D float32 waveforms, each at least one step),
    in padded batches of at most ``budget`` samples, longest first."""
    import torch

    out: list[np.ndarray | None] = [None] * len(pieces)
    for batch in plan_batches([len(p) for p in pieces], budget):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            waves = [torch.from_numpy(np.ascontiguousarray(pieces[i], dtype=np.float32)).to(
                device, non_blocking=autocast) for i in batch]
            feats = forward_padded(model, waves)
            for i, f in zip(batch, feats):
                out[i] = f.float().cpu().numpy()
    return out  # pyright: ignore[reportReturnType] - every index is filled by its batch
