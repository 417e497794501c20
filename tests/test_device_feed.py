"""--geometry device keeps the frames on the encoder's device (issue 18 items 1-2, 4).

The encoder's input buffers are device tensors there, device_geometry writes into them and the
encoder reads them as they are: no (N, 224, 224, 3) result comes back to the host. The cache is
the one the host round trip wrote (the round trip was uint8: the same values). A decode pool
slot whose frames an asynchronous copy still reads goes back to the workers only after the
copy's fence completed (tested with stand-in fences: no GPU here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import media_fixtures as F
from cache_helpers import ready
from expr.extract import encoder_feed, geometry_device, messages
from expr.extract.decode_pool import SLOT_BATCHES, DecodePool
from expr.extract.messages import DecodeJob, FrameBatch
from expr.extract.run import run_extract
from expr.extract.visual_features import VisualEncoder
from test_extract_run import assert_same_cache, cache_arrays, tiny_config


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Several videos: one split into segments (with SEGMENT_FRAMES = 30), one without audio,
    one that cannot be decoded."""
    root = tmp_path_factory.mktemp("devfeed")
    F.make_video(root / "long.mp4", n_frames=130, size=(96, 64), keyint=20)
    F.make_video(root / "a.mp4", n_frames=20, size=(128, 72))
    F.make_video(root / "b.mp4", n_frames=9, size=(64, 48), audio_rate=None)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 4000)
    return root


def _host_buffers(monkeypatch) -> None:
    """The path as it was: the geometry's frames land in host numpy buffers (the round trip)."""
    monkeypatch.setattr(VisualEncoder, "new_device_batch", VisualEncoder.new_batch)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_device_path_writes_the_cache_of_the_host_round_trip(videos, tmp_path, monkeypatch, workers):
    monkeypatch.setattr(messages, "SEGMENT_FRAMES", 30)
    kinds: list[type] = []
    submit = VisualEncoder.submit
    monkeypatch.setattr(VisualEncoder, "submit", lambda self, pixels: kinds.append(type(pixels)) or submit(self, pixels))
    on_device = run_extract(tiny_config(videos, tmp_path / "d.zarr", geometry="device", workers=workers))
    assert set(kinds) == {torch.Tensor}  # the encoder read device buffers
    _host_buffers(monkeypatch)
    kinds.clear()
    round_trip = run_extract(tiny_config(videos, tmp_path / "h.zarr", geometry="device", workers=workers))
    assert set(kinds) == {np.ndarray}
    for summary in (on_device, round_trip):
        assert sorted(summary.ok) == ["a", "b", "long"] and list(summary.failed) == ["broken"]
    assert_same_cache(cache_arrays(tmp_path / "d.zarr"), cache_arrays(tmp_path / "h.zarr"))


def test_no_frame_comes_back_to_the_host_on_the_device_path(videos, tmp_path, monkeypatch):
    """Counts uint8 tensors turned into numpy or copied to the host while the feed handles a
    message (the features, float32, come back as always). The host round trip fails this."""
    monkeypatch.setattr(messages, "SEGMENT_FRAMES", 30)
    handling, back = [False], []
    numpy_of, cpu_of, handle = torch.Tensor.numpy, torch.Tensor.cpu, encoder_feed.EncoderFeed.handle

    def counted(original):
        def method(self, *args, **kwargs):
            if handling[0] and self.dtype == torch.uint8:
                back.append(tuple(self.shape))
            return original(self, *args, **kwargs)
        return method

    def handle_counted(self, msg):
        handling[0] = True
        try:
            handle(self, msg)
        finally:
            handling[0] = False

    outs = []
    geometry = geometry_device.device_geometry

    def into(native, layout, size, **kw):
        if handling[0]:  # not the start-up self-check's
            outs.append(kw.get("out"))
        return geometry(native, layout, size, **kw)

    monkeypatch.setattr(torch.Tensor, "numpy", counted(numpy_of))
    monkeypatch.setattr(torch.Tensor, "cpu", counted(cpu_of))
    monkeypatch.setattr(encoder_feed.EncoderFeed, "handle", handle_counted)
    monkeypatch.setattr(geometry_device, "device_geometry", into)
    summary = run_extract(tiny_config(videos, tmp_path / "d.zarr", geometry="device", workers=0))
    assert sorted(summary.ok) == ["a", "b", "long"]
    assert back == []
    # every geometry wrote into a slice of a buffer it was given (none made its own result)
    assert outs and all(isinstance(out, torch.Tensor) and out.shape[1:] == (64, 64, 3) for out in outs)  # the tiny encoder's S
    assert sum(len(out) for out in outs) == 130 + 20 + 9


def test_the_worker_path_keeps_its_host_buffers(videos, tmp_path, monkeypatch):
    kinds: list[type] = []
    submit = VisualEncoder.submit
    monkeypatch.setattr(VisualEncoder, "submit", lambda self, pixels: kinds.append(type(pixels)) or submit(self, pixels))
    summary = run_extract(tiny_config(videos, tmp_path / "w.zarr", geometry="worker", workers=0))
    assert sorted(summary.ok) == ["a", "b", "long"] and set(kinds) == {np.ndarray}


def test_device_geometry_into_a_buffer_slice_equals_its_own_result():
    native = torch.randint(0, 256, (5, 90, 120), dtype=torch.uint8)  # yuv420p of 120x60
    layout = geometry_device.NativeLayout("yuv420p", 60, 120)
    buffer = torch.full((8, 32, 32, 3), 7, dtype=torch.uint8)
    geometry_device.device_geometry(native[1:4], layout, 32, out=buffer[2:5])
    assert torch.equal(buffer[2:5], geometry_device.device_geometry(native, layout, 32)[1:4])
    assert (buffer[:2] == 7).all() and (buffer[5:] == 7).all()
    with pytest.raises(ValueError, match=r"geometry output \(2, 32, 32, 3\) torch.uint8, expected \(3, 32, 32, 3\)"):
        geometry_device.device_geometry(native[1:4], layout, 32, out=buffer[:2])


# -- the slot copy and when its slot goes back -----------------------------------------------------
class FakeFence:
    """A CUDA event's stand-in: incomplete until queried ``after`` times, or synchronized."""

    def __init__(self, log: list, name: int, after: int):
        self.log, self.name, self.after, self.done = log, name, after, False

    def query(self) -> bool:
        self.after -= 1
        self.done = self.done or self.after < 0
        self.log.append(("query", self.name, self.done))
        return self.done

    def synchronize(self) -> None:
        self.done = True
        self.log.append(("synchronize", self.name, True))


@pytest.mark.parametrize("after", [0, 3, 10**9])  # done at once, after a few polls, only when waited for
def test_a_slot_goes_back_only_after_its_copy_completed(tmp_path, after):
    path = F.make_video(tmp_path / "v.mp4", n_frames=40, size=(64, 48), audio_rate=None)
    log: list = []
    fences: list[FakeFence] = []
    last_by_slot: dict[int, FakeFence] = {}
    pending: list[FakeFence] = []  # the fence of the batch being handled

    def slot_fence():
        return pending.pop()

    pool = DecodePool([DecodeJob("v", path, None, None, batch_frames=2)], workers=1, max_pending=2,
                      borrow_frames=True, slot_fence=slot_fence)
    frames = 0
    with pool:
        for msg in pool:
            if not isinstance(msg, FrameBatch):
                continue
            address = msg.pixels.__array_interface__["data"][0]
            previous = last_by_slot.get(address)
            # a worker wrote this slot again: the copy of what it held before had completed
            assert previous is None or previous.done, (previous.name, log[-5:])
            fence = FakeFence(log, len(fences), after)
            fences.append(fence)
            last_by_slot[address] = fence
            pending.append(fence)
            frames += len(msg.pixels)
    messages_sent = 40 // (2 * SLOT_BATCHES)  # two-frame batches, SLOT_BATCHES of them a message
    assert frames == 40 and len(last_by_slot) == 2 and len(fences) == messages_sent
    assert all(f.done for f in fences)  # close() waited for the last ones before unmapping
    waited = [name for kind, name, _ in log if kind == "synchronize"]
    if after == 0:
        assert waited == []  # complete when polled: the feed never waited
    if after == 10**9:
        assert sorted(waited) == list(range(messages_sent))  # each waited for once, when no slot was free


def test_the_feed_hands_its_copy_fence_to_the_pool_once(monkeypatch):
    """The feed records the fence of its last slot copy and hands it over exactly once."""
    from types import SimpleNamespace

    fence = object()
    monkeypatch.setattr(geometry_device, "to_device", lambda pixels, device, stream: (torch.from_numpy(pixels), fence))
    bb = SimpleNamespace(visual=SimpleNamespace(device=torch.device("cpu")))
    feed = encoder_feed.EncoderFeed.__new__(encoder_feed.EncoderFeed)
    feed.bb, feed.geometry_stream, feed.fence = bb, None, None
    native = np.zeros((2, 6, 4), np.uint8)
    batch = FrameBatch("v", 0, native, np.ones(2, bool), np.zeros(2), geometry_device.NativeLayout("yuv420p", 4, 4))
    assert feed.to_device(batch).data_ptr() == native.ctypes.data
    assert feed.take_fence() is fence and feed.take_fence() is None


def test_a_pageable_slot_is_copied_synchronously_with_no_fence():
    pixels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    x, fence = geometry_device.to_device(pixels, torch.device("cpu"))
    assert fence is None and torch.equal(x, torch.from_numpy(pixels))


def test_a_consumer_that_stops_mid_run_still_waits_for_the_copy_before_unmapping(tmp_path):
    """An error in the feed ends the iteration right after a copy was queued: the pool must
    still wait for that copy before it unregisters and unmaps the block."""
    path = F.make_video(tmp_path / "v.mp4", n_frames=12, size=(64, 48), audio_rate=None)
    log: list = []
    fence = FakeFence(log, 0, after=10**9)
    taken: list = []

    def slot_fence():
        taken.append(fence)
        return fence

    def lock(buffer):
        return lambda: log.append(("unlock", None, fence.done))

    pool = DecodePool([DecodeJob("v", path, None, None, batch_frames=2)], workers=1, max_pending=3,
                      borrow_frames=True, slot_fence=slot_fence, page_lock=lock)
    with pytest.raises(RuntimeError, match="the feed failed"):
        with pool:
            for msg in pool:
                if isinstance(msg, FrameBatch):
                    raise RuntimeError("the feed failed")
    assert taken == [fence]
    assert [entry[0] for entry in log if entry[0] != "query"] == ["synchronize", "unlock"]


# -- CUDA stream ordering of the device buffers, with stand-in streams and events ------------------
class FakeStream:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def wait_event(self, event) -> None:
        self.log.append(("wait", self.name, event.name))


class FakeEvent:
    count = 0

    def __init__(self, log: list):
        FakeEvent.count += 1
        self.name, self.log = f"e{FakeEvent.count}", log

    def record(self, stream: FakeStream) -> None:
        self.log.append(("record", stream.name, self.name))


def test_the_streams_wait_on_events_for_each_buffer_never_on_the_device(monkeypatch):
    """The encoder's stream waits for the geometry's writes into a buffer before reading it; the
    geometry's stream waits for the encoder's read before writing that buffer again; nothing
    synchronizes the host with the device (CUDA stand-ins: the tensors stay on the CPU)."""
    import contextlib
    from types import SimpleNamespace

    from expr.extract.encoder_feed import ExtractSummary
    from expr.extract.messages import VideoHeader

    log: list = []
    encoder = FakeStream("encoder", log)
    current = [encoder]

    @contextlib.contextmanager
    def on(stream):
        before, current[0] = current[0], stream
        yield
        current[0] = before

    monkeypatch.setattr(torch.cuda, "Stream", lambda device: FakeStream("geometry", log))
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(torch.cuda, "Event", lambda: FakeEvent(log))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: log.append(("DEVICE SYNC",)))
    monkeypatch.setattr(geometry_device, "to_device",
                        lambda pixels, device, stream: (torch.from_numpy(pixels), FakeEvent(log)))
    geometry = geometry_device.device_geometry

    def logged_geometry(native, layout, size, out=None):
        log.append(("geometry", current[0].name, which(out)))
        return geometry(native, layout, size, out=out)

    monkeypatch.setattr(geometry_device, "device_geometry", logged_geometry)
    buffers: list = []

    def which(tensor) -> int:  # the buffer a slice lies in
        return [b.untyped_storage().data_ptr() for b in buffers].index(tensor.untyped_storage().data_ptr())

    class Visual:
        device = SimpleNamespace(type="cuda")

        def new_device_batch(self, n):
            buffers.append(torch.zeros((n, 4, 4, 3), dtype=torch.uint8))
            return buffers[-1]

        def submit(self, pixels):
            log.append(("submit", current[0].name, which(pixels)))
            return pixels[:, 0, 0, :].float().numpy()

        def collect(self, handle):
            return handle

    bb = SimpleNamespace(visual_spec=SimpleNamespace(image_size=4), visual=Visual(), audio=None,
                         audio_spec=SimpleNamespace(sample_rate=16000))
    config = SimpleNamespace(batch_size=2, videos=Path("/v"), frames=None)
    jobs = [DecodeJob("v", Path("/v/v.mp4"), None, None, geometry="device")]
    feed = encoder_feed.EncoderFeed(config, ready(None), bb, jobs, ExtractSummary(out=Path("/o")), lambda e: None)
    feed.handle(VideoHeader("v", 25.0, 6, 0.24, False, 1, 0.0))
    layout = geometry_device.NativeLayout("yuv420p", 4, 4)
    for start in (0, 3):  # two messages of 3 frames: batches of 2 straddle them
        native = np.full((3, 6, 4), 100 + start, np.uint8)
        feed.handle(FrameBatch("v", start, native, np.ones(3, bool), np.arange(start, start + 3) / 25.0, layout))
        assert not feed.summary.failed, feed.summary.failed
        assert feed.take_fence() is not None  # the copy's event goes to the pool
    feed.flush()
    assert ("DEVICE SYNC",) not in log
    steps = [e for e in log if e[0] in ("geometry", "submit")]
    # buffers 0, 1, 0: the second fill of buffer 0 comes after the encoder read it
    assert steps == [("geometry", "geometry", 0), ("submit", "encoder", 0),  # frames 0-1
                     ("geometry", "geometry", 1), ("geometry", "geometry", 1), ("submit", "encoder", 1),  # 2 | 3
                     ("geometry", "geometry", 0), ("submit", "encoder", 0)]  # 4-5
    for i, entry in enumerate(log):
        if entry[0] == "submit":  # the encoder waited for the event recorded after the geometry's writes
            record, wait = log[i - 2], log[i - 1]
            assert record[:2] == ("record", "geometry") and wait == ("wait", "encoder", record[2])
    # the geometry's stream waited, before refilling buffer 0, for the event after the encoder's read
    freed = log[log.index(("submit", "encoder", 0)) + 1]
    assert freed[:2] == ("record", "encoder")
    refill = [i for i, e in enumerate(log) if e == ("geometry", "geometry", 0)][1]
    assert ("wait", "geometry", freed[2]) in log[:refill]
