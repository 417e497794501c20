"""The training and validation splits of a run: which videos, their labels, their windows,
and the features either preloaded once or streamed from the cache in chunks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from expr.core.abaw import IGNORE_LABEL
from expr.cache_format import CacheReader
from expr.core.errors import ConfigError
from expr.train_heads.config import Preload, TrainConfig
from expr.train_heads.data import FeatureBank, load_bank, to_device
from expr.train_heads.labels import SPLITS as ABAW_SPLITS
from expr.train_heads.labels import load_split, preview, reconcile
from expr.train_heads.windows import BankWindows, WindowSpec, bank_windows, with_sources

MAX_WARNINGS = 5
# (name in messages and config.json, folder of the ABAW layout, TrainConfig field of its id list)
SPLITS = tuple(zip(("train", "val"), ABAW_SPLITS, ("train_list", "val_list")))


@dataclass
class Split:
    """One split. Preloaded: ``bank`` (the view that shows reference fills, ``with_sources``)
    and ``windows`` are set. Streamed (--preload none): both are None and ``chunks`` loads
    the videos a few at a time from ``cache``."""

    name: str                              # "train" | "val"
    ids: list[str]
    labels: dict[str, np.ndarray]          # video id -> (T,) labels; empty for a passed-in bank
    cache: CacheReader
    all_targets: torch.Tensor              # (N,) targets of every window (for class weights)
    bank: FeatureBank | None = None
    windows: BankWindows | None = None

    def chunks(self, cfg: TrainConfig, epoch_seed: int | None) -> Iterator[tuple[FeatureBank, BankWindows]]:
        """(bank, windows) to go through: the preloaded bank once, or the videos in groups of
        <= chunk_frames frames (shuffled by ``epoch_seed`` when given)."""
        if self.bank is not None and self.windows is not None:
            yield self.bank, self.windows
            return
        ids = list(self.ids)
        if epoch_seed is not None:
            order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(epoch_seed))
            ids = [ids[i] for i in order]
        group, frames = [], 0
        for vid in ids + [None]:
            n = self.cache.info(vid).n_frames if vid is not None else 0
            if group and (vid is None or frames + n > cfg.chunk_frames):
                bank = load_bank(self.cache, group, {v: self.labels[v] for v in group}, preload=Preload.none)
                windows = bank_windows(bank, WindowSpec.of(cfg))
                yield with_sources(bank, windows), windows
                group, frames = [], 0
            if vid is not None:
                group.append(vid)
                frames += n


def _read_labels(cfg: TrainConfig, cache: CacheReader, say: Callable[[str], None]
                 ) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Labels of both splits that are in the cache; reports what is skipped on either side."""
    labels: dict[str, dict[str, np.ndarray]] = {}
    no_cache: list[str] = []
    for name, folder, list_field in SPLITS:
        labels[name], missing, _ = reconcile(load_split(cfg.labels, folder, getattr(cfg, list_field)),
                                             cache.video_ids)
        no_cache += missing
    no_labels = sorted(set(cache.video_ids) - set(labels["train"]) - set(labels["val"]))
    both = sorted(set(labels["train"]) & set(labels["val"]))
    if both:  # validation scores of a video also trained on are not held-out scores
        say(f"the same video in {ABAW_SPLITS[0]} and {ABAW_SPLITS[1]}: {preview(both)}; its validation "
            "scores are not held out: keep each id in one split")
    if no_cache:
        say(f"label files without a cache entry (skipped): {preview(sorted(no_cache))}")
    if no_labels:
        say(f"cache entries without labels (unused): {preview(no_labels)}")
    return labels, {"labels_without_cache": len(no_cache), "cache_without_labels": len(no_labels)}


def read_splits(cfg: TrainConfig, cache: CacheReader, banks: dict[str, FeatureBank | None],
                device: torch.device, say: Callable[[str], None]) -> tuple[dict[str, Split], dict]:
    """{"train": Split, "val": Split} and the data block of config.json.

    ``banks`` may hold preloaded banks (with labels) for "train" and "val"; the other
    splits are read from ``cfg.labels`` and the cache.
    """
    labels: dict[str, dict[str, np.ndarray]] = {"train": {}, "val": {}}
    meta: dict = {}
    if any(banks.get(name) is None for name, _, _ in SPLITS):
        labels, meta = _read_labels(cfg, cache, say)
    splits = {}
    for name, _, _ in SPLITS:
        split, mismatches = _load_split(cfg, cache, name, banks.get(name), labels[name], device, say)
        splits[name] = split
        meta |= {f"{name}_videos": len(split.ids), f"{name}_windows": len(split.all_targets),
                 f"{name}_length_mismatches": mismatches}
    _report_no_audio(cfg, cache, splits, say)
    return splits, meta


def _report_no_audio(cfg: TrainConfig, cache: CacheReader, splits: dict[str, Split],
                     say: Callable[[str], None]) -> None:
    """A head with an audio stream, and not one video with audio: it trains on silence."""
    ids = [v for split in splits.values() for v in split.ids]
    if not cfg.no_audio and ids and all(v in cache and not cache.info(v).has_audio for v in ids):
        say(f"no video of the run has audio ({len(ids)} videos in {cfg.cache}): the audio stream sees only "
            "zeros; extract videos with an audio track, or pass --no-audio for a visual-only head")


def _load_split(cfg: TrainConfig, cache: CacheReader, name: str, given: FeatureBank | None,
                labels: dict[str, np.ndarray], device: torch.device, say: Callable[[str], None]
                ) -> tuple[Split, int]:
    """The split and its count of videos whose label and frame counts differ."""
    if given is not None and given.labels is None:
        raise ConfigError(f"the {name} bank passed to train() has no labels")
    ids = given.video_ids if given is not None else list(labels)
    if not ids:
        raise ConfigError(f"no {name} video of {cfg.labels} is in the cache {cfg.cache}; check the ids")
    if given is not None:
        # the caller placed it (expr ablate resolved --preload auto when it loaded the bank)
        loaded = to_device(given, device) if cfg.preload == Preload.gpu else given
    else:
        # --preload none reads only labels, masks and times here (enough for the windows)
        loaded = load_bank(cache, ids, labels, preload=cfg.preload, device=device,
                           features=cfg.preload != Preload.none)
        _report_mismatches(loaded.warnings, say)
    windows = bank_windows(loaded, WindowSpec.of(cfg))
    if len(windows) == 0:
        raise ConfigError(_no_windows(cfg, name, loaded))
    split = Split(name, ids, labels, cache, windows.target.cpu())
    if not (cfg.preload == Preload.none and given is None):
        split.bank, split.windows = with_sources(loaded, windows), windows
    return split, len(loaded.warnings)


def _no_windows(cfg: TrainConfig, name: str, bank: FeatureBank) -> str:
    """Why a split has no window, and what to do: a shorter --window helps only when frames
    are labelled."""
    if bank.labels is not None and not bool((bank.labels != IGNORE_LABEL).any()):
        return (f"no {name} windows: no {name} frame is labelled (every label is {IGNORE_LABEL}) in the "
                f"{len(bank.video_ids)} {name} video(s) of {cfg.labels}; label some frames or choose other videos")
    return (f"no {name} windows: every {name} video is shorter than --window {cfg.window} frames or has no "
            "valid target frame; lower --window")


def _report_mismatches(warnings: list[str], say: Callable[[str], None]) -> None:
    for line in warnings[:MAX_WARNINGS]:
        say(line)
    if len(warnings) > MAX_WARNINGS:
        say(f"... and {len(warnings) - MAX_WARNINGS} more videos whose label and frame counts differ")
