"""Batches on the training/inference device, built where the features live.

Three ways, picked from where the bank is and where the model runs:
- bank and model on the same device (CPU, or ``--preload gpu``): ``gather`` there, the
  float32 conversion included. On CPU this is the plain path, unchanged.
- bank in host memory, model on a GPU: ``gather`` writes the float16 rows into PINNED
  staging buffers, a side CUDA stream copies them asynchronously, and the float32
  conversion runs on the GPU. Half the bytes cross PCIe (float16, not float32) and the copy
  overlaps compute; a fresh unpinned float32 tensor would make the copy synchronous.
- ``stage=True`` forces the staging path anywhere (on CPU without pinning): the tests use
  it to prove staged batches equal gathered ones bit for bit.

Staging buffers rotate through ``SLOTS`` slots; a slot is refilled only after its previous
copy finished (a CUDA event), so the host never overwrites rows still in flight.
"""

from __future__ import annotations

import torch

from expr.train_heads.data import Batch, FeatureBank, WindowRows, take_rows, window_rows

SLOTS = 3  # staging buffers in rotation: the one being filled, one in flight, one in use


class _Slot:
    def __init__(self, bank: FeatureBank, window: int, max_batch: int, pin: bool):
        rows_v, rows_a = max_batch * window, max_batch * bank.audio_len(window)
        self.visual = torch.empty(rows_v * bank.visual.shape[1], dtype=bank.visual.dtype, pin_memory=pin)
        self.audio = torch.empty(rows_a * bank.audio.shape[1], dtype=bank.audio.dtype, pin_memory=pin)
        self.copied: torch.cuda.Event | None = None  # recorded after the copy out of this slot


class BatchFeeder:
    """``feeder(video_idx, end_frame)`` -> float32 Batch of those windows on ``device``."""

    def __init__(self, bank: FeatureBank, window: int, device: torch.device, max_batch: int, *,
                 stage: bool | None = None):
        self.bank, self.window, self.device, self.max_batch = bank, window, torch.device(device), max_batch
        cuda = self.device.type == "cuda"
        self.staged = (bank.device.type == "cpu" and cuda) if stage is None else stage
        self.slots: list[_Slot] = []
        self.turn = 0
        if self.staged:
            pin = cuda and torch.cuda.is_available()
            self.slots = [_Slot(bank, window, max_batch, pin) for _ in range(SLOTS)]
        self.stream = torch.cuda.Stream(self.device) if self.staged and cuda else None

    def __call__(self, video_idx: torch.Tensor, end_frame: torch.Tensor) -> Batch:
        return self.take(window_rows(self.bank, video_idx, end_frame, self.window))

    def take(self, rows: WindowRows) -> Batch:
        """The batch of precomputed ``rows`` (data.window_rows/select_rows): training computes
        every window's rows once per chunk, so a batch costs only the row lookups."""
        if not self.staged:
            b = take_rows(self.bank, rows)
            return Batch(*(x.to(self.device, non_blocking=True) for x in (b.visual, b.audio, b.audio_mask)))
        if len(rows.visual) > self.max_batch:
            raise ValueError(f"a batch of {len(rows.visual)} windows exceeds the staging size {self.max_batch}")
        slot = self.slots[self.turn]
        self.turn = (self.turn + 1) % len(self.slots)
        if slot.copied is not None:
            slot.copied.synchronize()  # its rows of SLOTS batches ago must have left the host
        half = take_rows(self.bank, rows, dtype=self.bank.visual.dtype, out=(slot.visual, slot.audio))
        visual, audio = self._upload(slot, half.visual, half.audio)
        mask = half.audio_mask.to(self.device, non_blocking=True)
        return Batch(visual.float(), audio.float(), mask)  # float32 made on the device

    def _upload(self, slot: _Slot, *host: torch.Tensor) -> list[torch.Tensor]:
        """The staged half-precision tensors on the device, copied on the side stream."""
        if self.stream is None:  # forced staging on the CPU: the "copy" is the identity
            return [x.to(self.device) for x in host]
        main = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            on_device = [x.to(self.device, non_blocking=True) for x in host]
            slot.copied = torch.cuda.Event()
            slot.copied.record(self.stream)
        main.wait_stream(self.stream)
        for x in on_device:
            x.record_stream(main)  # allocated on the side stream, used on the main one
        return on_device
