"""Several processes writing one cache (torchrun ranks, job-array shards, two extracts started
by hand): proven with real processes, including two that write the SAME video id with
different content at the same time (issue 22.2)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from cache_helpers import new_writer, video_arrays
from expr.cache_format import open_cache, validate_cache
from expr.cache_format import schema as S

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

WRITER = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from cache_helpers import new_writer
    from expr.cache_format import VideoEntry
    k, path, start, rounds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    import os
    from expr.cache_format import writer as W
    real_rename = os.rename

    def slow_rename(src, dst):  # widen the race: a pause between taking the old version
        real_rename(src, dst)   # out of videos/ and putting the new one in
        if str(src).endswith("/videos/same"):
            time.sleep(0.02)

    import types
    W.os = types.SimpleNamespace(**{{**{{k: getattr(os, k) for k in dir(os) if not k.startswith("__")}},
                                    "rename": slow_rename}})  # the writer module's os only
    writer = new_writer(__import__("pathlib").Path(path))
    while time.time() < start:  # start together: the writes overlap
        time.sleep(0.001)
    errors = []
    for r in range(rounds):
        n = 20 + k  # each writer's version of "same" has its own length, values and source
        try:
            writer.write_video("same", VideoEntry(
                visual=np.full((n, 16), k, np.float16), frame_mask=np.ones(n, bool), timestamps=np.arange(n) / 25.0,
                fps=25.0, duration=n / 25.0, source=f"writer-{{k}}", source_size=k, source_mtime=float(k),
                audio=np.full((n, 8), k, np.float16)))
            writer.write_video(f"own{{k}}-{{r}}", VideoEntry(
                visual=np.full((5, 16), k, np.float16), frame_mask=np.ones(5, bool), timestamps=np.arange(5) / 25.0,
                fps=25.0, duration=0.2, source=f"writer-{{k}}", source_size=k, source_mtime=float(k)))
        except Exception as exc:
            errors.append(f"{{type(exc).__name__}}: {{exc}}")
    print(json.dumps(errors))
""")


def test_two_processes_writing_the_same_video_id_leave_one_whole_version(tmp_path):
    import time

    path = tmp_path / "c.zarr"
    new_writer(path)
    script = WRITER.format(tests=str(TESTS))
    start, rounds = time.time() + 3.0, 40
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k), str(path), str(start), str(rounds)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for k in (1, 2, 3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1]) == [], out  # no write failed, none was lost
    assert validate_cache(path) == []
    with open_cache(path) as cache:
        assert sorted(cache.video_ids) == sorted(["same"] + [f"own{k}-{r}" for k in (1, 2, 3) for r in range(rounds)])
        info = cache.info("same")
        k = int(info.source.removeprefix("writer-"))
        # one writer's version, whole: its features, length and source record agree
        assert info.n_frames == 20 + k and info.source_size == k
        assert np.all(cache.visual("same") == k) and np.all(cache.audio("same") == k)
    leftovers = [p.name for p in (path / S.STAGING_DIR).iterdir() if p.name != ".lock"]
    assert leftovers == []


def test_a_writer_that_waited_on_a_removed_lock_file_takes_the_new_one(tmp_path):
    """consolidate() removes an idle _staging (with its lock file) while holding the lock; a
    writer blocked on the old file must not believe it holds the lock once it wakes."""
    import fcntl
    import shutil
    import threading

    from expr.cache_format.writer import store_lock

    path = tmp_path / "c.zarr"
    new_writer(path)
    held, probe = threading.Event(), {}

    def waiter():
        with store_lock(path):
            lock = path / S.STAGING_DIR / ".lock"
            with open(lock, "a+") as fh:  # a newcomer on the current lock file must be refused
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    probe["newcomer_got_it"] = True
                    fcntl.flock(fh, fcntl.LOCK_UN)
                except BlockingIOError:
                    probe["newcomer_got_it"] = False
            held.set()

    with store_lock(path):
        thread = threading.Thread(target=waiter)
        thread.start()
        thread.join(0.5)  # it is blocked on the lock file we are about to remove
        shutil.rmtree(path / S.STAGING_DIR)
    thread.join(10)
    assert held.is_set() and probe == {"newcomer_got_it": False}


def test_two_extracts_on_one_cache_at_once_both_succeed_and_the_cache_is_whole(tmp_path):
    import os

    import media_fixtures as F

    videos = tmp_path / "videos"
    for i in range(4):
        F.make_video(videos / f"v{i}.mp4", n_frames=12 + i, size=(64, 48))
    out = tmp_path / "f.zarr"
    cmd = [sys.executable, "-m", "expr", "extract", "--videos", str(videos), "--out", str(out),
           "--visual-model", "test-tiny-clip", "--audio-model", "test-tiny-wav2vec2", "--workers", "0",
           "--batch-size", "8"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert validate_cache(out) == []
    with open_cache(out) as cache:
        assert cache.video_ids == [f"v{i}" for i in range(4)]
        assert [cache.info(f"v{i}").n_frames for i in range(4)] == [12, 13, 14, 15]


HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from cache_helpers import new_writer, video_arrays
    from expr.cache_format.writer import CacheWriter

    def wait(self, tmp, vid):  # mid-video: its arrays are in _staging, not yet committed
        print("writing", flush=True)
        sys.stdin.readline()

    CacheWriter._commit = wait
    new_writer({path!r}).write_video("live", video_arrays(3))
""")


def test_leftovers_are_judged_by_the_writers_lock_not_by_host_and_pid(tmp_path, monkeypatch):
    """A writer in another container shares the hostname, not the pids: its staging folder
    must survive our open although its pid looks dead here; once it dies (SIGKILL: no
    cleanup), the next open removes the folder. A dead writer of another host's old-style
    name goes too."""
    import os
    import signal

    from expr.cache_format.writer import CacheWriter, remove_leftovers

    path = tmp_path / "c.zarr"
    new_writer(path)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(tests=str(TESTS), path=str(path))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing", proc.stderr
        live = [p for p in (path / S.STAGING_DIR).iterdir() if p.name.endswith("__live")]
        assert len(live) == 1 and (live[0] / "visual").is_dir()
        dead = path / S.STAGING_DIR / "otherhost__4242__0123abcd__gone"
        dead.mkdir()

        def no_such_pid(pid, sig):  # every pid is foreign here, as in another pid namespace
            raise ProcessLookupError(pid)

        with monkeypatch.context() as m:
            m.setattr(os, "kill", no_such_pid)
            assert remove_leftovers(CacheWriter(path)) == ["gone"]
        assert live[0].is_dir() and not dead.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert remove_leftovers(CacheWriter(path)) == ["live"]
        assert not live[0].exists()
        new_writer(path).write_video("live", video_arrays(3))  # the id is free again
    finally:
        proc.kill()
        proc.communicate(timeout=30)
