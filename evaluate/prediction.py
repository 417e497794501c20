"""`expr predict`: one label per frame of every listed video, as an ABAW submission file,
and (with a folder --out) each video's per-frame table and timeline.

This module predicts from a feature cache; ``expr.app.pipeline`` extracts raw ``--videos`` into
one first, with the run's backbones, and then calls ``predict_run``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np

from expr.core.abaw import NUM_CLASSES
from expr.core.atomic import PNG_MAGIC, starts_with, write_json
from expr.core.devices import resolve_device
from expr.core.errors import CacheSchemaError
from expr.evaluate.config import PredictConfig
from expr.evaluate.manifest import SUBMISSION_FILE, manifest_path
from expr.evaluate.scoring import check_backbones, check_in_cache
from expr.evaluate.submission import check_ids, write_submission


@dataclass(frozen=True)
class PredictOut:
    """The files of a ``expr predict --out`` folder; nothing else spells them."""

    path: Path

    @property
    def cache(self) -> Path:
        """Where --videos are extracted to without --cache (kept: a rerun extracts only new videos)."""
        return Path(self.path) / "feats.zarr"

    @property
    def submission(self) -> Path:
        return Path(self.path) / SUBMISSION_FILE

    @property
    def manifest(self) -> Path:
        return manifest_path(self.path)

    def frame_csv(self, video_id: str) -> Path:
        return Path(self.path) / "frames" / f"{video_id}.csv"

    def timeline_png(self, video_id: str) -> Path:
        return Path(self.path) / "timelines" / f"{video_id}.png"


def _write_manifest(cfg: PredictConfig, run, device, backbones: dict, report: "PredictReport") -> Path:
    """The record of what made the predictions: run, checkpoint, cache, backbones, settings."""
    from expr import now_utc, version_text

    run_cache = run.meta.get("cache") or {}
    return write_json(manifest_path(cfg.out), {
        "written": now_utc(),
        "expr": version_text(),
        "run": {"path": str(Path(cfg.run).resolve()), "checkpoint": cfg.checkpoint, "epoch": run.meta.get("epoch"),
                "trained_on_cache": run_cache.get("path"), "trained_on_fingerprint": run_cache.get("fingerprint")},
        "cache": {"path": str(Path(cfg.cache).resolve()) if cfg.cache is not None else None, "backbones": backbones},
        "device": str(device),
        "settings": {"window": run.train_config.window, "smooth": cfg.smooth,
                     "smooth_mode": cfg.smooth_mode if cfg.smooth > 1 else None,
                     "no_face": cfg.no_face, "filled_frames": report.filled_frames},
        "videos": report.n_videos,
        "frames": report.n_rows,
        "submission": str(report.out),
        "probabilities": str(report.probs) if report.probs else None,
    })


@dataclass
class PredictReport:
    out: Path                     # the submission CSV
    probs: Path | None
    n_videos: int
    n_rows: int                   # frames = rows below the header
    class_counts: list[int]       # predicted frames per class
    frame_csvs: list[Path] = field(default_factory=list)   # one per video (folder --out)
    timelines: list[Path] = field(default_factory=list)    # one per video (folder --out)
    extracted: list[str] = field(default_factory=list)     # videos extracted by this call (--videos)
    reused: list[str] = field(default_factory=list)        # videos of --videos already in the cache
    failed: dict[str, str] = field(default_factory=dict)   # videos that could not be extracted: not predicted
    cache: Path | None = None
    no_face: str = "fill"         # what a no-face frame showed (--no-face)
    filled_frames: int = 0        # no-face frames shown the last face frame's features (--no-face fill)
    manifest: Path | None = None                            # which run, checkpoint and cache made them
    backbones: dict = field(default_factory=dict)           # the cache's record (weights null: random)


def listed_ids(cfg: PredictConfig) -> list[str] | None:
    """The ids of ``--ids`` (file order, duplicates dropped), checked for the submission; None without it."""
    from expr.train_heads import read_id_list

    if cfg.ids is None:
        return None
    ids = list(dict.fromkeys(vid for _, vid in read_id_list(cfg.ids)))
    check_ids(ids)
    return ids


def predict_run(cfg: PredictConfig, *, video_ids: Sequence[str] | None = None,
                on_stage: Callable[[str], None] | None = None) -> PredictReport:
    """Predict every frame (a face or not: the causal window ending there decides) of
    ``video_ids`` (default: ``--ids``, else every cached video) in ``cfg.cache``; write the
    submission (and probabilities), each validated before it replaces anything, and with a
    folder ``--out`` each video's CSV and timeline."""
    from expr.cache_format import open_cache
    from expr.train_heads import frame_probabilities, load_bank, load_run, with_face_fill

    stage = on_stage or (lambda _msg: None)
    cfg.validate()
    ids = list(video_ids) if video_ids is not None else listed_ids(cfg)  # before any work
    if cfg.cache is None:
        raise CacheSchemaError("predict_run needs cfg.cache: extract --videos first (expr.app.pipeline.predict_videos)")
    device = resolve_device(cfg.device)
    run = load_run(cfg.run, cfg.checkpoint, device)
    with open_cache(cfg.cache) as cache:
        check_backbones(run, cache.backbones, cfg.run, cfg.cache)
        backbones = cache.backbones.to_dict()
        if ids is not None:
            check_in_cache(ids, cache.video_ids, str(cfg.ids or cfg.cache))
        else:
            ids = cache.video_ids
            check_ids(ids)
        if not ids:
            raise CacheSchemaError(f"{cfg.cache}: the cache holds no complete video to predict")
        stage(f"loading {len(ids)} videos from {cfg.cache}")
        bank = load_bank(cache, ids, None, preload=cfg.preload, device=device)
    stage(f"predicting {int(bank.n_frames.sum()):,} frames")
    view = with_face_fill(bank, cfg.no_face)    # once: inference reads it, the report counts its fills
    probs = frame_probabilities(run.model.eval(), view, run.train_config.window, batch_size=cfg.batch_size,
                                smooth=cfg.smooth, smooth_mode=cfg.smooth_mode, no_face=None)
    shown = view.source_rows    # None for raw
    filled = 0 if shown is None else int((shown.cpu().numpy() != np.arange(len(shown))).sum())
    per_video = dict(zip(bank.video_ids, probs))
    labels = {vid: p.argmax(1) for vid, p in per_video.items()}
    folder = PredictOut(cfg.out) if cfg.out_is_folder else None
    submission = folder.submission if folder else Path(cfg.out)
    submission.parent.mkdir(parents=True, exist_ok=True)
    if folder and cfg.overwrite:  # another run's per-video files must not outlive its submission
        _remove_per_video_files(folder)
    write_submission(submission, labels, probabilities=per_video if cfg.probs else None, probs_path=cfg.probs)
    all_labels = np.concatenate(list(labels.values()))
    report = PredictReport(submission, cfg.probs, len(labels), int(all_labels.size),
                           np.bincount(all_labels, minlength=NUM_CLASSES).tolist(), cache=Path(cfg.cache),
                           no_face=cfg.no_face, filled_frames=filled, backbones=backbones)
    # The manifest follows the submission at once: the per-video files take the longest, and a
    # kill among them must not leave this submission beside a manifest naming another run.
    report.manifest = _write_manifest(cfg, run, device, backbones, report)
    if folder:
        # A re-run of fewer videos (or without --timelines): the earlier files of the videos
        # it did not predict go now, after the new submission and manifest, so a kill here
        # only removes files that the submission in place no longer names.
        _remove_per_video_files(folder, keep=_per_video_paths(folder, labels, cfg.timelines))
        _write_per_video(folder, bank, probs, cfg.timelines, report, stage)
    return report


def _per_video_paths(folder: PredictOut, video_ids, timelines: bool) -> set[Path]:
    """The per-video files a prediction of ``video_ids`` writes into ``folder``."""
    paths = {folder.frame_csv(vid) for vid in video_ids}
    return paths | {folder.timeline_png(vid) for vid in video_ids} if timelines else paths


def _remove_per_video_files(folder: PredictOut, keep: Collection[Path] = ()) -> None:
    """The per-video files an earlier `expr predict` wrote, but those in ``keep`` (this
    prediction rewrites them), and nothing else: all of them for --overwrite, the videos a
    re-run no longer predicts otherwise. frames/ and timelines/ are common names (ABAW's
    cropped_aligned frames, the --frames input, may well sit in OUT/frames/): only plain files
    that start as predict's frame tables and timeline PNGs do are removed; a linked folder
    and anything else stay."""
    from expr.evaluate.video_outputs import FRAME_CSV_HEADER

    table = (",".join(FRAME_CSV_HEADER) + "\n").encode()
    for sub, suffix, start in ((folder.frame_csv("_").parent, ".csv", table),
                               (folder.timeline_png("_").parent, ".png", PNG_MAGIC)):
        if sub.is_symlink() or not sub.is_dir():
            continue
        for path in sub.iterdir():
            if path in keep or path.suffix != suffix or path.is_symlink() or not path.is_file():
                continue
            if starts_with(path, start):
                path.unlink()
        with contextlib.suppress(OSError):  # not empty: someone else's files are in it
            sub.rmdir()


def _write_per_video(folder: PredictOut, bank, probs, timelines: bool, report: PredictReport, stage) -> None:
    from expr.evaluate.video_outputs import draw_timeline, video_predictions, write_frame_csv

    stage(f"writing one CSV{' and one timeline' if timelines else ''} per video into {folder.path}")
    for video in video_predictions(bank, probs):
        report.frame_csvs.append(write_frame_csv(folder.frame_csv(video.video_id), video))
        if timelines:
            report.timelines.append(draw_timeline(folder.timeline_png(video.video_id), video).path)
