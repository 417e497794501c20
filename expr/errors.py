"""The one error family of expr.

The CLI turns any ``ExprError`` into one red line and a non-zero exit; anything else is a
bug and shows its traceback. Messages name the file (and line) and say what to do.
"""


class ExprError(Exception):
    """Base of every error expr raises on purpose."""


class ConfigError(ExprError):
    """An option or option combination that cannot work."""


class CacheSchemaError(ExprError):
    """A feature cache that is missing, of another version, or inconsistent."""


class WeightsNotFoundError(ExprError):
    """Backbone weights that cannot be found locally nor fetched."""


class MediaDecodeError(ExprError):
    """A video or audio stream that cannot be decoded into valid frames/samples."""


class LabelFormatError(ExprError):
    """An annotation file that does not follow the ABAW EXPR format."""


class StorageError(ExprError, OSError):
    """A write that failed for lack of space or permission (disk full, read-only, quota).

    Also an OSError, so that code catching OSError around file writes still catches it."""


def check_choice(option: str, value: str, choices) -> None:
    """ConfigError naming ``option`` and its choices (a str Enum class) unless ``value`` is one."""
    allowed = [c.value for c in choices]
    if value not in allowed:
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
