"""Which run made the predictions in an `expr predict --out` folder: its manifest.json, and
the check that refuses to replace another run's predictions without --overwrite.

Light on purpose (no torch): ``PredictConfig.validate`` runs the check before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

from expr.core.errors import ConfigError

MANIFEST_FILE = "manifest.json"
SUBMISSION_FILE = "submission.csv"


def manifest_path(out: str | Path) -> Path:
    """Where the record of which run made the predictions in ``--out`` goes: OUT/manifest.json
    for a folder, NAME.manifest.json beside a NAME.csv submission."""
    out = Path(out)
    return out.with_name(out.stem + ".manifest.json") if out.suffix.lower() == ".csv" else out / MANIFEST_FILE


def _same_run(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def check_out_free(out: str | Path, run: str | Path, overwrite: bool) -> None:
    """Refuse to replace predictions another run made (or whose maker is unknown) unless
    --overwrite: a second `expr predict --out OUT` with another run would silently swap them."""
    if overwrite:
        return
    out, manifest = Path(out), manifest_path(out)
    hint = "pass --overwrite to replace them, or choose another --out"
    if manifest.is_file():
        try:
            made_by = json.loads(manifest.read_text(encoding="utf-8"))["run"]
            previous, checkpoint = made_by["path"], made_by.get("checkpoint", "?")
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{out}: holds predictions whose {manifest.name} cannot be read; {hint}") from None
        if not _same_run(previous, run):
            raise ConfigError(f"{out}: holds the predictions of another run, {previous} ({checkpoint} checkpoint; "
                              f"see {manifest}); {hint}")
        return
    existing = out if out.suffix.lower() == ".csv" else out / SUBMISSION_FILE
    if existing.is_file():
        raise ConfigError(f"{out}: holds predictions with no {manifest.name} to say which run made them; {hint}")
