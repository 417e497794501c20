"""expr: extract frozen CLIP + Wav2Vec2 features once, train many expression heads fast.

Stage packages (installed from the repo-root folders of the same name):
``expr.cache_format`` -> ``expr.extract`` / ``expr.train_heads`` -> ``expr.evaluate``.
Importing this package is cheap: no torch, no backbones.
"""

__version__ = "0.3.0"


def git_commit() -> str | None:
    """Short commit of the checkout this package runs from (an editable install), with
    "+dirty" when tracked files changed; None for an installed wheel or without git."""
    import subprocess
    from pathlib import Path

    here = Path(__file__).resolve().parent
    try:
        found = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel", "--short=10", "HEAD"],
                               capture_output=True, text=True, timeout=5)
        lines = found.stdout.split("\n")
        # expr's own checkout has this package at its root; anything else (a wheel in a
        # virtualenv inside the user's project) would report the user's commit as expr's
        if found.returncode != 0 or len(lines) < 2 or Path(lines[0]).resolve() != here.parent or not lines[1]:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return lines[1].strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def now_utc() -> str:
    """The time every record and report states (training start, evaluation, predictions)."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def version_text() -> str:
    """``expr 0.3.0 (commit 1a2b3c4d5e)``, or without the commit where it is unknown."""
    commit = git_commit()
    return f"expr {__version__}" + (f" (commit {commit})" if commit else "")

from expr.core.errors import (  # noqa: E402  (re-exported for library users)
    CacheSchemaError,
    ConfigError,
    ExprError,
    LabelFormatError,
    MediaDecodeError,
    WeightsNotFoundError,
)

__all__ = [
    "__version__",
    "git_commit",
    "version_text",
    "ExprError",
    "CacheSchemaError",
    "ConfigError",
    "LabelFormatError",
    "MediaDecodeError",
    "WeightsNotFoundError",
]
