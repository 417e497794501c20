"""Decode-only frames for ``--geometry device``: the worker sends native frames, no RGB, no resize.

The decoder is chosen per stream by what it costs (issue 18, CPU us per 360p frame: decord
RGB 1,072, PyAV to yuv420p 549): a 4:2:0 video with even sides is read with PyAV and sent as
yuv420p planes, whole or by segments (PyAV seeks to the segment's keyframe and checks its pts:
``pyav_frames.py``); anything else (other pixel formats, odd sides, a seek that does not land
on the keyframe) goes out as native RGB from ``video_decode.rgb_frames`` (PyAV where exact,
else decord). Frame count, timestamps and mask are the worker path's: the frame count and
timestamps come from decord's index as before, and a PyAV read that gives fewer frames fails
the video.

A message carries as many frames as fit one shared-memory slot (``NATIVE_SLOT_BYTES``, at most
``batch_frames``): 32 frames of 640x360 yuv420p, 9 of 1280x720, 4 of 1920x1080, 2 of 1080p RGB.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from expr.core.errors import MediaDecodeError
from expr.extract.geometry_device import NativeLayout, colour_of
from expr.extract.messages import DecodeJob, FrameBatch
from expr.extract.probe import FIX_HINT, short_error
from expr.extract.pyav_frames import PyAVFrames, StreamInfo
from expr.extract.video_decode import _read_frames, pyav_source, rgb_frames

NATIVE_SLOT_BYTES = 2 * 1920 * 1080 * 3  # one shared-memory slot on the device path: 2 frames of 1080p RGB
YUV_FORMATS = ("yuv420p", "yuvj420p")


def frames_per_message(frame_bytes: int, batch_frames: int) -> int:
    return max(1, min(batch_frames, NATIVE_SLOT_BYTES // max(1, frame_bytes)))


def _yuv_planes(info: StreamInfo) -> bool:
    """Whether PyAV can hand this stream's frames over as yuv420p planes without conversion."""
    return info.pix_fmt in YUV_FORMATS and info.width % 2 == 0 and info.height % 2 == 0


def native_batches(job: DecodeJob, reader, n: int, timestamps: np.ndarray, start: int = 0,
                   stop: int | None = None) -> Iterator[FrameBatch]:
    """Frames start..stop-1 (``start``: 0 or a segment's keyframe; ``reader`` at frame 0) as
    FrameBatches of native frames (``FrameBatch.layout`` set)."""
    stop = n if stop is None else stop
    assert job.video_path is not None
    source = pyav_source(job, start, usable=_yuv_planes)
    if source is not None:
        with source:
            yield from _yuv_batches(job, source, n, timestamps, start, stop)
        return
    shape, k, a = None, 1, start
    with rgb_frames(job, reader, start) as frames:
        while a < stop:
            b = min(a + k, stop)
            raw = _read_frames(frames, job.video_path, a, b, n, shape)  # the first message: one frame, to size the rest
            if shape is None:
                shape = raw.shape[1:]
                if raw[0].nbytes > NATIVE_SLOT_BYTES:
                    raise MediaDecodeError(f"{job.video_path}: its {shape[1]}x{shape[0]} frames are too large for "
                                           "--geometry device (a frame slot holds 2 x 1080p RGB): use --geometry worker")
                k = frames_per_message(raw[0].nbytes, job.batch_frames)
            layout = NativeLayout("rgb24", shape[0], shape[1])
            yield FrameBatch(job.video_id, a, raw, np.ones(b - a, bool), timestamps[a:b].copy(), layout)
            a = b


def _yuv_batches(job: DecodeJob, source: PyAVFrames, n: int, timestamps: np.ndarray, start: int,
                 stop: int) -> Iterator[FrameBatch]:
    """Frames start..stop-1 from PyAV (``source`` is at frame ``start``), as yuv420p planes."""
    from av.error import FFmpegError

    path = job.video_path
    frames: list[np.ndarray] = []
    layout, k, a, i = None, 1, start, start
    try:
        for frame in source:
            if i >= stop:
                break  # decord's index is the count (as on the worker path)
            # (H * 3 / 2, W): a copy of the planes as they are (a format name would let
            # swscale convert yuvj420p's full range)
            planes = frame.to_ndarray() if frame.format.name in YUV_FORMATS else frame.to_ndarray(format="yuv420p")
            if layout is None:
                matrix, full = colour_of(frame)
                layout = NativeLayout("yuv420p", frame.height, frame.width, matrix, full)
                k = frames_per_message(planes.nbytes, job.batch_frames)
            if planes.shape != layout.frame_shape():
                raise MediaDecodeError(f"{path}: frame {i + 1} changes size to {frame.width}x{frame.height}: {FIX_HINT}")
            frames.append(planes)
            i += 1
            if len(frames) == k:
                yield FrameBatch(job.video_id, a, np.stack(frames), np.ones(k, bool), timestamps[a:a + k].copy(), layout)
                a, frames = a + k, []
    except FFmpegError as e:
        raise MediaDecodeError(f"{path}: frame {i + 1} of {n} cannot be decoded ({short_error(e)}): {FIX_HINT}") from e
    if frames:
        yield FrameBatch(job.video_id, a, np.stack(frames), np.ones(len(frames), bool), timestamps[a:i].copy(), layout)
    if i < stop:
        raise MediaDecodeError(f"{path}: only {i} of the {n} frames its index announces can be decoded; "
                               f"the file is probably truncated: fetch it again or {FIX_HINT}")


def self_check(job: DecodeJob, device, frames: int = 32) -> float:
    """The start-up check of ``--geometry device``: the first frames of ``job``'s video through
    both paths (worker: RGB + ``clip_geometry``; device: what a worker would send, then
    ``device_geometry`` on ``device``); returns their MAD on 0-255. Raises on any failure.
    A frames-folder job is checked on its jpgs instead (``jpg_self_check``)."""
    from dataclasses import replace

    import torch

    from expr.extract.geometry_device import device_geometry, mad
    from expr.extract.video_decode import open_reader, video_batches

    if job.frames_dir is not None:
        return jpg_self_check(job, device, frames)
    assert job.video_path is not None
    reader = open_reader(job.video_path)
    n = len(reader)
    k = min(n, frames)
    times = np.zeros(n)
    plain = replace(job, geometry="worker", face_crop="none", segment=None, batch_frames=k)
    worker = next(iter(video_batches(plain, reader, n, times, 0, k))).pixels
    native = list(native_batches(replace(plain, geometry="device"), open_reader(job.video_path), n, times, 0, k))
    device = torch.device(device)
    pixels = np.concatenate([device_geometry(torch.from_numpy(b.pixels).to(device), b.layout, job.image_size).cpu().numpy()
                             for b in native if b.layout is not None])
    if pixels.shape != worker.shape:
        raise ValueError(f"the device path gave {pixels.shape}, the worker path {worker.shape}")
    return mad(pixels, worker)


def jpg_self_check(job: DecodeJob, device, frames: int = 32) -> float:
    """The start-up check for ``--frames``: the folder's first ``frames`` jpgs (by number) through
    both paths (worker: decode + ``resize_square``; device: the native jpgs a worker would send,
    then ``device_geometry`` on ``device``); masks must agree; returns the MAD of the decoded
    frames on 0-255. A folder with nothing decodable there raises MediaDecodeError (the caller
    checks the next job)."""
    from dataclasses import replace

    import torch

    from expr.extract.frames_dir import frames_dir_batches, index_jpgs
    from expr.extract.geometry_device import device_geometry, mad

    folder = job.frames_dir
    assert folder is not None
    try:
        found = index_jpgs(folder)
    except OSError as e:
        raise MediaDecodeError(f"{folder}: cannot list the frames folder ({e.strerror})") from e
    first = sorted(found)[:frames]
    jpgs = {k + 1: found[number] for k, number in enumerate(first)}  # renumbered 1..k: no gaps to check
    k, times = len(jpgs), np.zeros(len(jpgs))
    plain = replace(job, geometry="worker", batch_frames=max(1, k))
    worker = list(frames_dir_batches(plain, k, times, jpgs, []))
    native = list(frames_dir_batches(replace(plain, geometry="device"), k, times, jpgs, []))
    if not worker or not worker[0].mask.any():
        raise MediaDecodeError(f"{folder}: none of its first {k} images can be decoded")
    (w,), (d,) = worker, native
    if not np.array_equal(w.mask, d.mask):
        raise ValueError(f"{folder}: the device path masks other frames than the worker path")
    pixels = d.pixels
    if d.layout is not None:
        device = torch.device(device)
        pixels = device_geometry(torch.from_numpy(d.pixels).to(device), d.layout, job.image_size).cpu().numpy()
    if pixels.shape != w.pixels.shape:
        raise ValueError(f"the device path gave {pixels.shape}, the worker path {w.pixels.shape}")
    return mad(pixels[w.mask], w.pixels[w.mask])
