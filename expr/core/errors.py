"""The one error family of expr.

The CLI turns any ``ExprError`` into one red line and a non-zero exit; anything else is a
bug and shows its traceback. Messages name the file (and line) and say what to do.
"""

from __future__ import annotations

import errno
import functools
import os
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum


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


class DemoDataError(ExprError):
    """The demo clips could not be downloaded or unpacked."""


# What a failed write says to do, by errno: the user can act on these without a traceback.
STORAGE_HINTS = {
    errno.ENOSPC: "the disk is full: free space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or write to another disk",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.EACCES: "permission denied: choose a location you can write to",
    errno.EPERM: "operation not permitted: choose a location you can write to",
}
STORAGE_ERRNOS = frozenset(STORAGE_HINTS)


def storage_error(exc: OSError, path: str | os.PathLike, what: str,
                  other: type[ExprError] = ExprError) -> ExprError:
    """One line for an OSError of a write under ``path``: what failed and what to do.

    Space and permission errors become a StorageError (an OSError too, same errno); any
    other OSError an ``other`` that still names the path and the system's reason."""
    reason = exc.strerror or str(exc)
    hint = STORAGE_HINTS.get(exc.errno) if exc.errno is not None else None
    if hint is None:
        return other(f"{path}: cannot {what} ({reason})")
    err = StorageError(f"{path}: cannot {what}: {reason}; {hint}")
    err.errno = exc.errno  # (strerror left unset: str() would show only it)
    return err


@contextmanager
def storage_errors(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a space or permission OSError of the block into a one-line StorageError naming
    ``path``; other OSErrors (bugs, vanished files) pass through unchanged."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise storage_error(exc, path, what) from exc


def check_choice(option: str, value: str, choices) -> None:
    """ConfigError naming ``option`` and its choices (a str Enum class) unless ``value`` is one."""
    allowed = [c.value for c in choices]
    if value not in allowed:
        raise ConfigError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")


@functools.cache
def _choice_fields(cls: type) -> dict[str, type[Enum]]:
    """The fields of dataclass ``cls`` annotated with an Enum (``X`` or ``X | None``)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        for kind in typing.get_args(hint) or (hint,):
            if isinstance(kind, type) and issubclass(kind, Enum):
                out[name] = kind
    return out


def as_choices(config) -> None:
    """Store the Enum member for each str value of ``config``'s Enum-typed fields (a config's
    ``__post_init__``): JSON and the CLI give strings, code compares members. A value outside
    the choices stays as given, for ``validate``'s ``check_choice`` to name."""
    for name, kind in _choice_fields(type(config)).items():
        value = getattr(config, name)
        if isinstance(value, str) and not isinstance(value, kind) and value in kind._value2member_map_:
            setattr(config, name, kind(value))
