"""The decode pool's pipes and shared memory: no deadlock, /dev/shm owned, videos committed early.

Real processes, real pipes (with the smallest socket buffers the kernel allows), real /dev/shm
and a real small tmpfs mounted over /dev/shm in a private namespace.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import media_fixtures as F
from expr.core.errors import ConfigError
from expr.extract import decode_pool, messages
from expr.extract.decode_pool import DecodePool, fit_slots, remove_dead_segments
from expr.extract.messages import DecodeJob, FrameBatch, VideoFailed
from expr.extract.run import run_extract
from test_extract_run import tiny_config

REPO = Path(__file__).resolve().parents[1]


def job_for(path: Path, **kwargs) -> DecodeJob:
    kwargs.setdefault("image_size", 32)
    kwargs.setdefault("batch_frames", 4)
    return DecodeJob(path.stem, path, path, None, **kwargs)


def run_in_thread(pool: DecodePool, timeout: float) -> list:
    got: list = []
    thread = threading.Thread(target=lambda: got.extend(pool), daemon=True)
    thread.start()
    thread.join(timeout)
    try:
        assert not thread.is_alive(), "the pool hung"
    finally:
        pool.close()
    return got


def test_500_workers_with_two_videos_and_tiny_pipes_neither_hang_nor_start_500(tmp_path):
    """Issue: the parent blocked granting 500 credits, one message each, while the worker
    blocked sending a batch. Smallest socket buffers: any blocking send shows as a hang."""
    paths = [F.make_video(tmp_path / f"v{i}.mp4", n_frames=60, audio_rate=None) for i in range(2)]
    pool = DecodePool([job_for(p) for p in paths], workers=500, max_pending=1000, pipe_buffer=1)
    got = run_in_thread(pool, timeout=120)
    assert pool.peak_workers == 2  # capped at the number of jobs (these do not split)
    for path in paths:
        batches = [m for m in got if isinstance(m, FrameBatch) and m.video_id == path.stem]
        pixels = np.concatenate([b.pixels for b in sorted(batches, key=lambda b: b.start)])
        np.testing.assert_array_equal(F.frame_indices(pixels), np.arange(60))
    assert not any(isinstance(m, VideoFailed) for m in got)


def mark_exit_hook(folder: str, job: DecodeJob, msg) -> None:
    """In the worker: an atexit mark (written only if the interpreter is finalised) and an
    unflushed line on stdout (lost unless the worker flushes before it leaves)."""
    import atexit

    if not getattr(mark_exit_hook, "armed", False):
        mark_exit_hook.armed = True  # pyright: ignore[reportFunctionMemberAccess]
        atexit.register(Path(folder, f"finalised-{os.getpid()}").touch)
        sys.stdout.write(f"worker {os.getpid()} was here\n")


def test_a_stopped_worker_leaves_without_finalising_but_flushes_what_it_printed(tmp_path, capfd):
    """Finalising a spawned worker's interpreter with torch loaded took 360-430 ms, which
    close() waited for at the end of every run; os._exit takes ~40 ms. It must not lose output."""
    path = F.make_video(tmp_path / "v.mp4", n_frames=12, audio_rate=None)
    hook = functools.partial(mark_exit_hook, str(tmp_path))
    got = run_in_thread(DecodePool([job_for(path)], workers=1, worker_hook=hook), timeout=120)
    assert sum(len(m.pixels) for m in got if isinstance(m, FrameBatch)) == 12
    printed = capfd.readouterr().out
    assert "was here" in printed, "the worker's buffered stdout was lost"
    assert not list(tmp_path.glob("finalised-*")), "the worker finalised its interpreter"


def test_shared_memory_is_named_after_the_run(tmp_path):
    path = F.make_video(tmp_path / "v.mp4", n_frames=8, audio_rate=None)
    names = []
    with DecodePool([job_for(path)], workers=1) as pool:
        for _ in pool:
            assert pool._shm is not None
            names.append(pool._shm.name)
    assert names and all(n.lstrip("/").startswith(f"expr-{os.getpid()}-") for n in names)
    assert not list(Path("/dev/shm").glob(f"expr-{os.getpid()}-*"))  # unlinked at the end


def test_dead_runs_segments_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that has just exited: no process has it
    (tmp_path / f"expr-{dead.pid}-0a1b2c3d").write_bytes(b"x")
    (tmp_path / f"expr-{os.getpid()}-0a1b2c3d").write_bytes(b"x")  # this live process's
    (tmp_path / "psm_12345").write_bytes(b"x")  # not ours: another program's
    assert remove_dead_segments(tmp_path) == [f"expr-{dead.pid}-0a1b2c3d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"expr-{os.getpid()}-0a1b2c3d", "psm_12345"])


def test_a_live_runs_block_is_kept_when_its_pid_is_not_ours_to_see(tmp_path):
    # Two containers of one Kubernetes pod (or docker --ipc=host) share /dev/shm but not their
    # pid namespace, usually as the same uid (root): the other run's pid is "dead" here. Its
    # block must stay while that run holds it; the lock decides, not the pid.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    block = tmp_path / f"expr-{dead.pid}-0a1b2c3d"
    block.write_bytes(b"x")
    fd = decode_pool.hold_block(block)  # what the owning pool does while it runs
    assert fd is not None
    try:
        assert remove_dead_segments(tmp_path) == [] and block.exists()
    finally:
        os.close(fd)
    assert remove_dead_segments(tmp_path) == [block.name] and not block.exists()  # owner gone: removed


def test_a_message_carries_two_decoded_batches_the_same_frames(tmp_path):
    """Decoding 64 frames at a time cost the workers ~10% more CPU a frame than 32, and the
    parent pays per message: so two 32-frame batches share a slot and a message."""
    path = F.make_video(tmp_path / "v.mp4", n_frames=70, audio_rate=None)
    with DecodePool([job_for(path, batch_frames=8)], workers=1) as pool:
        got = [m for m in pool if isinstance(m, FrameBatch)]
    inline = [m for m in DecodePool([job_for(path, batch_frames=8)], workers=0) if isinstance(m, FrameBatch)]
    assert [len(m.pixels) for m in inline] == [8] * 8 + [6]
    assert [(m.start, len(m.pixels)) for m in got] == [(0, 16), (16, 16), (32, 16), (48, 16), (64, 6)]
    for name in ("pixels", "mask", "timestamps"):
        np.testing.assert_array_equal(np.concatenate([getattr(m, name) for m in got]),
                                      np.concatenate([getattr(m, name) for m in inline]))


def fail_second_batch_hook(job: DecodeJob, msg) -> None:
    """Test-only: video `a` fails at its second decoded batch, the first one still unsent in its slot."""
    if job.video_id == "a" and isinstance(msg, FrameBatch) and msg.start == 8:
        raise RuntimeError("injected failure")


def test_a_failure_with_a_batch_held_in_a_slot_gives_the_slot_back(tmp_path):
    # One slot in all: had the failed video's slot been lost, video b would wait for it forever.
    paths = [F.make_video(tmp_path / f"{v}.mp4", n_frames=n, audio_rate=None) for v, n in (("a", 40), ("b", 30))]
    pool = DecodePool([job_for(p, batch_frames=8) for p in paths], workers=1, max_pending=1,
                      worker_hook=fail_second_batch_hook)
    got = run_in_thread(pool, timeout=120)
    failed = [m for m in got if isinstance(m, VideoFailed)]
    assert [m.video_id for m in failed] == ["a"] and "injected failure" in failed[0].reason
    assert not [m for m in got if isinstance(m, FrameBatch) and m.video_id == "a"]  # its held batch never went out
    assert sum(len(m.pixels) for m in got if isinstance(m, FrameBatch) and m.video_id == "b") == 30


def test_a_dead_runs_audio_track_files_go_with_its_block_a_live_runs_stay(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_block = tmp_path / f"expr-{dead.pid}-0a1b2c3d"  # a run in another pid namespace: locked
    live_block.write_bytes(b"x")
    fd = decode_pool.hold_block(live_block)
    assert fd is not None
    try:
        (tmp_path / f"{live_block.name}-00aa11bb22cc").write_bytes(b"x")  # its worker's track: kept
        (tmp_path / f"expr-{dead.pid}-99ee99ee-00aa11bb22cc").write_bytes(b"x")  # a killed run's: block gone
        assert remove_dead_segments(tmp_path) == [f"expr-{dead.pid}-99ee99ee-00aa11bb22cc"]
    finally:
        os.close(fd)
    assert sorted(remove_dead_segments(tmp_path)) == sorted([live_block.name, f"{live_block.name}-00aa11bb22cc"])


def test_audio_tracks_come_through_files_in_dev_shm_equal_and_removed(tmp_path, monkeypatch):
    """A 30 MB track unpickled from the pipe cost the feeding thread 52 ms; it now comes as a
    file beside the frame block, read once and removed."""
    paths = [F.make_video(tmp_path / f"{v}.mp4", n_frames=12, audio_seconds=2.0) for v in "ab"]
    read = []
    real = decode_pool._track_from_file
    monkeypatch.setattr(decode_pool, "_track_from_file",
                        lambda msg, job: read.append(Path("/dev/shm") / msg.name) or real(msg, job))
    with DecodePool([job_for(p) for p in paths], workers=2, audio_jobs=True) as pool:
        got = list(pool)
    inline = [m for m in DecodePool([job_for(p) for p in paths], workers=0, audio_jobs=True)
              if isinstance(m, messages.AudioTrack)]
    tracks = {m.video_id: m.samples for m in got if isinstance(m, messages.AudioTrack)}
    assert len(read) == 2 and not any(path.exists() for path in read)  # both read, both removed
    assert {m.video_id for m in inline} == set(tracks) == {"a", "b"}
    for m in inline:
        got_samples = tracks[m.video_id]
        assert got_samples is not None and got_samples.dtype == np.float32
        np.testing.assert_array_equal(got_samples, m.samples)
    assert not list(Path("/dev/shm").glob(f"expr-{os.getpid()}-*"))


def test_a_track_that_cannot_be_written_goes_through_the_pipe_and_a_lost_one_fails_its_video(tmp_path,
                                                                                             monkeypatch):
    track = messages.AudioTrack("a", np.arange(5, dtype=np.float32))
    monkeypatch.setattr(decode_pool, "SHM_DIR", tmp_path / "full")  # every write fails (no such folder)
    assert decode_pool._track_to_file(track, "expr-1-0a1b2c3d") is None  # the worker then sends ``track``
    monkeypatch.setattr(decode_pool, "SHM_DIR", tmp_path)
    wire = decode_pool._track_to_file(track, "expr-1-0a1b2c3d")
    assert wire is not None and wire.n == 5 and (tmp_path / wire.name).exists()
    job = job_for(tmp_path / "a.mp4")
    (tmp_path / wire.name).write_bytes(np.arange(3, dtype=np.float32).tobytes())  # changed meanwhile
    failed = decode_pool._track_from_file(wire, job)
    assert isinstance(failed, VideoFailed) and "3 of 5 samples" in failed.reason and str(job.source) in failed.reason
    assert not (tmp_path / wire.name).exists()
    failed = decode_pool._track_from_file(wire, job)  # gone (removed by someone)
    assert isinstance(failed, VideoFailed) and "audio was lost" in failed.reason and "re-run" in failed.reason


def test_close_removes_the_track_files_a_stopped_run_never_read(tmp_path):
    path = F.make_video(tmp_path / "v.mp4", n_frames=8, audio_rate=None)
    left = None
    with DecodePool([job_for(path)], workers=1) as pool:
        for _ in pool:
            assert pool._shm is not None
            left = Path("/dev/shm") / f"{pool._shm.name.lstrip('/')}-00aa11bb22cc"
            left.write_bytes(b"x")  # what a worker wrote just before the consumer stopped
            break
    assert left is not None and not left.exists()


def test_the_pools_block_is_locked_while_it_runs(tmp_path):
    path = F.make_video(tmp_path / "v.mp4", n_frames=8, audio_rate=None)
    with DecodePool([job_for(path)], workers=1) as pool:
        for _ in pool:
            assert pool._shm is not None
            name = pool._shm.name.lstrip("/")
            # seen from another run that cannot see this pid: kept all the same
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(decode_pool, "_pid_alive", lambda pid: False)
                assert name not in remove_dead_segments()
            assert (Path("/dev/shm") / name).exists()


def test_a_small_dev_shm_gets_smaller_batches_not_fewer_slots(tmp_path):
    job = job_for(tmp_path / "v.mp4", image_size=224, batch_frames=32)  # a slot: 2 batches, 9.6 MB
    sizes = lambda free: [j.batch_frames for j in decode_pool._fit_batches([job], free)]  # noqa: E731
    assert sizes(None) == [32] and sizes(64 * 2**20) == [32]  # Docker's default: 3 slots of 64 frames
    assert sizes(16 * 2**20) == [8]  # 8 MB to use: 32 -> 16 -> 8, 3 slots of 16 frames (2.4 MB)
    assert sizes(4 * 2**20) == [8]  # no smaller: fit_slots refuses this one in one line
    native = job_for(tmp_path / "v.mp4", image_size=224, batch_frames=32, geometry="device")
    assert [j.batch_frames for j in decode_pool._fit_batches([native], 16 * 2**20)] == [32]  # fixed slots: kept


def test_slots_are_sized_to_the_free_shared_memory():
    slot = 32 * 224 * 224 * 3  # 4.8 MB
    assert fit_slots(8, slot, None) == 8 and fit_slots(8, slot, 24 * 2**30) == 8
    assert fit_slots(8, slot, 16 * 2**20) == 1  # half of 16 MB: one slot, not 8 (38 MB, SIGBUS)
    with pytest.raises(ConfigError, match=r"/dev/shm has 4 MB free.*--shm-size"):
        fit_slots(8, slot, 4 * 2**20)


_IN_NAMESPACE = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from expr.core.errors import ConfigError
    from expr.extract.decode_pool import DecodePool
    from expr.extract.messages import DecodeJob, FrameBatch, VideoFailed
    path = Path(sys.argv[1])
    job = DecodeJob("v", path, path, None, image_size=224, batch_frames=32)
    try:
        with DecodePool([job], workers=2, max_pending=8) as pool:
            msgs = list(pool)
    except ConfigError as e:
        print("refused:", e)
        sys.exit(0)
    failed = [m.reason for m in msgs if isinstance(m, VideoFailed)]
    frames = sum(len(m.pixels) for m in msgs if isinstance(m, FrameBatch))
    print("slots", pool.max_pending, "frames", frames, "failed", failed)
""")


def _in_small_shm(size: str, video: Path) -> str:
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unprivileged mount namespaces (unshare -rm)")
    shell = f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$0" -c "$1" "$2"'
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell, sys.executable, _IN_NAMESPACE, str(video)],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_16_mb_dev_shm_works_and_a_4_mb_one_is_refused_in_one_line(tmp_path):
    """Before: 8 slots of 4.8 MB in a 16 MB /dev/shm, and every video failed with SIGBUS,
    blaming a good file. Now the batches shrink to 8 frames there (3 slots of 16 frames, 2.4 MB,
    in the 8 MB it may use) rather than leave one slot, or none of 64 frames."""
    video = F.make_video(tmp_path / "v.mp4", n_frames=70, size=(96, 64), audio_rate=None)
    out = _in_small_shm("16m", video)
    assert "slots 3 frames 70 failed []" in out
    out = _in_small_shm("4m", video)
    assert out.startswith("refused: /dev/shm has 4 MB free") and len(out.strip().splitlines()) == 1


def wait_for_commit_hook(cache: str, job: DecodeJob, msg) -> None:
    """Test-only: at the last frames of `c`, `a` (the longest video, first in line) must be committed."""
    if job.video_id == "c" and isinstance(msg, FrameBatch) and msg.start + len(msg.pixels) == 40:
        deadline = time.monotonic() + 60
        while not (Path(cache) / "videos" / "a" / "zarr.json").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("video a was not committed before c ended")
            time.sleep(0.02)


def test_each_video_is_committed_as_soon_as_it_is_encoded(tmp_path, monkeypatch):
    """Issue: after 75 s of a 12-video run none was committed: 12 workers decoded 12 videos
    side by side, and every one finished near the end. Here, before: one worker decoded a
    (200 frames) while the other did b (130) and c (40), so c ended before a. Now both workers
    share a's segments first, and a is written (by the writer thread) while b and c decode."""
    videos, out = tmp_path / "v", tmp_path / "f.zarr"
    F.make_video(videos / "a.mp4", n_frames=200, size=(96, 64), keyint=20)  # the largest: first in line
    F.make_video(videos / "b.mp4", n_frames=130, size=(96, 64), keyint=20)
    F.make_video(videos / "c.mp4", n_frames=40, size=(96, 64), keyint=20)  # too short to split
    monkeypatch.setattr(messages, "SEGMENT_FRAMES", 30)
    hook = functools.partial(wait_for_commit_hook, str(out))
    monkeypatch.setattr(decode_pool, "DecodePool", functools.partial(DecodePool, worker_hook=hook))
    summary = run_extract(tiny_config(videos, out, workers=2))
    assert summary.failed == {} and sorted(summary.ok) == ["a", "b", "c"]


class _Conn:
    """A worker's end of the pipe: ``waiting`` says whether a message is there already."""

    def __init__(self, waiting: bool, message):
        self.waiting, self.message = waiting, message

    def poll(self) -> bool:
        return self.waiting

    def recv(self):
        return self.message


def test_an_idle_worker_imports_what_jobs_need_before_its_next_job_not_with_it(monkeypatch):
    """A worker whose job split a long video (header only) waits for the parent to read the split;
    it imports torch then, not after its first segment came (on the path to the first batch)."""
    imports: list[str] = []
    monkeypatch.setattr(decode_pool, "_import_for_jobs", lambda: imports.append("torch"))
    job = job_for(Path("/v/a.mp4"))
    jpgs = DecodeJob("a", Path("/v/a.mp4"), None, Path("/f/a"), image_size=32, batch_frames=4, geometry="device")
    for previous in (None, job, job_for(Path("/v/a.mp4"), geometry="device", face_crop="haar"), jpgs):
        imports.clear()
        assert decode_pool._next_job(_Conn(waiting=False, message=job), previous) is job
        assert imports == ["torch"]
        imports.clear()
        assert decode_pool._next_job(_Conn(waiting=True, message=job), previous) is job  # a job waits: at once
        assert imports == []
    # the device path's frames (and NVDEC's) need no torch: the next job must not wait for its import
    device = job_for(Path("/v/a.mp4"), geometry="device")
    for previous in (device, job_for(Path("/v/a.mp4"), decoder="nvdec")):
        assert decode_pool._next_job(_Conn(waiting=False, message=job), previous) is job
        assert imports == []
    # nor a spare (no job yet) of a pool whose jobs need none
    assert decode_pool._next_job(_Conn(waiting=False, message=job), None, warm=False) is job
    assert imports == []
    assert DecodePool([device], workers=2)._warm is False
    assert DecodePool([job], workers=2)._warm is True and DecodePool([jpgs], workers=2)._warm is True
