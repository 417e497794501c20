"""Small training configurations shared by the stage-two tests (real TrainConfig, tiny heads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expr.train_heads import SyntheticDataset, TrainConfig, write_synthetic_dataset

# A head small enough for seconds per epoch on a CPU, with every part of the paper's model.
SMALL: dict[str, Any] = dict(window=16, stride=4, channels=32, tcn_levels=3, heads=4, batch_size=16, accum=2,
                             lr=1e-3, min_lr=1e-4, device="cpu")
# Smaller still, for tests that train many runs (resume, kill, overwrite).
TINY: dict[str, Any] = dict(window=8, stride=4, channels=8, tcn_levels=1, heads=2, batch_size=32, accum=1,
                            lr=1e-3, min_lr=1e-4, device="cpu", epochs=2)


def train_config(ds: SyntheticDataset, out: Path, head: dict[str, Any], **kw) -> TrainConfig:
    """``head`` (SMALL or TINY) on ``ds``'s cache and labels, written to ``out``; ``kw`` overrides."""
    return TrainConfig(**{"cache": ds.cache, "labels": ds.labels, "out": out, **head, **kw})


def small_dataset(tmp_path_factory, name: str) -> SyntheticDataset:
    """4 train + 2 val synthetic videos with small feature dims: what SMALL heads train on."""
    return write_synthetic_dataset(tmp_path_factory.mktemp(name), n_train=4, n_val=2,
                                   visual_dim=64, audio_dim=48, text_dim=16)
