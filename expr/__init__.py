"""expr: extract frozen CLIP + Wav2Vec2 features once, train many expression heads fast.

Stage packages (installed from the repo-root folders of the same name):
``expr.cache_format`` -> ``expr.extract`` / ``expr.train_heads`` -> ``expr.evaluate``.
Importing this package is cheap: no torch, no backbones.
"""

__version__ = "0.1.0"

from expr.errors import (  # noqa: E402  (re-exported for library users)
    CacheSchemaError,
    ConfigError,
    ExprError,
    LabelFormatError,
    MediaDecodeError,
    WeightsNotFoundError,
)

__all__ = [
    "__version__",
    "ExprError",
    "CacheSchemaError",
    "ConfigError",
    "LabelFormatError",
    "MediaDecodeError",
    "WeightsNotFoundError",
]
