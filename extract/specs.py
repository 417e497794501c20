"""The backbone table: named specs read from backbones.json (architectures are data).

``backbones.json`` names each backbone with its library, stream ("visual" or "audio"),
output dim, input geometry and the weight tags it accepts; ``get_spec`` finds one by name and
stream and names the valid ones otherwise. Where the weights come from is ``weights.py``'s job;
running the models is ``visual_features.py``'s and ``audio_features.py``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, overload

from expr.core.errors import ConfigError

SPECS_FILE = Path(__file__).with_name("backbones.json")


@dataclass(frozen=True)
class BackboneSpec:
    """One entry of backbones.json (see there for the values): what every stream has."""

    name: str
    stream: str                    # "visual" or "audio"
    library: str                   # "open_clip" or "transformers"
    dim: int                       # feature width written to the cache
    tags: dict[str, str]           # weight tag -> hub location
    default_weights: str           # tag used when --*-weights is not given
    doc: str = ""


@dataclass(frozen=True, kw_only=True)
class VisualSpec(BackboneSpec):
    """A visual (open_clip) backbone: the input geometry its image tower expects."""

    arch: str                      # open_clip architecture name (carries quick_gelu)
    image_size: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    arch_file: str | None = None   # open_clip config JSON beside this file, for custom archs


@dataclass(frozen=True, kw_only=True)
class AudioSpec(BackboneSpec):
    """An audio (transformers Wav2Vec2) backbone: its waveform rate and conv-stack geometry."""

    sample_rate: int
    hop: int
    receptive_field: int
    repo: str | None = None        # transformers repo id (None: random-init test model)
    config: dict[str, Any] = field(default_factory=dict)  # Wav2Vec2Config overrides for `none`
    normalize: bool = False        # zero-mean unit-variance waveform, as Wav2Vec2FeatureExtractor


_SPEC_CLASSES: dict[str, type[BackboneSpec]] = {"visual": VisualSpec, "audio": AudioSpec}


@lru_cache(maxsize=1)
def load_specs() -> dict[str, BackboneSpec]:
    raw = json.loads(SPECS_FILE.read_text(encoding="utf-8"))
    specs = {}
    for name, entry in raw.items():
        entry = dict(entry)
        for key in ("mean", "std"):
            if key in entry:
                entry[key] = tuple(entry[key])
        # The class follows the stream, so get_spec's overloads tell the truth.
        specs[name] = _SPEC_CLASSES[entry["stream"]](name=name, **entry)
    return specs


@overload
def get_spec(name: str, stream: Literal["visual"]) -> VisualSpec: ...


@overload
def get_spec(name: str, stream: Literal["audio"]) -> AudioSpec: ...


@overload
def get_spec(name: str, stream: str) -> BackboneSpec: ...


def get_spec(name: str, stream: str) -> BackboneSpec:
    """The spec called ``name`` for ``stream``; ConfigError listing the valid names otherwise."""
    specs = {n: s for n, s in load_specs().items() if s.stream == stream}
    if name not in specs:
        raise ConfigError(
            f"unknown {stream} model {name!r}; choose one of: {', '.join(specs)} "
            f"(defined in {SPECS_FILE})"
        )
    return specs[name]
