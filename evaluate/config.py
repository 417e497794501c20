"""One config dataclass per command; the CLI options mirror the fields 1:1 (a test checks it).

Defaults shared with `expr train` come from its configs (``TrainConfig``, ``HeadConfig``),
never retyped here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from expr.core.atomic import check_writable
from expr.core.errors import ConfigError, as_choices, check_choice
from expr.train_heads import Checkpoint, HeadConfig, NoFace, Preload, SmoothMode, TrainConfig, WindowRule


def _check_common(checkpoint: str, smooth: int, smooth_mode: str, batch_size: int, preload: str) -> None:
    check_choice("--checkpoint", checkpoint, Checkpoint)
    if smooth < 0:
        raise ConfigError(f"--smooth must be 0 (off) or a window of K >= 1 frames, not {smooth}")
    check_choice("--smooth-mode", smooth_mode, SmoothMode)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, not {batch_size}")
    check_choice("--preload", preload, Preload)


def check_split_name(split: str) -> str:
    """``split`` without trailing slashes; ConfigError unless it is then a plain folder name."""
    name = str(split).rstrip("/")
    if not name or name in (".", "..") or "/" in name or "\\" in name or any(ord(c) < 32 for c in name):
        raise ConfigError(f"--split {split!r}: not a folder name of --labels such as Validation_Set; "
                          "pass the name only, not a path")
    return name


@dataclass
class EvaluateConfig:
    """`expr evaluate`: score a run on one labelled split with both protocols."""

    run: Path                         # run directory written by `expr train`
    cache: Path                       # feature cache (.zarr or .h5) with the split's videos
    labels: Path                      # ABAW labels dir (Train_Set/, Validation_Set/) or a dir of .txt
    split: str = "Validation_Set"     # sub-folder of --labels to score
    videos: Path | None = None        # optional text file of video ids: score only these
    checkpoint: Checkpoint = Checkpoint.best  # best (by window-level val macro-F1) or last
    windows: WindowRule | None = None  # window-level protocol: reference | grid; None = the run's own rule
    smooth: int = 0                   # per-frame protocol: filter K frames of probabilities (0 = off)
    smooth_mode: SmoothMode = SmoothMode.median  # median | mean
    no_face: NoFace = NoFace.fill     # per-frame: fill (last face frame's features, <= 5 in a row) | raw
    batch_size: int = TrainConfig.eval_batch_size  # windows per inference batch
    preload: Preload = TrainConfig.preload  # where the features live while scoring: cpu | gpu | none
    device: str = TrainConfig.device  # auto (cuda if available) | cpu | cuda | cuda:N
    timelines: int = 0                # timeline PNGs of the N videos with the lowest per-frame macro-F1

    def __post_init__(self) -> None:
        as_choices(self)

    def validate(self) -> None:
        _check_common(self.checkpoint, self.smooth, self.smooth_mode, self.batch_size, self.preload)
        check_choice("--no-face", self.no_face, NoFace)
        # a folder name (tab completion adds a slash): it names eval_<split>.json, checked
        # before any scoring
        self.split = check_split_name(self.split)
        if self.windows is not None:
            check_choice("--windows", self.windows, WindowRule)
        if self.timelines < 0:
            raise ConfigError(f"--timelines must be >= 0 (videos to draw), not {self.timelines}")


@dataclass
class PredictConfig:
    """`expr predict` from a feature cache: per-frame predictions of its videos. The options
    that extract raw videos first (--videos, --frames, --face-crop) are the pipeline's
    (``expr.app.pipeline.PredictVideosConfig``, which the CLI builds)."""

    run: Path                         # run directory written by `expr train`
    out: Path                         # folder: submission.csv, one CSV + timeline per video, the cache
                                      # of --videos; a .csv name: the submission file only
    cache: Path | None = None         # feature cache to predict from, or to extract --videos into
                                      # (default with --videos: OUT/feats.zarr)
    ids: Path | None = None           # text file of video ids (one per line); default: all of --videos,
                                      # else every cached video
    timelines: bool = True            # a timeline PNG per video (folder --out only)
    probs: Path | None = None         # also write per-frame class probabilities to this CSV
    checkpoint: Checkpoint = EvaluateConfig.checkpoint  # best | last
    smooth: int = EvaluateConfig.smooth                # filter K frames of probabilities before the argmax
    smooth_mode: SmoothMode = EvaluateConfig.smooth_mode  # median | mean
    no_face: NoFace = EvaluateConfig.no_face            # fill (last face frame's features, <= 5 in a row) | raw
    batch_size: int = EvaluateConfig.batch_size        # windows per inference batch
    preload: Preload = EvaluateConfig.preload          # cpu | gpu | none
    device: str = EvaluateConfig.device                # auto | cpu | cuda | cuda:N
    overwrite: bool = False           # replace predictions another run made in --out

    def __post_init__(self) -> None:
        as_choices(self)

    def validate(self) -> None:
        from expr.evaluate.manifest import check_out_free

        _check_common(self.checkpoint, self.smooth, self.smooth_mode, self.batch_size, self.preload)
        check_choice("--no-face", self.no_face, NoFace)
        if self.probs is not None and Path(self.probs).resolve() == Path(self.out).resolve():
            raise ConfigError("--probs must name another file than --out")
        self.check_source()
        for dest in (self.out, self.probs):  # a read-only --out fails now, not after the predictions
            if dest is not None:
                check_writable(dest, "write the submission")
        check_out_free(self.out, self.run, self.overwrite)

    def check_source(self) -> None:
        """What the predictions are made from: here a cache (the pipeline's config adds videos)."""
        if self.cache is None:
            raise ConfigError("nothing to predict: pass --videos DIR (raw videos) or --cache PATH (extracted ones)")

    @property
    def out_is_folder(self) -> bool:
        """--out names a folder of outputs; a .csv name means only the submission file (what --out was before)."""
        return Path(self.out).suffix.lower() != ".csv"


class Keep(StrEnum):
    """What an ablation keeps of each finished (cell, seed) run: its table needs none of it."""

    best = "best"   # best.safetensors only (what the cell was scored with)
    last = "last"   # last.safetensors only, without its optimiser state
    all = "all"     # everything `expr train` wrote, optimiser state included (--resume-able)


@dataclass
class AblateConfig:
    """`expr ablate`: train and score every cell of a grid from one cache loaded once."""

    cache: Path                       # feature cache
    labels: Path                      # ABAW labels dir with Train_Set/ and Validation_Set/
    grid: str                         # e.g. "window=30,60 fusion=bica,concat audio=on,off"
    out: Path                         # ablation dir: one run per cell and seed + the tables
    epochs: int = TrainConfig.epochs  # epochs per cell (the paper: 30)
    seeds: int = 1                    # runs per cell, seeds seed, seed+1, ...; tables show mean +- std
    seed: int = TrainConfig.seed      # first seed
    lr: float = TrainConfig.lr        # base learning rate of every cell (a grid key may override)
    batch_size: int = TrainConfig.batch_size  # windows per micro-batch (with `expr train`'s accumulation)
    channels: int = HeadConfig.channels       # head width (small values make quick smoke ablations)
    tcn_levels: int = HeadConfig.tcn_levels   # TCN blocks (a grid key may override)
    windows: WindowRule = TrainConfig.windows  # window rule of every cell: reference | grid (a grid key may override)
    heads: int = HeadConfig.heads             # attention heads
    train_list: Path | None = None    # optional ids file restricting Train_Set
    val_list: Path | None = None      # optional ids file restricting Validation_Set
    smooth: int = EvaluateConfig.smooth            # per-frame protocol smoothing (0 = off)
    smooth_mode: SmoothMode = EvaluateConfig.smooth_mode  # median | mean
    preload: Preload = TrainConfig.preload  # cpu | gpu (not none: every cell reuses the loaded bank)
    device: str = TrainConfig.device    # auto | cpu | cuda | cuda:N
    keep: Keep = Keep.best              # checkpoints kept per finished cell: best | last | all (+ optimiser state)

    def __post_init__(self) -> None:
        as_choices(self)

    def validate(self) -> None:
        _check_common(Checkpoint.best, self.smooth, self.smooth_mode, 1, self.preload)
        check_choice("--windows", self.windows, WindowRule)
        check_choice("--keep", self.keep, Keep)
        if self.preload == Preload.none:
            raise ConfigError("--preload none defeats loading the cache once for all cells; use cpu or gpu")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, not {self.epochs}")
        if self.lr <= 0 or self.batch_size < 1 or self.channels < 1 or self.tcn_levels < 1 or self.heads < 1:
            raise ConfigError("--lr, --batch-size, --channels, --tcn-levels and --heads must be positive")
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, not {self.seeds}")
