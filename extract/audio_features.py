"""Wav2Vec2 features of a whole audio track, in overlapping chunks for long audio.

Wav2Vec2's conv stack maps N samples to exactly ``floor((N - 400) / 320) + 1`` steps (step j
sees samples [320 j, 320 j + 400)). Its self-attention is quadratic in length (a 15-minute
track is ~45k steps), so a track longer than ``chunk_seconds`` is cut into chunks of whole
steps, each run with ``context_seconds`` of extra audio on both sides, and only the chunk's
own steps are kept. The stitched result has exactly the one-shot length by construction.

It is not bit-equal to a one-shot run, and cannot be: every step attends to the whole input,
and Wav2Vec2-Base's first conv layer GroupNorms over the whole input. The context keeps each
kept step's neighbourhood intact; what changes is the far context, which the model weights
little. A track that fits in one chunk is run one-shot (bit-identical).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from expr.abaw import audio_steps
from expr.extract.specs import AudioSpec


def normalise_waveform(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, as Wav2Vec2FeatureExtractor(do_normalize=True) does."""
    samples = np.asarray(samples, dtype=np.float32)
    return (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)


@dataclass(frozen=True)
class Chunk:
    """Output steps [start, stop) computed from steps [ctx_start, ctx_stop) of context."""

    start: int
    stop: int
    ctx_start: int
    ctx_stop: int


def plan_chunks(n_steps: int, chunk_steps: int, context_steps: int) -> list[Chunk]:
    """Cover steps [0, n_steps) with chunks of ``chunk_steps``, each with context both sides."""
    if chunk_steps < 1 or context_steps < 0:
        raise ValueError(f"chunk_steps {chunk_steps} must be >= 1, context_steps {context_steps} >= 0")
    return [
        Chunk(a, min(a + chunk_steps, n_steps), max(0, a - context_steps),
              min(n_steps, a + chunk_steps + context_steps))
        for a in range(0, n_steps, chunk_steps)
    ]


class AudioEncoder:
    """Turns a mono waveform at the spec's sample rate into (S, D) float32 features."""

    def __init__(self, model, spec: AudioSpec, device: str = "cpu",
                 chunk_seconds: float = 30.0, context_seconds: float = 2.0):
        import torch

        self.spec = spec
        self.device = torch.device(device)
        self.model = model.to(self.device)
        # On CUDA the audio runs in its own thread (see encoder_feed.py) on its own stream, so that its
        # kernels overlap with the image encoder's instead of queueing behind them.
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        steps_per_second = spec.sample_rate / spec.hop
        self.chunk_steps = max(1, int(round(chunk_seconds * steps_per_second)))
        self.context_steps = max(0, int(round(context_seconds * steps_per_second)))

    def n_steps(self, n_samples: int) -> int:
        return audio_steps(n_samples, self.spec.receptive_field, self.spec.hop)

    def __call__(self, samples: np.ndarray) -> np.ndarray | None:
        """Features of ``samples`` ((n,) float32), or None when shorter than one step."""
        n_steps = self.n_steps(len(samples))
        if n_steps == 0:
            return None
        if self.spec.normalize:
            samples = normalise_waveform(samples)  # over the whole track, like a one-shot run
        if n_steps <= self.chunk_steps:
            feats = self._run(samples)
        else:
            feats = np.concatenate([self._run_chunk(samples, c) for c in
                                    plan_chunks(n_steps, self.chunk_steps, self.context_steps)])
        if feats.shape[0] != n_steps:  # guards the arithmetic above; never expected
            raise RuntimeError(f"audio features have {feats.shape[0]} steps, expected {n_steps}")
        return feats

    def _run_chunk(self, samples: np.ndarray, c: Chunk) -> np.ndarray:
        hop, field = self.spec.hop, self.spec.receptive_field
        piece = samples[c.ctx_start * hop: (c.ctx_stop - 1) * hop + field]
        feats = self._run(piece)  # (ctx_stop - ctx_start, D)
        return feats[c.start - c.ctx_start: c.stop - c.ctx_start]

    def _run(self, samples: np.ndarray) -> np.ndarray:
        import torch

        cuda = self.device.type == "cuda"
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]  # (1, n)
        stream = torch.cuda.stream(self.stream) if cuda else contextlib.nullcontext()
        with stream, torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            x = x.to(self.device, non_blocking=cuda)
            out = self.model(x).last_hidden_state[0]  # (S, D)
            return out.float().cpu().numpy()
