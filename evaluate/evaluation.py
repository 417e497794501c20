"""`expr evaluate`: score a trained run on a labelled split with both protocols."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from expr.core.abaw import CLASS_NAMES
from expr import now_utc, version_text
from expr.core.atomic import check_writable, write_json
from expr.core.devices import resolve_device
from expr.core.errors import storage_errors
from expr.evaluate.config import EvaluateConfig
from expr.evaluate.class_scores import ClassificationMetrics
from expr.evaluate.plots import save_confusion_png
from expr.evaluate.report_dir import ReportDir
from expr.evaluate.report_sources import report_from_run
from expr.evaluate.scoring import Scores, check_backbones, check_in_cache, score_both

if TYPE_CHECKING:
    from expr.train_heads import FeatureBank, LoadedRun

WINDOW_PROTOCOL = ("window-level (reference code, the paper's Table 1): one prediction per window of the "
                   "window rule at the training stride, scored on the window's target")
FRAME_PROTOCOL = ("per-frame (official ABAW): every annotated frame scored with the causal window "
                  "ending at it, the first frame repeated before the start; no_face says what a no-face frame "
                  "shows: fill = the last face frame's visual features (own audio) for up to 5 no-face frames "
                  "in a row, the cache's after that and before the first face; raw = always the cache's")


@dataclass
class EvalReport:
    json_path: Path
    confusion_pngs: dict[str, Path]    # protocol -> PNG
    scores: Scores
    data: dict                         # what eval_<split>.json holds
    warnings: list[str] = field(default_factory=list)
    timelines: list[Path] = field(default_factory=list)   # worst video first
    report: Path | None = None         # report.html of the run


def _protocol_block(metrics: ClassificationMetrics, description: str, **settings) -> dict:
    return {"description": description, **settings, **metrics.to_dict()}


def evaluate_run(cfg: EvaluateConfig, *, on_stage: Callable[[str], None] | None = None) -> EvalReport:
    """Load the run and the split's features once, score both protocols, write
    ``<run>/eval_<split>.json``, one confusion-matrix PNG per protocol, the timelines of the
    ``cfg.timelines`` worst videos and the run's report.html."""
    from expr.cache_format import open_cache
    from expr.train_heads import load_bank, load_run, load_split

    stage = on_stage or (lambda _msg: None)
    cfg.validate()
    device = resolve_device(cfg.device)
    run = load_run(cfg.run, cfg.checkpoint, device)
    run_dir = ReportDir(Path(cfg.run))
    check_writable(run_dir.eval_report(cfg.split), "write the evaluation")  # read-only: now, not after scoring
    labels = load_split(cfg.labels, cfg.split, cfg.videos)
    with open_cache(cfg.cache) as cache:
        check_backbones(run, cache.backbones, cfg.run, cfg.cache)
        backbones = cache.backbones.to_dict()
        check_in_cache(list(labels), cache.video_ids, f"{cfg.labels} ({cfg.split})")
        # per video in the cache (extract --face-crop); None: not recorded (ABAW jpgs, older caches)
        face_crops = sorted({str(cache.info(v).extra.face_crop) for v in labels})
        stage(f"loading {len(labels)} videos of {cfg.split} from {cfg.cache}")
        bank = load_bank(cache, list(labels), labels, preload=cfg.preload, device=device)
    stage("scoring both protocols")
    # the window rule the run was selected on, unless --windows asks for another
    tc = run.train_config if cfg.windows is None else dataclasses.replace(run.train_config, windows=cfg.windows)
    scores = score_both(run.model, bank, labels, tc, batch_size=cfg.batch_size,
                        smooth=cfg.smooth, smooth_mode=cfg.smooth_mode, no_face=cfg.no_face)
    warnings = list(bank.warnings) + [
        f"{vid}: {n} annotated frames past the cached video were not scored"
        for vid, n in scores.selection.dropped.items()
    ]
    data = {
        "run": str(cfg.run),
        "checkpoint": cfg.checkpoint,
        "epoch": run.meta.get("epoch"),
        "no_face": cfg.no_face,          # per-frame protocol: what a no-face frame shows (fill | raw)
        "cache": str(cfg.cache),
        "labels": str(cfg.labels),
        "split": cfg.split,
        "videos": len(labels),
        "class_names": list(CLASS_NAMES),
        # provenance for the report: when, with what, on which device, from which backbones
        "evaluated_at": now_utc(),
        "expr": version_text(),
        "device": str(device),
        "backbones": backbones,
        "face_crop": face_crops,
        "protocols": {
            "window": _protocol_block(scores.window, WINDOW_PROTOCOL, window=tc.window, stride=tc.stride,
                                      target=tc.target, windows=tc.windows),
            "per_frame": _protocol_block(scores.per_frame, FRAME_PROTOCOL, window=tc.window,
                                         smooth=cfg.smooth, smooth_mode=cfg.smooth_mode if cfg.smooth > 1 else None,
                                         no_face=cfg.no_face, unscored_frames=sum(scores.selection.dropped.values())),
        },
        "warnings": warnings,
    }
    with storage_errors(run_dir.path, "write the evaluation"):  # full disk, read-only: one line
        json_path = write_json(run_dir.eval_report(cfg.split), data)
        pngs = {}
        for key, metrics, title in (("window", scores.window, "window-level"),
                                    ("per_frame", scores.per_frame, "per-frame")):
            pngs[key] = save_confusion_png(
                run_dir.confusion_png(cfg.split, key), metrics.confusion,
                title=f"{run_dir.path.name} {cfg.split}: {title}, macro-F1 {metrics.macro_f1:.4f} (n={metrics.n:,})",
            )
        stage(f"timelines of the {cfg.timelines} videos with the lowest per-frame accuracy" if cfg.timelines
              else "writing the report")
        timelines = draw_worst_timelines(run, bank, labels, cfg, run_dir)
        report = report_from_run(run_dir.path, cfg.split, run_dir.report, timelines=timelines)
    return EvalReport(json_path, pngs, scores, data, warnings, timelines, report)


def draw_worst_timelines(run: LoadedRun, bank: FeatureBank, labels: Mapping[str, np.ndarray],
                         cfg: EvaluateConfig, run_dir: ReportDir) -> list[Path]:
    """Replace ``timelines_<split>/`` with the PNGs of the ``cfg.timelines`` videos of lowest
    per-frame accuracy (every frame inferred once more, smoothed as scored); worst first."""
    from expr.evaluate.video_outputs import draw_timeline, video_predictions, worst_videos
    from expr.train_heads import frame_probabilities

    folder = run_dir.timelines(cfg.split)
    shutil.rmtree(folder, ignore_errors=True)  # an earlier --timelines (other N, other weights) is stale
    if cfg.timelines == 0:
        return []
    probs = frame_probabilities(run.model, bank, run.train_config.window, batch_size=cfg.batch_size,
                                smooth=cfg.smooth, smooth_mode=cfg.smooth_mode, no_face=cfg.no_face)
    worst = worst_videos(video_predictions(bank, probs, labels), cfg.timelines)
    return [draw_timeline(run_dir.timeline_png(cfg.split, video.video_id), video,
                          title_extra=f"{video.score_text()} · worst {rank} of {len(bank.video_ids)} by accuracy").path
            for rank, (video, _acc) in enumerate(worst, start=1)]
