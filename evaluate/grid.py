"""The ablation grid: parse ``"window=30,60 fusion=bica,concat audio=on,off"`` into cells.

A grid is space-separated ``key=v1,v2`` terms; the cells are the cartesian product in the
order written. Keys are short, user-facing names mapped onto ``TrainConfig`` fields here,
so a typo is caught before the first cell trains for an hour.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

from expr.core.errors import ConfigError
from expr.train_heads import Fusion, Target, TrainConfig, WindowRule


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be >= 1")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError("must be >= 0")
    return value


def _choice(enum) -> Callable[[str], str]:
    choices = [c.value for c in enum]

    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"choose from {', '.join(choices)}")
        return text
    return parse


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError("choose from on, off")
    return text == "on"


@dataclass(frozen=True)
class GridKey:
    """One grid key: how to parse a value and how it sets TrainConfig fields."""

    parse: Callable[[str], Any]
    fields: Callable[[Any], dict]     # parsed value -> TrainConfig overrides
    paper: tuple                      # the values of the paper's settings (Table 1)
    help: str


# ``paper``: the paper's Table 1 windows; every other key at TrainConfig's default, which is
# the reference method.
KEYS: dict[str, GridKey] = {
    "window": GridKey(_positive_int, lambda v: {"window": v}, (30, 60), "frames per window"),
    "stride": GridKey(_positive_int, lambda v: {"stride": v}, (TrainConfig.stride,), "frames between windows"),
    "target": GridKey(_choice(Target), lambda v: {"target": v}, (TrainConfig.target,), "window target rule"),
    "windows": GridKey(_choice(WindowRule), lambda v: {"windows": v}, (TrainConfig.windows,),
                       "which windows exist: reference|grid"),
    "fusion": GridKey(_choice(Fusion), lambda v: {"fusion": v}, (TrainConfig.fusion,), "cross-attention variant"),
    "audio": GridKey(_on_off, lambda v: {"no_audio": not v}, (not TrainConfig.no_audio,), "on|off"),
    "tcn": GridKey(_on_off, lambda v: {"no_tcn": not v}, (not TrainConfig.no_tcn,), "on|off"),
    "contrastive": GridKey(_non_negative_float, lambda v: {"contrastive_weight": v},
                           (TrainConfig.contrastive_weight,), "contrastive loss weight"),
    "lr": GridKey(_non_negative_float, lambda v: {"lr": v}, (TrainConfig.lr,), "learning rate"),
    "weight_decay": GridKey(_non_negative_float, lambda v: {"weight_decay": v}, (TrainConfig.weight_decay,),
                            "AdamW decay"),
    "tcn_levels": GridKey(_positive_int, lambda v: {"tcn_levels": v}, (TrainConfig.tcn_levels,), "TCN blocks"),
}


@dataclass(frozen=True)
class Cell:
    """One combination of the grid: ``values`` keeps the user's spelling, in grid order."""

    values: tuple[tuple[str, str], ...]   # (("window", "30"), ("fusion", "bica"), ...)

    @property
    def name(self) -> str:
        """Folder-safe id, e.g. ``window=30__fusion=bica``."""
        return "__".join(f"{k}={v}" for k, v in self.values)

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.values)

    def overrides(self) -> dict:
        """TrainConfig fields this cell sets."""
        out: dict = {}
        for key, text in self.values:
            out.update(KEYS[key].fields(KEYS[key].parse(text)))
        return out

    def is_paper(self) -> bool:
        """True when every key is at a value of the paper's reported settings."""
        return all(KEYS[k].parse(v) in KEYS[k].paper for k, v in self.values)


def _valid_keys() -> str:
    return ", ".join(KEYS)


def parse_grid(text: str) -> dict[str, list[str]]:
    """``{"window": ["30", "60"], ...}`` in written order; ConfigError saying what is wrong."""
    example = 'e.g. --grid "window=30,60 fusion=bica,concat audio=on,off"'
    if not text or not text.strip():
        raise ConfigError(f"--grid is empty; {example}")
    grid: dict[str, list[str]] = {}
    for term in text.split():
        key, sep, raw = term.partition("=")
        if not sep or not key:
            raise ConfigError(f"--grid term {term!r} is not key=v1,v2; {example}")
        if key not in KEYS:
            raise ConfigError(f"--grid key {key!r} is unknown; valid keys: {_valid_keys()}")
        if key in grid:
            raise ConfigError(f"--grid key {key!r} appears twice; list all its values once: {key}=a,b")
        values = raw.split(",")
        if raw == "" or any(v == "" for v in values):
            raise ConfigError(f"--grid term {term!r} has an empty value; write {key}=a,b")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid term {term!r} repeats a value")
        for value in values:
            try:
                KEYS[key].parse(value)
            except ValueError as exc:
                raise ConfigError(f"--grid {key}={value!r} is invalid ({exc}); {KEYS[key].help}") from None
        grid[key] = values
    return grid


def grid_cells(grid: dict[str, list[str]]) -> list[Cell]:
    """The cartesian product of the grid, first key varying slowest."""
    keys = list(grid)
    return [Cell(tuple(zip(keys, combo))) for combo in itertools.product(*(grid[k] for k in keys))]
