"""Issue 22, the train/evaluate side: --resume checks its data, one writer per run folder,
--overwrite deletes only a run, and every failure of train/evaluate on bad state, bad ids,
full or read-only disks is one line. Real processes, signals and tmpfs mounts where the
promise is about them."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from expr.app.cli import run as cli
from expr.core.errors import ConfigError, ExprError, LabelFormatError
from expr.train_heads import TrainConfig, train, write_synthetic_dataset
from train_helpers import TINY, train_config

DIMS: dict[str, Any] = dict(visual_dim=16, audio_dim=12, text_dim=8, n_train=3, n_val=2)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("ds"), **DIMS)


def config(ds, out, **kw) -> TrainConfig:
    return train_config(ds, out, TINY, **kw)


class Killed(BaseException):
    """Like SIGKILL for the code under test: no `except Exception` stops it."""


def _stop(record):
    raise Killed


@pytest.fixture(scope="module")
def half(ds, tmp_path_factory):
    """A 2-epoch run killed after its first epoch was committed (the state --resume starts from)."""
    out = tmp_path_factory.mktemp("half") / "run"
    with pytest.raises(Killed):
        train(config(ds, out), on_epoch=_stop)
    return out


def _copy_run(half, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(half, out)
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- 1. --resume checks the data ---------------------------------------------------------

def _half_on_copy(ds, tmp_path) -> tuple[TrainConfig, Path]:
    """A half run (epoch 1 of 2) on a copy of the data, which a test may then change in place
    (the cache and labels paths are options that --resume compares)."""
    data = tmp_path / "data"
    shutil.copytree(ds.cache, data / "feats.zarr")
    shutil.copytree(ds.labels, data / "labels")
    cfg = config(ds, tmp_path / "run", cache=data / "feats.zarr", labels=data / "labels")
    with pytest.raises(Killed):
        train(cfg, on_epoch=_stop)
    return cfg, cfg.out


def _re_extract(cache: Path, tmp_path, **kw) -> None:
    """Replace the cache at ``cache`` by one of other data (the issue's re-extraction)."""
    other = write_synthetic_dataset(tmp_path / "other", **{**DIMS, **kw})
    shutil.rmtree(cache)
    shutil.copytree(other.cache, cache)


def test_the_content_fingerprint_tells_new_content_with_the_same_ids_and_lengths_apart(ds, tmp_path):
    from expr.cache_format import open_cache
    from expr.train_heads.checkpoint import cache_fingerprint

    same = write_synthetic_dataset(tmp_path / "same", **DIMS)        # extracted again, same content
    other = write_synthetic_dataset(tmp_path / "other", **DIMS, signal=2.0)  # same ids and lengths
    with open_cache(ds.cache) as a, open_cache(same.cache) as b, open_cache(other.cache) as c:
        assert a.video_ids == c.video_ids and [a.info(v).n_frames for v in a.video_ids] == [
            c.info(v).n_frames for v in c.video_ids]
        assert cache_fingerprint(a) == cache_fingerprint(c)  # the old fingerprint could not tell
        assert a.content_fingerprint(a.video_ids) == b.content_fingerprint(b.video_ids)
        assert a.content_fingerprint(a.video_ids) != c.content_fingerprint(c.video_ids)
        assert a.content_fingerprint(a.video_ids[:2]) != a.content_fingerprint(a.video_ids)


def test_hdf5_caches_get_a_content_fingerprint_too(ds, tmp_path):
    from expr.cache_format import export_hdf5, open_cache

    export_hdf5(ds.cache, tmp_path / "a.h5")
    with open_cache(tmp_path / "a.h5") as h5, open_cache(ds.cache) as zarr_cache:
        digest = h5.content_fingerprint(h5.video_ids)
        assert len(digest) == 16 and digest == h5.content_fingerprint(h5.video_ids)
        assert h5.video_ids == zarr_cache.video_ids


def test_resume_refuses_a_cache_re_extracted_from_other_videos(ds, tmp_path):
    cfg, run = _half_on_copy(ds, tmp_path)
    before = (run / "config.json").read_bytes()
    saved = tmp_path / "saved.zarr"
    shutil.copytree(cfg.cache, saved)
    _re_extract(cfg.cache, tmp_path, signal=2.0)  # same ids and lengths, other features
    resumed = dataclasses.replace(cfg, resume=True)
    with pytest.raises(ConfigError) as exc:  # was: rc 0, epoch 2 trained on the new features
        train(resumed)
    assert _one_line(exc.value) == (
        f"{run}: cannot --resume: the features in {cfg.cache} are not the ones the run was trained on (the cache "
        "was re-extracted or holds other videos); point --cache at the run's cache, or start the run again "
        "with --overwrite (or train into another --out)")
    assert (run / "config.json").read_bytes() == before  # the evidence is kept
    shutil.rmtree(cfg.cache)
    shutil.copytree(saved, cfg.cache)  # the run's own features back: it resumes
    assert [r["epoch"] for r in train(resumed).history] == [1, 2]
    config_json = json.loads((run / "config.json").read_text())
    assert config_json["cache"] == json.loads(before)["cache"]  # a resume keeps the run's record


def test_resume_refuses_changed_labels(ds, tmp_path):
    cfg, run = _half_on_copy(ds, tmp_path)
    first = sorted((cfg.labels / "Train_Set").glob("*.txt"))[0]
    lines = first.read_text().splitlines()
    lines[5] = "3" if lines[5] != "3" else "4"
    first.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"cannot --resume: the labels in .* are not the ones the run was trained on"):
        train(dataclasses.replace(cfg, resume=True))


def test_resume_refuses_a_cache_of_other_dimensions(ds, tmp_path):
    cfg, run = _half_on_copy(ds, tmp_path)
    _re_extract(cfg.cache, tmp_path, visual_dim=24)
    with pytest.raises(ConfigError) as exc:  # was: a `size mismatch` traceback
        train(dataclasses.replace(cfg, resume=True))
    assert f"{run}: cannot --resume on {cfg.cache}: its features have visual_dim 24 (the run's: 16)" in _one_line(
        exc.value)


def test_runs_recorded_before_content_fingerprints_still_resume(ds, half, tmp_path):
    run = _copy_run(half, tmp_path)
    state = json.loads((run / "last.state.json").read_text())
    for key in ("content_fingerprint", "labels_fingerprint"):
        del state["meta"][key]
    (run / "last.state.json").write_text(json.dumps(state))
    assert [r["epoch"] for r in train(config(ds, run, resume=True)).history] == [1, 2]


# -- 6. a damaged commit record ----------------------------------------------------------

@pytest.mark.parametrize("text", ['{"meta": {"epoch": 1', "", "{}", "[1, 2]", '{"meta": {"epoch": "1"}}',
                                  "\udcff"], ids=["truncated", "empty", "empty-object", "list",
                                                  "epoch-not-a-number", "not-utf8"])
def test_a_damaged_last_state_json_is_one_line(ds, half, tmp_path, text):
    run = _copy_run(half, tmp_path)
    (run / "last.state.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ConfigError) as exc:
        train(config(ds, run, resume=True))
    assert _one_line(exc.value).startswith(f"{run / 'last.state.json'}: not a checkpoint record (")
    assert str(exc.value).endswith("the file is damaged: restore it, or start the run again with --overwrite")


# -- 2. one writer per run folder --------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time, torch
    from expr.train_heads import TrainConfig, train
    torch.set_num_threads(1)
    def on_epoch(record):  # epoch 1 is committed: hold the run here until killed
        print("EPOCH", record["epoch"], flush=True)
        time.sleep(120)
    train(TrainConfig(**{cfg!r}), on_epoch=on_epoch)
""")


def test_a_second_train_on_the_same_out_is_refused_and_a_killed_holder_releases_it(ds, tmp_path):
    out = tmp_path / "run"
    cfg = {"cache": str(ds.cache), "labels": str(ds.labels), "out": str(out), **TINY}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(cfg=cfg)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "EPOCH 1", (
            holder.stderr and holder.stderr.read())
        files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        for kw in ({}, {"overwrite": True}, {"resume": True}):
            with pytest.raises(ConfigError) as exc:
                train(config(ds, out, lr=5e-3, **kw))
            assert _one_line(exc.value) == (f"{out}: another expr train (pid {holder.pid}) is writing this run "
                                            "directory; wait for it to finish, or choose another --out")
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files  # untouched
        holder.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed process
        assert holder.wait(timeout=30) == -signal.SIGKILL
    finally:
        holder.kill()
        holder.wait()
    resumed = train(config(ds, out, resume=True))
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert not (out / ".lock").exists()


def test_the_lock_is_held_by_one_of_two_processes_started_together(ds, tmp_path):
    """Two `run_lock` holders in real processes started at once: exactly one gets it."""
    script = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from expr.core.errors import ConfigError
        from expr.train_heads.run_dir import run_lock
        try:
            with run_lock(Path(sys.argv[1])):
                print("held", flush=True)
                time.sleep(3)
        except ConfigError as exc:
            print("refused", exc, flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=ENV) for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0] for p in procs)
    assert outs[0].startswith("held") and outs[1].startswith("refused")
    assert any(f"(pid {p.pid})" in outs[1] for p in procs)


# -- 3. --overwrite deletes only a run ---------------------------------------------------

def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_folder_that_only_has_run_like_names(ds, tmp_path):
    mine = tmp_path / "thesis"
    (mine / "timelines_thesis").mkdir(parents=True)
    (mine / "timelines_thesis" / "chapter1.tex").write_text("\\chapter{One}")
    (mine / "config.json").write_text('{"font": "serif"}')
    (mine / "report.html").write_text("<html>my report</html>")
    before = _tree(mine)
    with pytest.raises(ConfigError, match=r"not an expr run \(no run record"):
        train(config(ds, mine, overwrite=True))
    assert _tree(mine) == before


@pytest.mark.parametrize("extra", ["timelines_thesis/chapter1.tex", "report.html", "eval_x.json", "notes.txt"])
def test_overwrite_refuses_a_run_holding_something_else(ds, half, tmp_path, extra):
    run = _copy_run(half, tmp_path)
    (run / extra).parent.mkdir(exist_ok=True)
    (run / extra).write_text("mine")
    before = _tree(run)
    with pytest.raises(ConfigError) as exc:
        train(config(ds, run, overwrite=True))
    assert f"holds files that are not an expr run's ({extra.split('/')[0]})" in _one_line(exc.value)
    assert _tree(run) == before


def test_overwrite_replaces_a_run_with_its_reports_and_timelines(ds, half, tmp_path):
    run = _copy_run(half, tmp_path)
    (run / "timelines_Validation_Set").mkdir()
    (run / "timelines_Validation_Set" / "val_000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 10)
    (run / "report.html").write_text("<html><p class=\"muted\">Made by expr. Self-contained</p></html>")
    result = train(config(ds, run, epochs=1, overwrite=True))
    assert sorted(p.name for p in run.iterdir()) == ["best.safetensors", "config.json", "last.optim.safetensors",
                                                     "last.safetensors", "last.state.json", "metrics.jsonl"]
    assert [r["epoch"] for r in result.history] == [1]


def test_an_overwrite_killed_while_deleting_can_be_overwritten_again(ds, half, tmp_path, monkeypatch):
    """The run record (config.json) is what lets --overwrite delete a folder: it goes last, so
    a kill among the deletions leaves a folder that --overwrite still recognises."""
    run = _copy_run(half, tmp_path)
    real_unlink, deleted = Path.unlink, []

    def unlink(self, *args, **kwargs):
        if self.parent == run and len(deleted) == 2:
            raise Killed
        real_unlink(self, *args, **kwargs)
        deleted.append(self.name)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Killed):
        train(config(ds, run, overwrite=True))
    monkeypatch.undo()
    assert len(deleted) == 2 and (run / "config.json").is_file()
    result = train(config(ds, run, epochs=1, overwrite=True))
    assert [r["epoch"] for r in result.history] == [1]


# -- 9. array shapes that disagree with the attributes -----------------------------------

def _edit_attrs(cache: Path, vid: str, **attrs) -> None:
    """Edit a video's attributes in its zarr.json and in the root's consolidated snapshot."""
    for meta_path, key in ((cache / "videos" / vid / "zarr.json", None), (cache / "zarr.json", f"videos/{vid}")):
        meta = json.loads(meta_path.read_text())
        node = meta if key is None else (meta.get("consolidated_metadata") or {}).get("metadata", {}).get(key)
        if node is not None:
            node["attributes"].update(attrs)
            meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", ["n_frames-edited", "array-swapped"])
def test_train_refuses_arrays_that_disagree_with_the_attributes(ds, tmp_path, damage):
    cache = tmp_path / "cache.zarr"
    shutil.copytree(ds.cache, cache)
    from expr.cache_format import open_cache

    with open_cache(cache) as reader:
        vid, donor = reader.video_ids[0], reader.video_ids[-1]
        n, other = reader.info(vid).n_frames, reader.info(donor).n_frames
    assert n != other
    if damage == "n_frames-edited":
        _edit_attrs(cache, vid, n_frames=n + 7)
        expected = f"shape ({n}, 16) disagrees with the video's attributes, expected ({n + 7}, 16)"
    else:  # another video's visual array copied in: the attributes stay
        shutil.rmtree(cache / "videos" / vid / "visual")
        shutil.copytree(cache / "videos" / donor / "visual", cache / "videos" / vid / "visual")
        expected = f"shape ({other}, 16) disagrees with the video's attributes, expected ({n}, 16)"
    with pytest.raises(ExprError) as exc:  # was: a tensor-size RuntimeError
        train(config(ds, tmp_path / "run", cache=cache))
    assert f"video {vid!r}, array 'visual': {expected}" in _one_line(exc.value)
    assert not (tmp_path / "run").exists()  # nothing was written: no empty run folder either


# -- 13. ids are plain names --------------------------------------------------------------

def test_listed_ids_must_be_plain_names(ds, tmp_path):
    secret = tmp_path / "sec" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("password=hunter2\n")
    ids = tmp_path / "ids.txt"
    ids.write_text("train_000\n../sec/secret\n")
    labels = tmp_path / "labels"
    shutil.copytree(ds.labels, labels)
    rel = os.path.relpath(secret.parent, labels / "Train_Set")
    ids.write_text(f"train_000\n{rel}/secret\n")
    with pytest.raises(LabelFormatError) as exc:
        train(config(ds, tmp_path / "run", labels=labels, train_list=ids))
    text = _one_line(exc.value)
    assert text.startswith(f"{ids}:2: '{rel}/secret' is not a video id") and "hunter2" not in text


# -- 15. notes about the data ------------------------------------------------------------

def test_notes_on_no_audio_and_an_id_in_both_splits(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "ds", **DIMS, with_audio=False)
    first = sorted((ds.labels / "Train_Set").glob("*.txt"))[0]
    shutil.copy(first, ds.labels / "Validation_Set" / first.name)
    said: list[str] = []
    train(config(ds, tmp_path / "run", epochs=1), on_message=said.append)
    assert any(m.startswith("no video of the run has audio (6 videos in") and "--no-audio" in m for m in said), said
    assert f"the same video in Train_Set and Validation_Set: 1 ({first.stem}); its validation scores are not " \
           "held out: keep each id in one split" in said
    said.clear()
    train(config(ds, tmp_path / "run2", epochs=1, no_audio=True), on_message=said.append)
    assert not any("audio" in m for m in said)


# -- 16, 17. --out messages, and no empty run folder ---------------------------------------

def test_a_dangling_symlink_as_out_says_so(ds, tmp_path):
    link = tmp_path / "runs"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError) as exc:  # was: "File exists"
        train(config(ds, link))
    assert _one_line(exc.value) == (f"{link}: a symbolic link to {tmp_path / 'gone'}, which does not exist; "
                                    "create its target folder or choose another --out")


def test_a_failed_start_leaves_no_empty_run_folder(ds, tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(ConfigError):  # fails after the folder was made: no train windows
        train(config(ds, out, window=100_000))
    assert not out.exists()


def test_checkpoints_of_equal_runs_are_byte_identical(ds, tmp_path):
    """safetensors writes its metadata keys in a per-process random order: sorted now."""
    script = textwrap.dedent("""
        import sys, torch
        from expr.train_heads import TrainConfig, train
        torch.set_num_threads(1)
        train(TrainConfig(**eval(sys.argv[1])))
    """)
    for name in ("a", "b"):
        cfg = {"cache": str(ds.cache), "labels": str(ds.labels), "out": str(tmp_path / name), **TINY, "epochs": 1}
        subprocess.run([sys.executable, "-c", script, repr(cfg)], check=True, env=ENV, timeout=300)
    for name in ("best.safetensors", "last.safetensors", "last.optim.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_safetensors_metadata_keys_are_written_sorted(tmp_path):
    from safetensors import safe_open

    from expr.train_heads.checkpoint import _write_tensors

    metadata = {f"k{i}": json.dumps({"v": i, "é": "a\nb"}) for i in (5, 2, 7, 0, 3, 6, 1, 4)}
    _write_tensors(tmp_path / "w.safetensors", {"b": torch.ones(3), "a": torch.zeros(2)}, metadata)
    data = (tmp_path / "w.safetensors").read_bytes()
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == sorted(metadata)  # (8 keys: 1 in 40,320 by chance)
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        assert f.metadata() == metadata and torch.equal(f.get_tensor("b"), torch.ones(3))


# -- 7, 8. evaluate ----------------------------------------------------------------------

def _evaluate(ds, run_dir, *extra) -> int:
    return cli(["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(ds.labels),
                "--device", "cpu", "--checkpoint", "last", *extra])


def test_evaluate_split_names_are_checked_before_the_work(ds, half, tmp_path, capsys):
    run = _copy_run(half, tmp_path)
    assert _evaluate(ds, run, "--split", "Validation_Set/") == 0  # tab completion's slash
    assert (run / "eval_Validation_Set.json").is_file()
    assert _evaluate(ds, run, "--split", "../Validation_Set") == 1
    err = capsys.readouterr().err
    assert "error: --split '../Validation_Set': not a folder name of --labels such as Validation_Set" in err


def test_evaluate_ids_must_be_plain_names(ds, half, tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("../Train_Set/train_000\n")
    assert _evaluate(ds, half, "--videos", str(ids)) == 1
    assert f"error: {ids}:1: '../Train_Set/train_000' is not a video id" in capsys.readouterr().err


def test_atomic_path_keeps_the_real_error_when_its_clean_up_fails(tmp_path, monkeypatch):
    from expr.core.atomic import write_text

    def unlink(self, missing_ok=False):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(IsADirectoryError):  # the write's own error, not the unlink's
        write_text(tmp_path, "x")


# -- real mounts: full and read-only tmpfs in a private mount namespace ----------------------

IN_NAMESPACE = textwrap.dedent("""
    import contextlib, io, json, os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from cache_helpers import fill_disk
    from expr.app.cli import run
    disk, jobs = Path(sys.argv[1]), json.loads(sys.argv[2])
    out = []
    for free_pages, argv in jobs:
        fill_disk(disk)
        filler = disk / "filler"  # leave ``free_pages`` pages of the tmpfs free
        os.truncate(filler, max(0, (filler.stat().st_size // 4096 - free_pages) * 4096))
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
            rc = run(argv)
        out.append({"rc": rc, "err": err.getvalue(), "left": sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))})
        filler.unlink()
    print(json.dumps(out))
""")


def test_full_and_read_only_disks_under_train_and_evaluate_are_one_line(ds, half, tmp_path):
    """Train onto a full disk (nothing left behind), a disk that fills while the first
    checkpoint is saved (one line, was a SafetensorError traceback), and evaluate into a
    read-only run folder (the write's error, not the clean-up's)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("no user/mount namespaces here")
    disk, ro = tmp_path / "disk", tmp_path / "ro"
    disk.mkdir()
    ro.mkdir()
    shutil.copytree(half, tmp_path / "src_run")
    base = ["train", "--cache", str(ds.cache), "--labels", str(ds.labels), *sum(
        ([f"--{k.replace('_', '-')}", str(v)] for k, v in TINY.items()), [])]
    jobs = [
        (0, base + ["--out", str(disk / "full")]),                 # the disk is full from the start
        (3, base + ["--out", str(disk / "saving")]),               # room for the config and metrics only
        (64, ["evaluate", "--run", str(ro / "run"), "--cache", str(ds.cache), "--labels", str(ds.labels),
              "--device", "cpu", "--checkpoint", "last"]),
    ]
    shell = (f"mount -t tmpfs -o size=2m tmpfs {disk} && mount -t tmpfs -o size=4m tmpfs {ro} && "
             f"cp -r {tmp_path / 'src_run'} {ro / 'run'} && mount -o remount,ro {ro} && "
             f"exec {sys.executable} -c \"$0\" \"$@\"")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell, IN_NAMESPACE, str(disk), json.dumps(jobs),
                           str(Path(__file__).parent)], capture_output=True, text=True, timeout=300, env=ENV)
    if proc.returncode and "remount" in proc.stderr:
        pytest.skip(f"cannot remount a tmpfs read-only here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    full, saving, evaluate = json.loads(proc.stdout.strip().splitlines()[-1])
    no_space = "No space left on device; the disk is full: free space or write to another disk"
    assert full == {"rc": 1, "err": f"error: {disk / 'full'}: cannot lock the run directory: {no_space}\n",
                    "left": ["filler"]}  # no empty run folder
    assert saving["rc"] == 1 and saving["err"] == f"error: {disk / 'saving'}: cannot save the checkpoint: {no_space}\n"
    assert saving["left"] == ["filler", "saving", "saving/config.json", "saving/metrics.jsonl"]  # no .saving/
    assert evaluate["rc"] == 1 and evaluate["err"] == (
        f"error: {ro / 'run' / 'eval_Validation_Set.json'}: cannot write the evaluation: Read-only file system; "
        "the file system is read-only: choose a writable location\n")
