"""Features in memory, windows as index arithmetic, batches by one vectorised gather.

``load_bank`` reads the listed videos of a cache ONCE into contiguous float16 tensors with
per-video offsets. A window is (video index, end frame); ``gather`` turns B windows into
a (B, W, Dv) visual and (B, A, Da) audio batch with a handful of tensor ops - no per-window
Python and no per-window Zarr read, which is what makes an epoch fast.

Protocols:
- training / window-level evaluation: the windows of ``--windows`` (windows.py, ``bank_windows``);
  a filled frame of a reference window reads its source row (``FeatureBank.source_rows``, set
  on the view ``windows.with_sources`` makes) for its visual features, its own for audio;
- per-frame inference: one causal window ending at each frame, the first frame repeated
  before frame 0 - ``gather`` accepts ends < window - 1 for that; no-face frames filled
  from the last face frame (inference.with_face_fill, ``--no-face``).

Audio of a window covers the same seconds as its frames, by that video's own timestamps
(never a global 30 fps): steps floor(t0 * rate) ... for ceil((t1 - t0) * rate) steps, with
rate = sample_rate / hop of the audio backbone (~50 Hz for Wav2Vec2). The batch has a fixed
``A = audio_len(window)`` steps; steps past the span, before 0, past the end of the audio or
of a video without audio are zero and masked.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from expr.core.abaw import HOP, SAMPLE_RATE
from expr.cache_format import BackboneRecords, CacheReader, open_cache
from expr.train_heads.config import Preload

DEFAULT_AUDIO_RATE = SAMPLE_RATE / HOP  # Wav2Vec2: 16 kHz / hop 320 = 50 steps per second


@dataclass
class FeatureBank:
    """The features and labels of a list of videos, concatenated along time."""

    video_ids: list[str]
    visual: torch.Tensor          # (sum T, Dv) float16
    audio: torch.Tensor           # (sum S + 1, Da) float16; the last row is zeros (padding target)
    frame_offsets: torch.Tensor   # (V,) int64, first row of each video in ``visual``
    audio_offsets: torch.Tensor   # (V,) int64, first row of each video in ``audio``
    n_frames: torch.Tensor        # (V,) int64
    audio_steps: torch.Tensor     # (V,) int64, 0 without audio
    fps: torch.Tensor             # (V,) float64, each video's own frame rate
    timestamps: torch.Tensor      # (sum T,) float64 seconds
    frame_mask: torch.Tensor      # (sum T,) bool, face present
    labels: torch.Tensor | None   # (sum T,) int64 -1..7 as annotated (-1 = ignore), or None
    audio_rate: float = DEFAULT_AUDIO_RATE   # audio steps per second
    min_fps: float = 25.0         # lowest fps in the bank (fixes the audio length of a window)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    warnings: list[str] = field(default_factory=list)  # label/cache length mismatches
    # (sum T,) int64 row whose visual features each frame shows (None = its own): set only on
    # the views ``with_sources`` (reference windows) and inference.with_face_fill (per-frame
    # inference, --no-face fill) make.
    source_rows: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor:
        """(sum T,) bool: frames that count for training: labelled and with a face."""
        if self.labels is None:
            return self.frame_mask.clone()
        return (self.labels >= 0) & self.frame_mask

    def audio_len(self, window: int) -> int:
        """Fixed audio steps A of a ``window``-frame batch: the span of the slowest video + 1
        (a span that starts mid-step touches one more step)."""
        return math.ceil(window / self.min_fps * self.audio_rate) + 1

    def video_slice(self, v: int) -> slice:
        start = int(self.frame_offsets[v])
        return slice(start, start + int(self.n_frames[v]))

    def __len__(self) -> int:
        return len(self.video_ids)


@dataclass
class Batch:
    visual: torch.Tensor      # (B, W, Dv) float32
    audio: torch.Tensor       # (B, A, Da) float32, zeros where masked
    audio_mask: torch.Tensor  # (B, A) bool, True = real audio


def _audio_rate(backbones: BackboneRecords) -> float:
    return float(backbones.audio.steps_per_second or DEFAULT_AUDIO_RATE)


# --preload auto puts the bank on the GPU only when it takes at most this share of the free
# memory: the step's activations, the optimiser and cuDNN's workspaces need the rest.
GPU_SHARE = 0.5


def resolve_preload(setting: str, device: str | torch.device, nbytes: int,
                    free_bytes: int | None = None) -> str:
    """``--preload auto`` made concrete: ``gpu`` on a CUDA device when ``nbytes`` of features
    fit in ``GPU_SHARE`` of its free memory (``free_bytes``, measured when None), else ``cpu``.
    Gathering a batch from a GPU-resident bank costs no host work and no copy per step."""
    if setting != Preload.auto:
        return setting
    device = torch.device(device)
    if device.type != "cuda":
        return Preload.cpu
    free = free_bytes if free_bytes is not None else torch.cuda.mem_get_info(device)[0]
    return Preload.gpu if nbytes <= GPU_SHARE * free else Preload.cpu


def bank_nbytes(n_frames: int, audio_steps: int, visual_dim: int, audio_dim: int) -> int:
    """Bytes of a bank's float16 features (the visual rows and the audio rows + one zero row)."""
    return 2 * (n_frames * visual_dim + (audio_steps + 1) * audio_dim)


def load_bank(
    cache: CacheReader | str | Path,
    video_ids: list[str],
    labels: dict[str, np.ndarray] | None,
    *,
    preload: str = "cpu",
    device: str | torch.device = "cpu",
    on_video: Callable[[int, int, str], None] | None = None,
    features: bool = True,
) -> FeatureBank:
    """Read ``video_ids`` of ``cache`` into one FeatureBank.

    ``labels`` maps video id -> (T,) labels; a length that differs from the cache is
    truncated to the shorter (frames past it are dropped) with one line in ``bank.warnings``.
    ``preload``: "gpu" puts the tensors on ``device``; "cpu" keeps them in (pinned, when
    CUDA is there) host memory; "none" is plain host memory (the caller streams chunks);
    "auto" is "gpu" when ``device`` is CUDA and the features fit (``resolve_preload``), else "cpu".
    ``on_video(i, n, video_id)`` reports progress. ``features=False`` reads only labels,
    masks and times (zero-row feature tensors): enough for ``windows.bank_windows``.
    """
    if not isinstance(cache, CacheReader):
        with open_cache(cache) as reader:
            return load_bank(reader, video_ids, labels, preload=preload, device=device,
                             on_video=on_video, features=features)
    infos = [cache.info(v) for v in video_ids]
    warnings = []
    lengths = []
    for info in infos:
        n = info.n_frames
        if labels is not None:
            n_lab = len(labels[info.video_id])
            if n_lab != n:
                warnings.append(f"{info.video_id}: {n_lab} labels but {n} cached frames; using the first {min(n, n_lab)}")
                n = min(n, n_lab)
        lengths.append(n)
    steps = [info.audio_steps for info in infos]
    total_t, total_s = sum(lengths), sum(steps)
    rows_t, rows_s = (total_t, total_s) if features else (0, 0)
    preload = resolve_preload(preload, device, bank_nbytes(rows_t, rows_s, cache.visual_dim, cache.audio_dim))
    pin = preload == Preload.cpu and torch.cuda.is_available()
    visual = torch.empty((rows_t, cache.visual_dim), dtype=torch.float16, pin_memory=pin)
    audio = torch.zeros((rows_s + 1, cache.audio_dim), dtype=torch.float16, pin_memory=pin)
    timestamps = torch.empty(total_t, dtype=torch.float64)
    frame_mask = torch.empty(total_t, dtype=torch.bool)
    lab = torch.full((total_t,), -1, dtype=torch.int64) if labels is not None else None
    t = s = 0
    for i, (info, n) in enumerate(zip(infos, lengths)):
        vid = info.video_id
        if features:
            visual[t:t + n] = torch.from_numpy(cache.visual(vid, 0, n))
        if features and info.audio_steps:
            audio[s:s + info.audio_steps] = torch.from_numpy(cache.audio(vid))
        timestamps[t:t + n] = torch.from_numpy(cache.timestamps(vid)[:n])
        frame_mask[t:t + n] = torch.from_numpy(cache.frame_mask(vid)[:n])
        if lab is not None and labels is not None:
            lab[t:t + n] = torch.from_numpy(np.asarray(labels[vid][:n], dtype=np.int64))
        t += n
        s += info.audio_steps
        if on_video:
            on_video(i + 1, len(infos), vid)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    steps_t = torch.tensor(steps, dtype=torch.int64)
    dev = torch.device(device) if preload == "gpu" else torch.device("cpu")
    bank = FeatureBank(
        video_ids=list(video_ids),
        visual=visual, audio=audio,
        frame_offsets=torch.cumsum(lengths_t, 0) - lengths_t,
        audio_offsets=torch.cumsum(steps_t, 0) - steps_t,
        n_frames=lengths_t, audio_steps=steps_t,
        fps=torch.tensor([info.fps for info in infos], dtype=torch.float64),
        timestamps=timestamps, frame_mask=frame_mask, labels=lab,
        audio_rate=_audio_rate(cache.backbones),
        min_fps=min((info.fps for info in infos), default=25.0),
        warnings=warnings,
    )
    return to_device(bank, dev) if dev.type != "cpu" else bank


def to_device(bank: FeatureBank, device: str | torch.device) -> FeatureBank:
    """The same bank with every tensor on ``device``."""
    device = torch.device(device)
    moved = {k: v.to(device, non_blocking=True) for k, v in vars(bank).items() if isinstance(v, torch.Tensor)}
    return dataclasses.replace(bank, **moved, device=device)


def _take(table: torch.Tensor, rows: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None) -> torch.Tensor:
    """(B, L, D) rows of ``table`` for (B, L) ``rows``; into the front of ``out`` (a flat
    staging buffer of the table's dtype) when given, so that no fresh tensor is allocated."""
    flat = rows.reshape(-1)
    if out is None:
        # index_select on the flat row list: the fastest CPU gather (vs advanced indexing)
        taken = table.index_select(0, flat)
    else:
        taken = torch.index_select(table, 0, flat, out=out[:flat.numel() * table.shape[1]].view(-1, table.shape[1]))
    return taken.view(*rows.shape, -1).to(dtype)  # .to is a no-op when the dtype matches


@dataclass
class WindowRows:
    """Bank rows of windows, computed once (``window_rows``) so that a batch is only ``take``s."""

    visual: torch.Tensor      # (N, W) int64 rows of ``bank.visual`` (source rows applied)
    audio: torch.Tensor       # (N, A) int64 rows of ``bank.audio`` (the zero row where masked)
    audio_mask: torch.Tensor  # (N, A) bool, True = real audio


def window_rows(bank: FeatureBank, video_idx: torch.Tensor, end_frame: torch.Tensor, window: int) -> WindowRows:
    """The rows ``gather`` reads for the windows ending at ``end_frame``, on the bank's device."""
    dev = bank.device
    video_idx = video_idx.to(dev)
    end_frame = end_frame.to(dev)
    n = bank.n_frames[video_idx]                                    # (B,)
    offsets = bank.frame_offsets[video_idx]                         # (B,)
    frames = end_frame[:, None] - (window - 1) + torch.arange(window, device=dev)  # (B, W)
    # Frames before 0 repeat the first frame (per-frame protocol padding).
    rows = offsets[:, None] + torch.minimum(frames.clamp(min=0), (n - 1)[:, None])
    # Reference windows: a filled frame shows its source frame (audio below stays on own rows).
    vrows = rows if bank.source_rows is None else bank.source_rows[rows]

    # Time span of the window by the video's own clock: frames before 0 extend it backwards.
    fps = bank.fps[video_idx]
    first_ts = bank.timestamps[offsets]
    start = end_frame - (window - 1)
    t0 = torch.where(start >= 0, bank.timestamps[offsets + start.clamp(min=0)], first_ts + start / fps)
    t1 = bank.timestamps[offsets + torch.minimum(end_frame, n - 1)] + 1.0 / fps
    s0 = torch.floor(t0 * bank.audio_rate + 1e-6).long()            # (B,) (+eps: 0.8 s * 50 = 39.99...)
    span = torch.ceil((t1 - t0) * bank.audio_rate - 1e-6).long()    # (B,) steps of this window
    A = bank.audio_len(window)
    k = torch.arange(A, device=dev)
    steps = s0[:, None] + k                                         # (B, A) step index in the video
    mask = (steps >= 0) & (steps < bank.audio_steps[video_idx][:, None]) & (k < span[:, None])
    pad_row = bank.audio.shape[0] - 1                               # the zero row
    arows = torch.where(mask, bank.audio_offsets[video_idx][:, None] + steps, pad_row)
    return WindowRows(vrows, arows, mask)


def take_rows(bank: FeatureBank, rows: WindowRows, *, dtype: torch.dtype = torch.float32,
              out: tuple[torch.Tensor, torch.Tensor] | None = None) -> Batch:
    """The Batch of ``rows`` (a ``window_rows`` result, or a selection of one's windows)."""
    visual = _take(bank.visual, rows.visual, dtype, out[0] if out else None)  # (B, W, Dv)
    audio = _take(bank.audio, rows.audio, dtype, out[1] if out else None)     # (B, A, Da)
    return Batch(visual, audio, rows.audio_mask)


def select_rows(rows: WindowRows, idx: torch.Tensor) -> WindowRows:
    """The rows of windows ``idx`` (on the rows' device)."""
    idx = idx.to(rows.visual.device)
    return WindowRows(rows.visual[idx], rows.audio[idx], rows.audio_mask[idx])


def gather(bank: FeatureBank, video_idx: torch.Tensor, end_frame: torch.Tensor, window: int, *,
           dtype: torch.dtype = torch.float32, out: tuple[torch.Tensor, torch.Tensor] | None = None) -> Batch:
    """Visual (B, W, Dv) and audio (B, A, Da) of the windows ending at ``end_frame``.

    ``dtype=torch.float16`` keeps the bank's half precision (the caller converts on its
    device); ``out`` = (visual, audio) flat buffers to fill instead of allocating.
    """
    return take_rows(bank, window_rows(bank, video_idx, end_frame, window), dtype=dtype, out=out)
