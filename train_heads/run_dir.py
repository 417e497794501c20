"""The run folder: the one module that spells the names of the files training writes.

    runs/NAME/
      config.json               {"train": TrainConfig, "head": HeadConfig, "cache": {path,
                                 fingerprint, backbones, ...}, "data": {...}}
      metrics.jsonl             one JSON object per finished epoch
      best.safetensors          weights with the best validation macro-F1 (window level)
      last.safetensors          weights after the last finished epoch
      last.optim.safetensors    AdamW moments of ``last`` (for --resume)
      last.state.json           epoch, best so far, optimiser hyper-parameters (for --resume)
      eval_*.json, confusion_*.png, timelines_*/, report.html
                                `expr evaluate`'s reports (named by evaluate/report_dir.py):
                                part of the run, stale once it is retrained (REPORT_PATTERNS)
      .saving/                  an epoch's checkpoints while they are written (see below)
      .lock                     while `expr train` runs: its flock and pid (one writer per run)

Each weights file carries ``meta`` (epoch, val_f1, ...) and the head config in its
safetensors metadata, so one file alone can rebuild its model (see checkpoint.py).

An epoch's checkpoints (best when it is, and the last set) change as ONE unit: they are
written into ``.saving/``, ending with ``last.state.json`` (the commit record, which also
holds the SHA-256 of the weights and optimiser files), then moved into place, the record
last. A run killed before the record was written resumes from the previous epoch (the
folder is discarded); one killed after it finishes the moves. Either way --resume
continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from expr.core.atomic import (PNG_MAGIC, TEMP_NAME, check_writable, commit_folder, committed_record,
                              recover_folder, starts_with, write_json, write_text)
from expr.core.errors import ConfigError, storage_errors
from expr.train_heads.config import RECORDED_SINCE_V01, TrainConfig

if TYPE_CHECKING:
    from expr.core.devices import Dist

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STAGING_DIR = ".saving"
WEIGHTS_SUFFIX = ".safetensors"
OPTIMIZER_SUFFIX = ".optim.safetensors"
STATE_SUFFIX = ".state.json"
# What `expr evaluate` writes into a run, as the patterns --overwrite may delete: part of the
# run, and stale once it is retrained. Their names are evaluate/report_dir.py's (a test keeps
# every name it makes inside these patterns); this module checks only their content (_is_ours).
REPORT_HTML = "report.html"
TIMELINES_GLOB = "timelines_*"   # folders of PNGs
REPORT_PATTERNS = ("eval_*.json", "confusion_*.png", REPORT_HTML, TIMELINES_GLOB)
# Options that may change between a run and its --resume without changing the result: those
# TrainConfig marks as not learned (--out: the run being resumed, wherever it now lies or however
# its path is spelled). Not --epochs: it is the cosine schedule's T_max, so every epoch's
# learning rate depends on it.
RESUME_FREE = TrainConfig.not_learned()


class Checkpoint(StrEnum):
    """The two weights files of a run (the CLI's --checkpoint choices)."""

    best = "best"   # best window-level validation macro-F1
    last = "last"   # after the last finished epoch (with optimiser state, for --resume)



@dataclass(frozen=True)
class CheckpointFiles:
    """The files of one checkpoint (checkpoint.py reads and writes them)."""

    weights: Path      # model tensors + meta + head config
    optimizer: Path    # optimiser tensors (moments), only with an optimiser
    state: Path        # JSON: meta, scheduler, optimiser param groups and scalars


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder's training files; nothing outside this module spells their names."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    def checkpoint(self, which: str) -> CheckpointFiles:
        base = self.path / which
        return CheckpointFiles(base.with_suffix(WEIGHTS_SUFFIX), base.with_suffix(OPTIMIZER_SUFFIX),
                               base.with_suffix(STATE_SUFFIX))

    def read_config(self) -> dict:
        if not self.config.is_file():
            raise ConfigError(f"{self.path}: no {CONFIG_FILE}; pass a folder written by 'expr train --out'")
        try:
            data = json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.config}: cannot read the run's config ({exc}); the file is damaged") from exc
        if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
            raise ConfigError(f"{self.config}: cannot read the run's config (no \"train\" block); the file is damaged")
        return data

    def write_config(self, data: dict) -> None:
        with storage_errors(self.config, "write the run's config"):
            write_json(self.config, data)

    def read_metrics(self, on_message: Callable[[str], None] | None = None) -> list[dict]:
        """The epoch records; a torn last line (a run killed while appending it) is skipped
        and reported to ``on_message`` (else as a warning), damage elsewhere is an error."""
        if not self.metrics.is_file():
            return []
        lines = [(i, ln) for i, ln in enumerate(self.metrics.read_text(encoding="utf-8").splitlines(), 1)
                 if ln.strip()]
        records = []
        for i, line in lines:
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                if i != lines[-1][0]:
                    raise ConfigError(f"{self.metrics}:{i}: not a JSON line ({exc}); the file is damaged") from exc
                msg = f"{self.metrics}:{i}: skipped an incomplete last line (the run was killed while writing it)"
                _report(msg, on_message)
        return records

    def write_metrics(self, records: list[dict]) -> None:
        """Start metrics.jsonl with ``records`` (the epochs a resumed run keeps)."""
        with storage_errors(self.metrics, "write the metrics"):
            write_text(self.metrics, "".join(_json_line(r) for r in records))

    def append_metrics(self, record: dict) -> None:
        with storage_errors(self.metrics, "write the metrics"), open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(_json_line(record))

    @contextmanager
    def staged(self) -> Iterator[RunDir]:
        """A fresh ``.saving/`` run folder to write checkpoints into; when the block ends they
        move into this run as one unit, ``last.state.json`` (written last) as the commit record.
        On an error the folder is removed and the previous checkpoints stay as they were."""
        stage = RunDir(self.path / STAGING_DIR)
        with storage_errors(self.path, "save the checkpoint"):
            shutil.rmtree(stage.path, ignore_errors=True)
            stage.path.mkdir()
            try:
                yield stage
            except Exception:  # (a kill leaves it to recover(), as does a KeyboardInterrupt)
                shutil.rmtree(stage.path, ignore_errors=True)
                raise
            commit_folder(stage.path, self.path, stage.checkpoint(Checkpoint.last.value).state.name)

    def resume_checkpoint(self) -> CheckpointFiles:
        """The last checkpoint --resume continues from: the one in ``.saving/`` when a killed
        save wrote its commit record there (``recover`` finishes moving it into place), else
        the run's own. Read-only: the Ctrl-C line asks it before any recovery."""
        stage = RunDir(self.path / STAGING_DIR)
        if committed_record(stage.path, stage.checkpoint(Checkpoint.last.value).state.name):
            return stage.checkpoint(Checkpoint.last.value)
        return self.checkpoint(Checkpoint.last.value)

    def recover(self) -> str | None:
        """Finish (``"finished"``) or discard (``"discarded"``) checkpoints a killed run was saving."""
        return recover_folder(self.path / STAGING_DIR, self.path, self.checkpoint(Checkpoint.last.value).state.name)


def _json_line(record: dict) -> str:
    return json.dumps(record) + "\n"


def _report(msg: str, on_message: Callable[[str], None] | None) -> None:
    if on_message is not None:
        on_message(msg)
    else:
        import warnings

        warnings.warn(msg, stacklevel=3)


def is_run_file(name: str) -> bool:
    """True for the names a run (and `expr evaluate` on it) writes; --overwrite deletes such a
    file only when its content is a run's too (``_is_ours``)."""
    checkpoints = {f"{c.value}{s}" for c in Checkpoint for s in (WEIGHTS_SUFFIX, OPTIMIZER_SUFFIX, STATE_SUFFIX)}
    return (name in checkpoints or name in (CONFIG_FILE, METRICS_FILE)
            or any(fnmatch.fnmatch(name, p) for p in REPORT_PATTERNS))


def read_metrics(run_dir: str | Path, on_message: Callable[[str], None] | None = None) -> list[dict]:
    return RunDir(Path(run_dir)).read_metrics(on_message)


LOCK_FILE = ".lock"   # the run's lock (flock) and the holder's pid
REPORT_MARKER = "Made by expr."  # report.py's footer: a report.html without it is not ours


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``folder/.lock`` for as long as the block runs; the kernel
    releases it when the process dies, however it dies. A second holder is refused at once
    with a ConfigError naming the first one's pid."""
    lock = folder / LOCK_FILE
    with storage_errors(folder, "lock the run directory"):
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_pid(fd)
                os.close(fd)
                raise ConfigError(f"{folder}: another expr train (pid {holder}) is writing this run directory; "
                                  "wait for it to finish, or choose another --out") from None
            try:  # the holder before us may have removed the file after we opened it: retry
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # on a full disk: fails here, before any work
        except BaseException:
            _unlock(lock, fd)
            raise
    try:
        yield
    finally:
        _unlock(lock, fd)


def _holder_pid(fd: int) -> str:
    """The pid the lock's holder wrote; it writes it just after taking the lock, so a refusal
    in between waits for it (up to a second) instead of naming no one."""
    for _ in range(100):
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if holder:
            return holder
        time.sleep(0.01)
    return "unknown"


def _unlock(lock: Path, fd: int) -> None:
    try:
        with contextlib.suppress(OSError):  # (must not hide the error that ends the block)
            lock.unlink(missing_ok=True)  # while still held: no one can lock this inode after us
    finally:
        os.close(fd)


@contextmanager
def open_run_dir(cfg: TrainConfig, dist: Dist, on_message: Callable[[str], None] | None = None
                 ) -> Iterator[tuple[RunDir, dict | None]]:
    """``prepare_run_dir`` under the run's lock (rank 0 takes it), held until the block ends.
    A folder this call created is removed again when the block fails before writing to it
    (a full disk, bad data): no empty run folder is left to refuse the rerun."""
    out = Path(cfg.out)
    created = False
    if dist.is_main:
        check_out_path(out)
        with storage_errors(out, "create the run directory"):
            try:
                out.mkdir(parents=True)
                created = True
            except FileExistsError:  # there, or made this instant by another train (the lock decides)
                pass
    lock = run_lock(out) if dist.is_main else contextlib.nullcontext()
    try:
        with lock:
            yield prepare_run_dir(cfg, dist, on_message)
    except BaseException:
        if created:
            _remove_if_empty(out)
        raise


def check_out_path(out: Path) -> None:
    """--out must be a folder or not exist; a dangling link or a file gets its own line."""
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"{out}: a symbolic link to {os.readlink(out)}, which does not exist; "
                          "create its target folder or choose another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory; choose another --out")


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # anything in it (a run's first files, .saving/): kept
        folder.rmdir()


def prepare_run_dir(cfg: TrainConfig, dist: Dist, on_message: Callable[[str], None] | None = None
                    ) -> tuple[RunDir, dict | None]:
    """Check ``--out`` (empty, --overwrite of a previous run, or --resume) and create it; the
    run and, on --resume, its config.json as read here (once: the resume checks and the
    resumed record use this copy). On --resume, checkpoints a killed run was saving are
    finished or discarded first. Call it through ``open_run_dir``, which holds the run's lock."""
    run = RunDir(Path(cfg.out))
    out = run.path
    check_out_path(out)
    present = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if cfg.resume:
        if dist.is_main and out.is_dir():
            _recover(run, on_message)
        dist.barrier()  # the other ranks read the checkpoint rank 0 may just have completed
        present = sorted(p.name for p in out.iterdir())
        last = run.checkpoint(Checkpoint.last.value)
        needed = (run.config, last.weights, last.state)
        missing = [p.name for p in needed if p.name not in present]
        if missing:
            raise ConfigError(f"{out}: cannot --resume, {', '.join(missing)} missing; start it without --resume")
        saved = run.read_config()
        _check_resume_options(run, cfg, saved)
        return run, saved
    if present and not cfg.overwrite:
        raise ConfigError(f"{out}: run directory is not empty; pass --overwrite to replace it or --resume to continue")
    if present:
        _check_overwritable(run, present)
    dist.barrier()  # every rank checked before rank 0 changes anything
    if dist.is_main:
        with storage_errors(out, "create the run directory"):
            out.mkdir(parents=True, exist_ok=True)
            # config.json last: it is what lets --overwrite delete the folder, so a kill among
            # the deletions leaves a folder that --overwrite still recognises as a run
            for name in sorted(present, key=lambda n: n == CONFIG_FILE):
                if (out / name).is_dir():  # timelines_<split>/ of PNGs only (_is_ours checked)
                    shutil.rmtree(out / name)
                else:
                    (out / name).unlink()
            shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
            _remove_temp_files(run)
        check_writable(run.config, "write the run")  # e.g. read-only: fail before the data loads
    dist.barrier()
    return run, None


def _check_overwritable(run: RunDir, present: list[str]) -> None:
    """--overwrite deletes a folder's files only when it is a run: its config.json is a run's
    record and every other entry is a file a run writes, with a run's content (a report with
    expr's footer, a timelines folder of PNGs only, ...). Anything else: refused, nothing deleted."""
    if CONFIG_FILE not in present or not _is_ours(run.config):
        raise ConfigError(f"{run.path}: not an expr run (no run record, {CONFIG_FILE} with \"train\" and "
                          "\"head\" blocks); --overwrite only replaces runs, choose another --out")
    foreign = [n for n in present if not (is_run_file(n) and _is_ours(run.path / n))]
    if foreign:
        raise ConfigError(f"{run.path}: holds files that are not an expr run's ({', '.join(foreign[:3])}); "
                          "--overwrite only replaces runs: move them away or choose another --out")


def _is_ours(path: Path) -> bool:
    """Whether ``path`` (a run-file name) holds what a run writes there."""
    name = path.name
    try:
        if path.is_symlink():
            return False
        if path.is_dir():  # timelines_<split>/
            return fnmatch.fnmatch(name, TIMELINES_GLOB) and all(
                p.is_file() and not p.is_symlink() and p.suffix == ".png" and starts_with(p, PNG_MAGIC)
                for p in path.iterdir())
        if not path.is_file():
            return False
        if name.endswith(WEIGHTS_SUFFIX):
            return _is_safetensors(path)
        if name.endswith(".png"):
            return starts_with(path, PNG_MAGIC)
        if name == REPORT_HTML:
            return REPORT_MARKER in path.read_text(encoding="utf-8", errors="replace")
        if name == METRICS_FILE:
            first = next((ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()), None)
            return first is None or isinstance(json.loads(first).get("epoch"), int)
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            return False
        if name == CONFIG_FILE:
            return isinstance(data.get("train"), dict) and isinstance(data.get("head"), dict)
        if name.endswith(STATE_SUFFIX):
            return isinstance(data.get("meta"), dict)
        return isinstance(data.get("protocols"), dict)  # eval_<split>.json
    except (OSError, ValueError, AttributeError):
        return False


def _is_safetensors(path: Path) -> bool:
    """A safetensors header: 8-byte little-endian length, then that much JSON."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return 2 <= size <= path.stat().st_size - 8 and isinstance(json.loads(fh.read(size)), dict)


def _recover(run: RunDir, on_message: Callable[[str], None] | None) -> None:
    check_writable(run.config, "write the run")
    with storage_errors(run.path, "write to the run directory"):
        done = run.recover()
        _remove_temp_files(run)
    if done:
        state = run.checkpoint(Checkpoint.last.value).state.name
        what = ("finished moving the checkpoints into place" if done == "finished" else
                f"discarded the checkpoints it had not committed (no {state} yet); it resumes from the previous epoch")
        _report(f"{run.path}: the run was killed while saving an epoch's checkpoints: {what}", on_message)


def _remove_temp_files(run: RunDir) -> None:
    """Hidden temporary files that a killed writer left beside the run's files."""
    for path in run.path.iterdir():
        match = TEMP_NAME.fullmatch(path.name)
        if match and is_run_file(match["name"]) and path.is_file():
            path.unlink()


def _check_resume_options(run: RunDir, cfg: TrainConfig, config: dict) -> None:
    # Options that v0.1 runs did not record, with the value those runs used.
    saved = RECORDED_SINCE_V01 | config["train"]
    mine = cfg.to_dict()
    diff = [k for k in mine if k not in RESUME_FREE and k in saved and saved[k] != mine[k]]
    if diff:
        shown = ", ".join(f"--{k.replace('_', '-')} {saved[k]} (now {mine[k]})" for k in diff)
        raise ConfigError(f"{run.path}: --resume with other options than the run: {shown}; use the run's options")
