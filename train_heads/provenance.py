"""What a run was trained on, and the check that ``--resume`` continues on the same.

A run records three things (in every checkpoint's meta and in config.json): the content
fingerprint of the videos it uses (``CacheReader.content_fingerprint``: backbones, text
embeddings, timing, shapes and the chunk checksums of a v2 cache), a fingerprint of their
labels as trained on, and the head's dimensions (in the weights file's head config).
``check_resume`` refuses, in one line, a resume on which any of them differs: training on
other features or labels from the middle of a run would give a silently mixed model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from expr.core.errors import ConfigError
from expr.train_heads.config import HeadConfig, TrainConfig
from expr.train_heads.splits import Split

CONTENT_KEY = "content_fingerprint"
LABELS_KEY = "labels_fingerprint"
LEGACY_KEY = "cache_fingerprint"   # v0.2 runs: backbones + (id, n_frames) only
DIM_FIELDS = ("visual_dim", "audio_dim", "text_dim")
REDO = "start the run again with --overwrite (or train into another --out)"


def labels_fingerprint(splits: dict[str, Split]) -> str:
    """Hex digest of each split's video ids and their labels as trained on (cut to the
    cached length, as the feature bank cuts them)."""
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(f"\n[{name}]".encode())
        for vid, labels in sorted(_split_labels(splits[name])):
            h.update(f"\n{vid}:".encode())
            h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _split_labels(split: Split) -> list[tuple[str, np.ndarray]]:
    if split.labels:
        return [(v, split.labels[v][:split.cache.info(v).n_frames]) for v in split.ids]
    bank = split.bank  # a bank passed to train() (expr ablate): its labels are already cut
    assert bank is not None and bank.labels is not None
    labels = bank.labels.cpu().numpy()
    return [(v, labels[bank.video_slice(i)]) for i, v in enumerate(bank.video_ids)]


def data_fingerprints(cache, splits: dict[str, Split]) -> dict[str, str]:
    """The run's record of its data: {content_fingerprint, labels_fingerprint}."""
    ids = sorted({v for split in splits.values() for v in split.ids})
    return {CONTENT_KEY: cache.content_fingerprint(ids), LABELS_KEY: labels_fingerprint(splits)}


def check_resume(run_path: Path, cfg: TrainConfig, saved_head: HeadConfig, head: HeadConfig,
                 saved_meta: dict, now: dict, saved_config: dict) -> None:
    """ConfigError naming what differs between the run's record and the data of this
    --resume: the head's dimensions, the cache content, the labels. ``now``: the
    fingerprints of this run (``data_fingerprints`` plus the legacy cache fingerprint)."""
    dims = [f"{k} {getattr(head, k)} (the run's: {getattr(saved_head, k)})"
            for k in DIM_FIELDS if getattr(head, k) != getattr(saved_head, k)]
    if dims:
        raise ConfigError(f"{run_path}: cannot --resume on {cfg.cache}: its features have {', '.join(dims)}; "
                          f"resume on the run's cache, or {REDO}")
    if CONTENT_KEY in saved_meta:
        same_cache = saved_meta[CONTENT_KEY] == now[CONTENT_KEY]
    else:  # recorded before content fingerprints: ids, lengths and backbones only
        same_cache = saved_meta.get(LEGACY_KEY, now[LEGACY_KEY]) == now[LEGACY_KEY]
    if not same_cache:
        raise ConfigError(f"{run_path}: cannot --resume: the features in {cfg.cache} are not the ones the run was "
                          "trained on (the cache was re-extracted or holds other videos); point --cache at the "
                          f"run's cache, or {REDO}")
    if LABELS_KEY in saved_meta:
        same_labels = saved_meta[LABELS_KEY] == now[LABELS_KEY]
    else:  # the class weights are what older runs recorded of their labels
        saved_weights = (saved_config.get("data") or {}).get("class_weights")
        same_labels = saved_weights is None or saved_weights == now["class_weights"]
    if not same_labels:
        raise ConfigError(f"{run_path}: cannot --resume: the labels in {cfg.labels} are not the ones the run was "
                          f"trained on (changed, added or removed files); restore them, or {REDO}")


def resumed_config(saved: dict, now: dict) -> dict:
    """config.json of a resumed run: this invocation's "train" block (options that may change
    on --resume), and the run's own record of head, cache and data kept as written (values
    recorded only since a later expr are added)."""
    out = {"train": now["train"]}
    for block in ("head", "cache", "data"):
        out[block] = {**now.get(block, {}), **(saved.get(block) or {})}
    # the run's provenance (when and with which expr it started) stays; warnings are this data's
    for key in now.keys() - out.keys():
        out[key] = saved.get(key, now[key]) if key == "provenance" else now[key]
    return out
