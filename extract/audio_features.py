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

``encode_many`` gives the same features for several tracks at once. With batching on (the
default on CUDA, after a start-up check) their pieces (one-shot tracks and chunks) run in
padded batches across tracks (audio_batch.py), equal to one forward per piece within float
rounding (at most 4e-6 measured in fp32 on CPU). On CPU it is off by default: a track's
features would then depend, in the last bits, on which tracks shared its batch, and a
resumed run's cache would no longer be bit-identical to a clean run's (tested), the image
encoder limits a CPU run anyway, and batching gave no measurable gain on 2 shared cores
(docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from expr.core.abaw import audio_steps
from expr.extract.specs import AudioSpec


def normalise_waveform(samples: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance, as Wav2Vec2FeatureExtractor(do_normalize=True) does."""
    samples = np.asarray(samples, dtype=np.float32)
    return (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)


BATCHING = ("auto", "on", "off")  # AudioEncoder(batching=...): Wav2Vec2 batched across tracks
# fp16 on CUDA moves Wav2Vec2-Base's values (up to ~5) by up to ~6e-3 against fp32; a padding
# leak (the failure the check is for) moves them by far more
CHECK_TOLERANCE = 5e-2


def decide_batching(device_type: str, check) -> tuple[str, str | None]:
    """ "on" or "off" for batching="auto", and at most one note: on CUDA after ``check()``
    (None: passed, else why not) passes; never on CPU (see the module docstring)."""
    if device_type != "cuda":
        return "off", None
    problem = check()
    if problem is None:
        return "on", None
    return "off", (f"Wav2Vec2 batched across tracks failed its start-up check on {device_type} ({problem}); "
                   "tracks run one at a time (slower, same features)")


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
                 chunk_seconds: float = 30.0, context_seconds: float = 2.0, batch_seconds: float = 240.0,
                 batching: str = "auto"):
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
        # encode_many: padded samples per batch (longest pieces first). 240 s: about eight
        # 30 s chunks with their context; the first conv layer's fp32 output is ~1.6 GB then.
        self.batch_samples = max(1, int(batch_seconds * spec.sample_rate))
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        self.batching = batching  # "auto": decided on the first encode_many (decide_batching)
        self.note: str | None = None  # why "auto" fell back to one piece at a time, if it did

    def n_steps(self, n_samples: int) -> int:
        return audio_steps(n_samples, self.spec.receptive_field, self.spec.hop)

    def __call__(self, samples: np.ndarray) -> np.ndarray | None:
        """Features of ``samples`` ((n,) float32), or None when shorter than one step."""
        plan = self.pieces(samples)
        return self._joined(len(samples), plan, [self._run(piece) for piece, _ in plan])

    def _joined(self, n_samples: int, plan: list[tuple[np.ndarray, slice]], feats: list[np.ndarray]):
        """One track's features from its pieces' (``pieces``) features: each one's kept steps, in
        order; None for a track shorter than one step."""
        if not plan:
            return None
        joined = np.concatenate([f[keep] for f, (_, keep) in zip(feats, plan)])
        if joined.shape[0] != self.n_steps(n_samples):  # guards the chunk arithmetic; never expected
            raise RuntimeError(f"audio features have {joined.shape[0]} steps, expected {self.n_steps(n_samples)}")
        return joined

    def pieces(self, samples: np.ndarray) -> list[tuple[np.ndarray, slice]]:
        """The waveforms Wav2Vec2 runs on for one track, each with the slice of its output steps
        kept: the whole (normalised) track when it fits in one chunk, else its chunks with
        context, in order. Empty when the track is shorter than one step."""
        n_steps = self.n_steps(len(samples))
        if n_steps == 0:
            return []
        if self.spec.normalize:
            samples = normalise_waveform(samples)  # over the whole track, like a one-shot run
        if n_steps <= self.chunk_steps:
            return [(samples, slice(0, n_steps))]
        hop, field = self.spec.hop, self.spec.receptive_field
        return [(samples[c.ctx_start * hop: (c.ctx_stop - 1) * hop + field],
                 slice(c.start - c.ctx_start, c.stop - c.ctx_start))
                for c in plan_chunks(n_steps, self.chunk_steps, self.context_steps)]

    def check_batching(self) -> str | None:
        """The start-up check: a short and a long synthetic track, batched together vs one
        plain model forward each (``_run``); None when they agree, else what went wrong."""
        from expr.extract.audio_batch import encode_pieces

        rng = np.random.default_rng(0)
        tracks = [normalise_waveform(rng.standard_normal(n)) for n in (8_000, 48_000)]  # 0.5 s, 3 s
        try:
            batched = encode_pieces(self.model, tracks, self.device, 10 * 48_000, autocast=self.device.type == "cuda")
            alone = [self._run(t) for t in tracks]
            worst = max(float(np.abs(b - a).max()) for b, a in zip(batched, alone))
        except Exception as exc:  # noqa: BLE001 - any failure means: do not batch
            return f"{type(exc).__name__}: {exc}"
        if not worst <= CHECK_TOLERANCE:  # NaN fails too
            return f"batched features differ from one track at a time by up to {worst:.3g}"
        return None

    def batches_tracks(self) -> bool:
        """Whether encode_many batches across tracks (resolves "auto" once)."""
        if self.batching == "auto":
            self.batching, self.note = decide_batching(self.device.type, self.check_batching)
        return self.batching == "on"

    def encode_many(self, tracks: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """``self(track)`` for each track; with batching on, the pieces of all tracks run in
        padded batches (equal within float rounding). A track passed twice (the same memory
        and length: the two faces of one ABAW video) is encoded once."""
        import torch

        from expr.extract.audio_batch import batchable, encode_pieces

        tracks = [np.asarray(t, dtype=np.float32) for t in tracks]
        first: dict[tuple[int, int], int] = {}  # (data address, length) -> first track index
        same = [first.setdefault((t.__array_interface__["data"][0], len(t)), i) for i, t in enumerate(tracks)]
        out: list[np.ndarray | None] = []
        if not (batchable(self.model) and self.batches_tracks()):  # one plain forward per piece
            for i, track in enumerate(tracks):
                out.append(out[same[i]] if same[i] < i else self(track))
            return out
        plans = [self.pieces(t) if same[i] == i else [] for i, t in enumerate(tracks)]
        flat = [piece for plan in plans for piece, _ in plan]
        # on CUDA on the audio's own stream (see __init__), fp16 autocast as in _run
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            feats = iter(encode_pieces(self.model, flat, self.device, self.batch_samples,
                                       autocast=self.device.type == "cuda"))
        for i, plan in enumerate(plans):
            if same[i] < i:  # the same track as an earlier one
                out.append(out[same[i]])
            else:
                out.append(self._joined(len(tracks[i]), plan, [next(feats) for _ in plan]))
        return out

    def _run(self, samples: np.ndarray) -> np.ndarray:
        import torch

        cuda = self.device.type == "cuda"
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None]  # (1, n)
        stream = torch.cuda.stream(self.stream) if cuda else contextlib.nullcontext()
        with stream, torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=cuda):
            x = x.to(self.device, non_blocking=cuda)
            out = self.model(x).last_hidden_state[0]  # (S, D)
            return out.float().cpu().numpy()
