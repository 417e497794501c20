"""``ExtractConfig``: every option of ``expr extract``, mirrored 1:1 by the CLI options."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from expr.core.devices import resolve_device
from expr.core.errors import ConfigError, as_choices, check_choice


class FaceCrop(StrEnum):
    """What reaches CLIP of a raw frame (the --face-crop choices)."""

    none = "none"  # the whole frame
    haar = "haar"  # a square, smoothed face crop (OpenCV Haar cascade)


class JpgResize(StrEnum):
    """How --frames jpgs reach S x S, antialiased (the --jpg-resize choices)."""

    bilinear = "bilinear"  # torchvision Resize((224, 224)) on PIL: the authors' code
    bicubic = "bicubic"    # what earlier expr versions did


class Geometry(StrEnum):
    """Where CLIP's colour conversion and resize run (the --geometry choices; geometry_device.py)."""

    auto = "auto"      # device on CUDA after a start-up self-check, else worker; a cache keeps its own
    worker = "worker"  # in the decode workers (every CPU run)
    device = "device"  # on the encoder's device; the workers only decode


class Decoder(StrEnum):
    """Who decodes raw video frames (the --decoder choices; nvdec.py)."""

    auto = "auto"    # nvdec on CUDA for streams of 720p and above after a start-up probe, else cpu
    cpu = "cpu"      # the decode workers (PyAV / decord), as always
    nvdec = "nvdec"  # the GPU's video decoder (PyNvVideoCodec) in the main process; a failing probe is an error


FACE_CROPS = tuple(c.value for c in FaceCrop)      # what a DecodeJob checks (messages.py)
JPG_RESIZES = tuple(c.value for c in JpgResize)    # first: the default
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass
class ExtractConfig:
    videos: Path                                   # folder searched recursively for video files
    out: Path                                      # the cache to create or add to (a .zarr folder)
    frames: Path | None = None                     # ABAW cropped_aligned folder: faces from jpgs, audio from videos
    device: str = "auto"                           # auto (cuda if available) | cpu | cuda | cuda:N
    batch_size: int = 128                          # frames per image-encoder batch, across video boundaries
    workers: int = 2                               # decoding processes (0: decode in this process)
    visual_model: str = "ViT-B-32"                 # a visual entry of extract/backbones.json
    visual_weights: str | None = None              # tag (openai), local file/dir, or none (random); default: the spec's
    audio_model: str = "facebook/wav2vec2-base-960h"  # an audio entry of extract/backbones.json (the authors' code's)
    audio_weights: str | None = None               # hub, local folder, or none (random); default: the spec's
    shard: str | None = None                       # "K/N": this job takes videos K, K+N, ... (0 <= K < N)
    limit: int | None = None                       # only the first N videos (sorted by id)
    overwrite: bool = False                        # redo every video (wipes the cache when not sharded)
    face_crop: FaceCrop = FaceCrop.none            # none | haar: cut raw frames to the face (OpenCV Haar)
    jpg_resize: JpgResize = JpgResize.bilinear     # --frames jpgs to S x S: bilinear (authors' Resize) | bicubic
    audio_chunk_seconds: float = 30.0              # Wav2Vec2 runs on chunks of this length ...
    audio_context_seconds: float = 3.0             # ... each with this much extra audio either side
    geometry: Geometry = Geometry.auto             # auto | worker | device: where CLIP's resize runs (geometry_device.py)
    decoder: Decoder = Decoder.auto                # auto | cpu | nvdec: who decodes raw frames (nvdec.py)

    def __post_init__(self) -> None:
        as_choices(self)

    def validate(self) -> "ExtractConfig":
        """Check option values once, at the edge; return self."""
        self.videos = Path(self.videos)
        self.out = Path(self.out)
        self.frames = Path(self.frames) if self.frames is not None else None
        resolve_device(self.device)  # the one --device check of every command (no second list here)
        check_choice("--face-crop", self.face_crop, FaceCrop)
        check_choice("--jpg-resize", self.jpg_resize, JpgResize)
        check_choice("--geometry", self.geometry, Geometry)
        check_choice("--decoder", self.decoder, Decoder)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.workers < 0:
            raise ConfigError(f"--workers {self.workers}: must be 0 (in-process) or more")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"--limit {self.limit}: must be at least 1")
        if not self.audio_chunk_seconds > 0 or not self.audio_context_seconds >= 0:
            raise ConfigError(
                f"--audio-chunk-seconds {self.audio_chunk_seconds} must be > 0 and "
                f"--audio-context-seconds {self.audio_context_seconds} >= 0"
            )
        if self.frames is not None and self.face_crop != "none":
            raise ConfigError("--face-crop applies to raw videos; --frames already gives cropped faces")
        if self.shard is not None:
            parse_shard(self.shard)
        return self


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N) with 0 <= K < N."""
    match = _SHARD.match(str(text))
    if not match or not int(match[1]) < int(match[2]):
        raise ConfigError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/4 ... 3/4")
    return int(match[1]), int(match[2])
