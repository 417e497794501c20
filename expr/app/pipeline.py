"""The stages chained for a user who has videos and a trained run: extract with exactly the
run's backbones, then predict (``expr predict --videos``). The demo extracts through here too.

The extract stage is reached only through ``extract_features`` (its ``ExtractConfig`` and
``run_extract``): the one call of it outside its own command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from expr.core.errors import CacheSchemaError, ConfigError, ExprError, WeightsNotFoundError
from expr.evaluate import PredictConfig

if TYPE_CHECKING:  # (a lazy name: importing it loads torch; the CLI imports this module at start-up)
    from expr.cache_format import BackboneRecords
    from expr.evaluate import PredictReport

STREAMS = ("visual", "audio")


@dataclass
class PredictVideosConfig(PredictConfig):
    """`expr predict`: evaluate's ``PredictConfig`` plus the options that extract raw videos
    first (the CLI's options, 1:1)."""

    videos: Path | None = None        # folder of videos, as for `expr extract`: extracted with the run's backbones
    frames: Path | None = None        # ABAW cropped_aligned folder for --videos: faces from its jpgs
    face_crop: str | None = None      # raw --videos: none | haar; default: what the run's cache recorded

    def check_source(self) -> None:
        if self.cache is None and self.videos is None:
            raise ConfigError("nothing to predict: pass --videos DIR (raw videos) or --cache PATH (extracted ones)")
        if self.videos is not None and Path(self.videos).is_file():
            raise ConfigError(f"--videos {self.videos} is a file: --videos now takes a folder of videos (as for "
                              "'expr extract'); pass a text file of video ids as --ids")
        if self.frames is not None and self.videos is None:
            raise ConfigError("--frames needs --videos (the raw videos give the audio)")
        if self.videos is not None and self.cache is None and not self.out_is_folder:
            raise ConfigError(f"--out {self.out}: --videos keeps its features in a cache inside --out; "
                              "give --out a folder, or --cache PATH")


def extract_features(on_event: Callable | None = None, **options):
    """Run the extract stage with ``options`` (``ExtractConfig``'s fields); its summary."""
    from expr.extract import ExtractConfig, run_extract

    return run_extract(ExtractConfig(**options), progress=on_event)


def run_backbones(run_dir: Path) -> BackboneRecords:
    """The ``backbones`` record of the cache ``run_dir`` was trained on (name, weights, dims,
    preprocessing per stream); ConfigError if the run does not have one."""
    from expr.cache_format import BackboneRecords
    from expr.train_heads import RunDir

    recorded = (RunDir(Path(run_dir)).read_config().get("cache") or {}).get("backbones") or {}
    try:
        backbones = BackboneRecords.from_dict(recorded, str(run_dir))
    except CacheSchemaError:
        backbones = None
    if backbones is None or not (backbones.visual.name and backbones.audio.name):
        raise ConfigError(f"{run_dir}: the run does not record which backbones made its features; extract the "
                          "videos with 'expr extract' (the backbones of the run's cache) and pass --cache")
    return backbones


def recorded_face_crop(run_dir: Path) -> str | None:
    """The face crop (none | haar) the run's cache applied to its raw videos, if that cache is
    still there and used one setting; None otherwise (frames folders record none)."""
    from expr.cache_format import open_cache
    from expr.train_heads import RunDir

    path = (RunDir(Path(run_dir)).read_config().get("cache") or {}).get("path")
    if not path or not Path(path).exists():
        return None
    try:
        with open_cache(path) as cache:
            crops = {cache.info(v).extra.face_crop for v in cache.video_ids
                     if cache.info(v).extra.visual_source == "video"}
    except ExprError:
        return None
    return crops.pop() if len(crops) == 1 and None not in crops else None


def extraction_options(cfg: PredictVideosConfig) -> dict:
    """``ExtractConfig`` fields that reproduce the run's features: its backbones and weights
    (random ones included: their seed is fixed), and the face crop of its raw videos."""
    backbones = run_backbones(cfg.run)
    options: dict = {}
    for stream, record in (("visual", backbones.visual), ("audio", backbones.audio)):
        options[f"{stream}_model"] = record.name
        options[f"{stream}_weights"] = record.weights or "none"  # null: random
    face_crop = cfg.face_crop or ("none" if cfg.frames is not None else recorded_face_crop(cfg.run)) or "none"
    return options | {"face_crop": face_crop}


def _describe(options: dict) -> str:
    return "; ".join(f"{s} {options[f'{s}_model']} (weights {options[f'{s}_weights']})" for s in STREAMS)


def _input_names(videos: Path, frames: Path | None) -> list[str]:
    """Names that become video ids: folders of --frames, else file stems under --videos
    (a superset of the videos extract will find: refusing early costs no extraction)."""
    if frames is not None:
        return [p.name for p in Path(frames).iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [p.stem for p in Path(videos).rglob("*") if p.is_file() and not p.name.startswith(".")]


def predict_videos(cfg: PredictVideosConfig | PredictConfig, *, on_stage: Callable[[str], None] | None = None,
                   on_extract: Callable | None = None) -> PredictReport:
    """`expr predict`: with ``cfg.videos``, extract them into ``cfg.cache`` (default
    OUT/feats.zarr; complete videos are not redone) with the run's backbones, then predict
    those videos (or ``--ids``); without it, predict from ``cfg.cache`` as before."""
    from expr.evaluate import PredictOut, check_ids, listed_ids, predict_run

    stage = on_stage or (lambda _msg: None)
    cfg.validate()
    if not isinstance(cfg, PredictVideosConfig) or cfg.videos is None:
        return predict_run(cfg, on_stage=stage)
    # Everything a user can get wrong is checked before the (long) extraction.
    wanted = listed_ids(cfg)
    if wanted is None and Path(cfg.videos).is_dir():
        check_ids(_input_names(cfg.videos, cfg.frames))
    options = extraction_options(cfg)
    cache = Path(cfg.cache) if cfg.cache is not None else PredictOut(cfg.out).cache
    stage(f"extracting {cfg.videos} into {cache} with the run's backbones: {_describe(options)}")
    try:
        summary = extract_features(on_extract, videos=cfg.videos, frames=cfg.frames, out=cache,
                                   device=cfg.device, **options)
    except (ConfigError, CacheSchemaError, WeightsNotFoundError) as err:
        raise type(err)(f"{cfg.run} was trained on features of {_describe(options)}; extracting --videos "
                        f"with them failed: {err}") from err
    done = sorted(summary.ok + summary.skipped)
    if not done:
        raise CacheSchemaError(f"--videos {cfg.videos}: no video could be extracted "
                               f"({len(summary.failed)} failed); nothing to predict")
    report = predict_run(dataclasses.replace(cfg, cache=cache), video_ids=wanted or done, on_stage=stage)
    report.extracted, report.reused, report.failed = list(summary.ok), list(summary.skipped), dict(summary.failed)
    return report
