"""A run killed at any point of its writes resumes exactly (issue 13, problem 3): faults are
injected between every pair of writes, never raced with a timer. Also the metrics file's
torn last line, mixed checkpoint files, file modes and a read-only --out."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from expr.core.errors import ConfigError, StorageError
from expr.train_heads import RunDir, TrainConfig, read_metrics, train, write_synthetic_dataset
from train_helpers import TINY, train_config



pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("ckpt"), visual_dim=16, audio_dim=12, text_dim=8,
                                   n_train=3, n_val=2)


@pytest.fixture(scope="module")
def full(ds, tmp_path_factory):
    """The uninterrupted run, and the writes it makes (destination names, in order)."""
    out = tmp_path_factory.mktemp("full") / "run"
    writes: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        _count_writes(mp, lambda dest: writes.append(dest))
        result = train(config(ds, out))
    return result, writes


def config(ds, out, **kw) -> TrainConfig:
    return train_config(ds, out, TINY, **kw)


class Killed(BaseException):
    """Like SIGKILL for the code under test: no `except Exception` stops it."""


def _count_writes(mp: pytest.MonkeyPatch, on_write) -> None:
    """Call ``on_write(name)`` before every write of a run: each os.replace (every atomic
    file write and every move of a commit) and each append to metrics.jsonl."""
    real_replace, real_append = os.replace, RunDir.append_metrics

    def replace(src, dst, *args, **kwargs):
        on_write(f"{Path(dst).parent.name}/{Path(dst).name}")
        return real_replace(src, dst, *args, **kwargs)

    def append(self, record):
        on_write(f"{self.path.name}/{self.metrics.name} (append)")
        return real_append(self, record)

    mp.setattr(os, "replace", replace)
    mp.setattr(RunDir, "append_metrics", append)


def _kill_before(mp: pytest.MonkeyPatch, k: int, torn: bool) -> None:
    """Kill before the k-th write (1-based); ``torn``: an append dies halfway through its line."""
    seen = [0]
    real_append = RunDir.append_metrics

    def on_write(name):
        seen[0] += 1
        if seen[0] == k:
            raise Killed(name)

    _count_writes(mp, on_write)
    if torn:
        def append(self, record):
            seen[0] += 1
            if seen[0] == k:
                line = json.dumps(record)
                with open(self.metrics, "a") as fh:
                    fh.write(line[: len(line) // 2])
                raise Killed("torn append")
            return real_append(self, record)

        mp.setattr(RunDir, "append_metrics", append)


def _strip(history):
    return [{k: v for k, v in r.items() if k not in ("seconds", "data_seconds")} for r in history]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _assert_same_run(run: Path, reference: Path) -> None:
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert _strip(read_metrics(run)) == _strip(read_metrics(reference))
    for name in ("best.safetensors", "last.safetensors", "last.optim.safetensors"):
        a, b = _tensors(run / name), _tensors(reference / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        # the files too, not only their tensors (safetensors' metadata order is fixed by expr)
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name


def test_the_writes_of_an_epoch(full):
    _, writes = full
    epoch = ["run/metrics.jsonl (append)", ".saving/best.safetensors", ".saving/last.safetensors",
             ".saving/last.optim.safetensors", ".saving/last.state.json", "run/best.safetensors",
             "run/last.optim.safetensors", "run/last.safetensors", "run/last.state.json"]
    assert writes[:2] == ["run/config.json", "run/metrics.jsonl"]
    assert writes[2:11] == epoch  # epoch 1 is always the best so far


@pytest.mark.parametrize("torn", [False, True], ids=["between-writes", "torn-append"])
def test_a_kill_before_any_write_resumes_exactly_or_refuses(ds, full, tmp_path, torn):
    result, writes = full
    points = [k for k, name in enumerate(writes, 1) if not torn or name.endswith("(append)")]
    outcomes = []
    for k in points:
        out = tmp_path / f"k{k}"
        with pytest.MonkeyPatch.context() as mp:
            _kill_before(mp, k, torn)
            with pytest.raises(Killed):
                train(config(ds, out))
        messages: list[str] = []
        try:
            resumed = train(config(ds, out, resume=True), on_message=messages.append)
        except ConfigError as exc:  # killed before the first checkpoint was committed
            assert "cannot --resume" in str(exc) and "start it without --resume" in str(exc)
            assert k <= writes.index(".saving/last.state.json") + 1  # its commit record not written
            outcomes.append("refused")
            continue
        assert _strip(resumed.history) == _strip(result.history), writes[k - 1]
        _assert_same_run(out, result.run_dir)
        outcomes.append(next((m.split(": ", 1)[1] for m in messages if "killed" in m), "plain resume"))
    if torn:  # epoch 1's line: nothing to resume; epoch 2's: resumed after epoch 1
        assert outcomes == ["refused", "skipped an incomplete last line (the run was killed while writing it)"]
    else:
        assert outcomes.count("refused") == writes.index(".saving/last.state.json") + 1
        text = " | ".join(outcomes)
        assert "finished moving the checkpoints" in text and "discarded the checkpoints" in text


def test_a_torn_last_metrics_line_is_skipped_and_reported(tmp_path):
    run = RunDir(tmp_path)
    run.write_metrics([{"epoch": 1}, {"epoch": 2}])
    with open(run.metrics, "a") as fh:
        fh.write('{"epoch": 3, "lo')
    said = []
    assert run.read_metrics(said.append) == [{"epoch": 1}, {"epoch": 2}]
    assert said == [f"{run.metrics}:3: skipped an incomplete last line (the run was killed while writing it)"]
    with pytest.warns(UserWarning, match="incomplete last line"):
        assert len(read_metrics(tmp_path)) == 2
    run.metrics.write_text('{"epoch": 1}\n{"ep\n{"epoch": 3}\n')
    with pytest.raises(ConfigError, match=r"metrics.jsonl:2: not a JSON line"):
        run.read_metrics()


def test_mixed_checkpoint_files_are_refused(ds, tmp_path):
    out, other = tmp_path / "run", tmp_path / "other"
    train(config(ds, other, seed=1))

    def stop(record):
        raise Killed

    with pytest.raises(Killed):
        train(config(ds, out), on_epoch=stop)
    shutil.copy(other / "last.optim.safetensors", out)  # e.g. restored from another run's backup
    with pytest.raises(ConfigError, match=r"last.optim.safetensors: not the file last.state.json was saved with"):
        train(config(ds, out, resume=True))


@pytest.mark.parametrize("damage", ["config", "weights"])
def test_a_damaged_run_file_is_one_error_naming_it(full, tmp_path, damage):
    # changed from outside (a half-copied folder, a bad sync): one line, not a traceback
    from expr.train_heads import load_run

    run = tmp_path / "run"
    shutil.copytree(full[0].run_dir, run)
    if damage == "config":
        (run / "config.json").write_text("{not json", encoding="utf-8")
        expected = r"config.json: cannot read the run's config"
    else:
        data = (run / "best.safetensors").read_bytes()
        (run / "best.safetensors").write_bytes(data[:100])
        expected = r"best.safetensors: cannot read the checkpoint"
    with pytest.raises(ConfigError, match=expected):
        load_run(run, "best")


def test_checkpoints_get_the_mode_of_the_json_files(full):
    run = full[0].run_dir
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.iterdir()}
    assert len(set(modes.values())) == 1, modes
    state = json.loads((run / "last.state.json").read_text())
    assert set(state["sha256"]) == {"last.safetensors", "last.optim.safetensors"}


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(ds, full, tmp_path, monkeypatch):
    import errno

    from expr.train_heads import checkpoint

    real = checkpoint._write_tensors
    calls = [0]

    def full_disk(path, *args, **kwargs):
        calls[0] += 1
        if calls[0] > 3:  # epoch 1 (best, last weights, optimiser) fits, epoch 2 does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "_write_tensors", full_disk)
    out = tmp_path / "run"
    with pytest.raises(StorageError, match=r"cannot save the checkpoint: No space left on device; the disk is full"):
        train(config(ds, out))
    assert not (out / ".saving").exists()
    monkeypatch.undo()
    resumed = train(config(ds, out, resume=True))
    assert _strip(resumed.history) == _strip(full[0].history)


KILL = textwrap.dedent("""
    import os, sys, torch
    from pathlib import Path
    from expr.train_heads import TrainConfig, train
    torch.set_num_threads(1)
    real, seen = os.replace, []
    def replace(src, dst, *a, **k):  # SIGKILL-like: no cleanup, temp files stay
        seen.append(Path(dst).name)
        if Path(dst).name == "last.optim.safetensors" and seen.count(Path(dst).name) == {nth}:
            os._exit(137)
        return real(src, dst, *a, **k)
    os.replace = replace
    print(os.getpid(), flush=True)
    train(TrainConfig(**{cfg!r}))
""")


def proc_pid(proc) -> int:
    return int(proc.stdout.split()[0])


def test_a_real_kill_between_the_weights_and_the_optimiser(ds, full, tmp_path):
    """The issue's case, in a subprocess that dies with os._exit (temp files left behind)."""
    out = tmp_path / "run"
    cfg = {"cache": str(ds.cache), "labels": str(ds.labels), "out": str(out), **TINY}
    for nth in (3,):  # epoch 2, before its commit record (the sweep above covers the moves too)
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, "-c", KILL.format(nth=nth, cfg=cfg)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert proc.returncode == 137, proc.stderr[-2000:]
        left = sorted(p.name for p in (out / ".saving").iterdir())
        if nth == 3:  # the optimiser half-written (its temp file), no commit record
            assert f".last.optim.safetensors.{proc_pid(proc)}.tmp" in left and "last.state.json" not in left
        else:  # committed; the optimiser and the record still to move
            assert left[-3:] == ["last.optim.safetensors", "last.safetensors", "last.state.json"]
        resumed = train(config(ds, out, resume=True))
        assert _strip(resumed.history) == _strip(full[0].history)
        _assert_same_run(out, full[0].run_dir)


IN_NAMESPACE = textwrap.dedent("""
    import contextlib, io, json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from cache_helpers import fill_disk
    from expr.app.cli import run
    full, commands = Path(sys.argv[1]), json.loads(sys.argv[2])
    fill_disk(full)
    rc, err = [], []
    for argv in commands:  # in one process: one interpreter start, not three
        with contextlib.redirect_stderr(io.StringIO()) as text, contextlib.redirect_stdout(io.StringIO()):
            rc.append(run(argv))
        err.append(text.getvalue())
    print(json.dumps({"rc": rc, "err": err, "full": sorted(p.name for p in full.iterdir())}))
""")


def test_read_only_and_full_disks_are_one_line(ds, full, tmp_path):
    """Real read-only and full tmpfs mounts in a private mount namespace (root ignores chmod)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user/mount namespaces here")
    import media_fixtures as F

    ro, disk, videos = tmp_path / "ro", tmp_path / "full", tmp_path / "videos"
    for d in (ro, disk, videos):
        d.mkdir()
    F.make_video(videos / "v.mp4", n_frames=4)
    commands = [
        ["train", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(ro / "run"), "--device", "cpu"],
        ["predict", "--run", str(full[0].run_dir), "--cache", str(ds.cache), "--out", str(ro / "p.csv")],
        ["extract", "--videos", str(videos), "--out", str(disk / "c.zarr"), "--visual-model", "test-tiny-clip",
         "--audio-model", "test-tiny-wav2vec2", "--workers", "0"],
    ]
    shell = (f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && mount -t tmpfs -o size=1m tmpfs {disk} && "
             f"exec {sys.executable} -c \"$0\" \"$@\"")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell, IN_NAMESPACE, str(disk), json.dumps(commands),
                           str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    read_only = "Read-only file system; the file system is read-only: choose a writable location"
    assert res["rc"] == [1, 1, 1]
    assert res["err"][:2] == [f"error: {ro / 'run'}: cannot create the run directory: {read_only}\n",
                              f"error: {ro / 'p.csv'}: cannot write the submission: {read_only}\n"]
    assert res["err"][2] == (f"error: {disk / 'c.zarr'}: cannot write the cache: No space left on device; "
                             "the disk is full: free space or write to another disk\n")
    assert res["full"] == ["filler"]  # no half cache, no zarr.<pid>.tmp


def test_temp_files_a_killed_writer_left_are_removed(ds, full, tmp_path):
    from expr.core.devices import Dist
    from expr.train_heads.run_dir import prepare_run_dir

    out = tmp_path / "run"
    shutil.copytree(full[0].run_dir, out)
    for name in (".metrics.jsonl.123.tmp", ".last.safetensors.9.tmp", ".notes.txt.1.tmp", ".saving"):
        (out / name).write_text("x") if name != ".saving" else (out / name).mkdir()
    prepare_run_dir(config(ds, out, overwrite=True), Dist())
    assert sorted(p.name for p in out.iterdir()) == [".notes.txt.1.tmp"]  # not ours: left alone
