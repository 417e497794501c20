"""Stage one: decode videos and run the frozen backbones once into the feature cache.

The public interface (what the CLI, ``expr.app.pipeline`` and the README's Python API use) is
``__all__``: the config and its option choices at once, ``run_extract`` and its progress
events on first use (torch, decoders). Modules: ``media`` (with ``probe``, ``video_decode``,
``frames_dir``, ``audio_decode``; message types in ``messages``) / ``decode_pool`` /
``discover`` turn videos into frame and audio messages; ``specs`` (the table in
backbones.json) and ``weights`` build the backbones, ``visual_features`` and
``audio_features`` turn those messages into features; ``encoder_feed.EncoderFeed`` batches
and writes; ``run.run_extract(ExtractConfig)`` is the loop behind ``expr extract``.
"""

from typing import TYPE_CHECKING

from expr.extract.config import Decoder, ExtractConfig, FaceCrop, Geometry, JpgResize
from expr.core.lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # the names of the TYPE_CHECKING block below, on first use

if TYPE_CHECKING:  # THE list of lazy names: pyright and editors see them, lazy_getattr reads it
    from expr.extract.encoder_feed import ExtractEvent, ExtractSummary
    from expr.extract.run import run_extract

__all__ = ["ExtractConfig", "Decoder", "FaceCrop", "Geometry", "JpgResize", "ExtractEvent", "ExtractSummary", "run_extract"]
