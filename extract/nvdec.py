"""``--decoder nvdec``: raw video frames decoded by the GPU's video decoder (NVDEC), in the main process.

Why: at 720p and above, 16 cores of decode-only workers cannot keep up with the image encoder
(issue 18's estimate: ~6.5k frames/s at 720p, ~2.7k at 1080p, against ~14k for ViT-B/32 on an
H200). NVDEC decodes on the GPU beside the encoder, and the frames never cross to the host
before the geometry has made them 224x224.

Package: PyNvVideoCodec (pip ``pynvvideocodec``, NVIDIA, MIT), imported lazily and never a
required dependency. Its manylinux wheel carries the FFmpeg demuxer libraries and a CUDA
runtime and needs only the NVIDIA driver (libnvcuvid); torchcodec's PyPI wheel decodes on the
CPU only (its CUDA builds come from PyTorch's own index) and needs FFmpeg's shared libraries
on the system, which a bare GPU machine may lack. ``SimpleDecoder(output_color_type=RGB)``
gives (H, W, 3) uint8 frames in device memory, handed to torch through DLPack (NVIDIA's own
sample does the same); a missing driver, codec or file raises an exception.

Data flow: the decode workers still read each video's header (probe, decord's frame index and
timestamps) and its audio, and send no frames (``DecodeJob.decoder == "nvdec"``). When the
main process receives a header, ``nvdec_messages`` announces one segment covering the whole
video (``VideoSplit``: the feed then waits for its frames as for a split video), reads the
timestamps with the same call as the worker (as a segment job does), decodes the frames on the
encoder's device and hands them to the feed as native rgb24 frames that stay there (the feed
runs ``device_geometry`` on them straight into its device input buffer), then ``SegmentDone``. An NVDEC error, or a frame count other than the index's,
fails that video only. No CUDA context is made in the workers.

Never the default unless proven: ``auto`` takes NVDEC only on CUDA, with the geometry on the
device, for a first stream of at least 720p (shorter side), when the package imports and the
start-up probe passes: the first video's first frames decoded by NVDEC and by the CPU path
(what a decode-only worker sends), both through ``device_geometry``, within MAD 1.0 on 0-255.
Anything else falls back to the CPU decoders with ONE ``note:`` line; ``--decoder nvdec``
makes it a one-line error. The decode function is injectable (``load_decoder``), so everything
but the package call is tested on CPU with a PyAV stand-in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from expr.core.errors import ConfigError, MediaDecodeError, check_choice
from expr.extract.config import Decoder
from expr.extract.geometry_device import NativeLayout, device_geometry, mad, self_check_problem, joined_message
from expr.extract.messages import DecodeJob, FrameBatch, Message, SegmentDone, VideoFailed, VideoHeader, VideoSplit
from expr.extract.probe import FIX_HINT

PACKAGE = "pynvvideocodec==2.2.4"  # what to pip install (the version this code was written against)
MIN_SIDE = 720  # auto: NVDEC for streams whose shorter side is at least this (720p and up)
PROBE_FRAMES = 32
BATCH_FRAMES = 32  # frames per NVDEC call and per FrameBatch
NVDEC_DEVICE_TYPES = ("cuda",)  # torch device types NVDEC runs on (tests add "cpu" with a stand-in decoder)

# decode(path, device, batch) -> (N, H, W, 3) uint8 RGB tensors on ``device``, in frame order
DecodeFn = Callable[[Path, object, int], Iterator]


def pynvc_frames(path: Path, device, batch: int) -> Iterator:
    """All frames of ``path`` decoded by NVDEC (PyNvVideoCodec) on ``device``, ``batch`` at a time."""
    import PyNvVideoCodec as nvc  # pyright: ignore[reportMissingImports] - optional, see load_decoder
    import torch

    gpu = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
    # on the caller's current stream (video_frames: one of its own, so that decoding never
    # waits for the image encoder's batches queued on the default stream)
    decoder = nvc.SimpleDecoder(str(path), gpu_id=gpu, cuda_stream=torch.cuda.current_stream(gpu).cuda_stream,
                                use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    while True:
        frames = decoder.get_batch_frames(batch)
        if not frames:
            return
        # stack copies: the decoder reuses its frame buffers on the next call
        yield torch.stack([torch.from_dlpack(f) for f in frames])  # (N, H, W, 3)


def load_decoder() -> DecodeFn:
    """The NVDEC decode function; ImportError when PyNvVideoCodec is not installed. Tests replace it."""
    import PyNvVideoCodec  # noqa: F401  # pyright: ignore[reportMissingImports] - optional: pip install pynvvideocodec

    return pynvc_frames


def stream_size(path: Path) -> tuple[int, int]:
    """(width, height) of the video stream, from its header (``pyav_frames.stream_info``)."""
    from expr.extract.pyav_frames import stream_info

    info = stream_info(path)
    if info is None:  # its own failure comes later, from the decoders
        raise MediaDecodeError(f"{path}: cannot read the video stream's size")
    return info.width, info.height


def _first_frames(decode: DecodeFn, path: Path, device, k: int):
    """The first ``k`` frames from ``decode`` as one tensor."""
    import torch

    got, n = [], 0
    for frames in decode(path, device, k):
        got.append(frames[: k - n])
        n += len(got[-1])
        if n >= k:
            break
    if not got:
        raise MediaDecodeError(f"{path}: NVDEC returned no frames")
    return torch.cat(got)


def probe_nvdec(job: DecodeJob, device, decode: DecodeFn, frames: int = PROBE_FRAMES) -> float:
    """The start-up probe: MAD (0-255) of ``job``'s first frames decoded by ``decode`` and by the
    CPU path (a decode-only worker's native frames), both through ``device_geometry`` on ``device``."""
    import torch

    from expr.extract.native_decode import native_batches
    from expr.extract.video_decode import open_reader

    path = job.video_path
    assert path is not None
    reader = open_reader(path)
    n = len(reader)
    k = min(n, frames)
    times = np.zeros(n)
    plain = replace(job, geometry="device", decoder="cpu", face_crop="none", segment=None, batch_frames=k)
    batches = list(native_batches(plain, reader, n, times, 0, k))  # yuv420p planes where PyAV is exact
    device = torch.device(device)  # pyright: ignore[reportArgumentType, reportCallIssue] - a device or its name
    with torch.inference_mode():
        cpu = torch.cat([device_geometry(torch.from_numpy(b.pixels).to(device), b.layout, job.image_size)
                         for b in batches if b.layout is not None]).cpu().numpy()
        gpu = _first_frames(decode, path, device, k)
        if gpu.ndim != 4 or gpu.shape[-1] != 3 or gpu.dtype != torch.uint8:
            raise ValueError(f"NVDEC gave frames {tuple(gpu.shape)} {gpu.dtype}, expected (N, H, W, 3) uint8")
        layout = NativeLayout("rgb24", int(gpu.shape[1]), int(gpu.shape[2]))
        nv = device_geometry(gpu.to(device), layout, job.image_size).cpu().numpy()
    if nv.shape != cpu.shape:
        raise ValueError(f"NVDEC gave {nv.shape[0]} frames of {layout.width}x{layout.height}, "
                         f"the CPU path {cpu.shape[0]}")
    return mad(nv, cpu)


def choose_decoder(requested: str, device_type: str, recorded: str | None, eligible: bool,
                   large: Callable[[], bool], check: Callable[[], float]) -> tuple[str, str | None]:
    """Who decodes the run's raw frames ("cpu" or "nvdec"), and at most ONE ``note:`` line.

    ``recorded``: what an existing cache says ("cpu" for one made before it was recorded), None
    for a new cache. ``eligible``: raw videos, no --face-crop, geometry on the device.
    ``large()``: whether the first stream is 720p or more. ``check()``: the start-up probe (imports
    the package, returns the MAD of NVDEC vs CPU pixels, or raises).

    - cpu: always the CPU decoders.
    - nvdec: NVDEC; no CUDA, an ineligible run or a failing probe is an error (the user asked).
    - auto: the cache's own decoder if it has one; else NVDEC on CUDA for large streams, behind
      the probe (a missing package, an exception or a MAD above ``MAD_LIMIT`` falls back with a
      note); else cpu, silently (nothing failed).
    """
    check_choice("--decoder", requested, Decoder)  # callers outside ExtractConfig.validate too
    if requested == "cpu":
        return "cpu", None
    if requested == "nvdec":
        if device_type not in NVDEC_DEVICE_TYPES:
            raise ConfigError(f"--decoder nvdec decodes on an NVIDIA GPU, but this run's device is {device_type}: "
                              "use --device cuda, or --decoder cpu")
        if not eligible:
            raise ConfigError("--decoder nvdec needs raw videos with CLIP's geometry on the device (not --frames, "
                              "--face-crop haar or --geometry worker): use --decoder cpu")
    elif device_type not in NVDEC_DEVICE_TYPES or not eligible or recorded == "cpu":
        return "cpu", None
    elif recorded is None:
        try:
            big = bool(large())
        except Exception:  # noqa: BLE001 - an unreadable first video: the CPU path reports it
            big = False
        if not big:
            return "cpu", None
    problem = self_check_problem(check, "the CPU decoders", on_import_error="needs PyNvVideoCodec, which cannot be "
                                 f"imported ({{error}}): pip install {PACKAGE}")
    if problem is None:
        return "nvdec", None
    if requested == "nvdec":
        raise ConfigError(f"--decoder nvdec: the start-up probe {problem}; or use --decoder cpu")
    return "cpu", f"note: NVDEC decoding {problem}; the decode workers decode on the CPU instead"


def resolve_decoder(config, device, jobs: list, geometry: str, recorded: str | None,
                    check: Callable[[], float] | None = None) -> tuple[str, str | None]:
    """``choose_decoder`` for a run: the probe runs on the first video that can be read (up to
    three: a broken file fails later, as usual). ``check``: test stand-in for the probe."""
    if not jobs:  # nothing to decode (an empty folder): keep what the cache has, probe nothing
        return recorded or "cpu", None
    eligible = config.frames is None and config.face_crop == "none" and geometry == "device"

    def on_first(fn):
        error: Exception | None = None
        for job in jobs[:3]:
            try:
                return fn(job)
            except MediaDecodeError as exc:
                error = exc
        raise error if error is not None else MediaDecodeError("no video to probe")

    def large() -> bool:
        return min(on_first(lambda job: stream_size(job.video_path))) >= MIN_SIDE

    def probe() -> float:
        decode = load_decoder()  # ImportError: named in the note or error
        return on_first(lambda job: probe_nvdec(job, device, decode))

    device_type = str(getattr(device, "type", device)).split(":")[0]
    return choose_decoder(config.decoder, device_type, recorded, eligible, large, check or probe)


# -- the run: frames of each video, decoded here ------------------------------------------------
def _reason(job: DecodeJob, exc: BaseException) -> str:
    if isinstance(exc, MediaDecodeError):
        return str(exc)
    return f"{job.source}: NVDEC decoding failed ({type(exc).__name__}: {joined_message(exc)}): use --decoder cpu"


def _timestamps(path: Path, n: int) -> np.ndarray:
    """The frame times the worker path gives: decord's index, the same call (as a segment job)."""
    from expr.extract.video_decode import frame_timestamps, open_reader

    reader = open_reader(path)
    m, fps = len(reader), float(reader.get_avg_fps())
    if m != n or not np.isfinite(fps) or fps <= 0:
        raise MediaDecodeError(f"{path}: the file changed while it was being decoded ({m} frames now): {FIX_HINT}")
    return frame_timestamps(reader, n, fps)[0]


def video_frames(job: DecodeJob, n: int, device, decode: DecodeFn,
                 batch: int = BATCH_FRAMES) -> Iterator[FrameBatch]:
    """Frames 0..n-1 of ``job``'s video: NVDEC on ``device``, as FrameBatches of native
    (N, H, W, 3) uint8 tensors on ``device`` (layout rgb24) with the worker path's timestamps."""
    import torch

    path = job.video_path
    assert path is not None
    times, done = _timestamps(path, n), 0
    frames_of = iter(decode(path, device, batch))
    # On CUDA, decoding runs on a stream of its own, not behind the image encoder's queued
    # batches; the feed's geometry stream waits for each batch's event (FrameBatch.ready).
    stream = torch.cuda.Stream(device) if torch.device(device).type == "cuda" else None
    while True:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            frames = next(frames_of, None)
        if frames is None:
            break
        frames = frames[: n - done]  # decord's index is the count (as on the worker path)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise MediaDecodeError(f"{path}: NVDEC returned frames {tuple(frames.shape)} {frames.dtype}, "
                                   "expected (N, H, W, 3) uint8: use --decoder cpu")
        k = len(frames)
        if k == 0:
            break
        layout = NativeLayout("rgb24", int(frames.shape[1]), int(frames.shape[2]))
        # native frames, left on the device: the feed runs device_geometry on them straight into
        # the encoder's device buffer (no round trip through the host), on its stream once
        # ``ready`` (recorded here, on this one) has passed
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            frames = frames.to(device)
            ready = None
            if stream is not None:
                ready = torch.cuda.Event()
                ready.record()
        yield FrameBatch(job.video_id, done, frames, np.ones(k, bool), times[done: done + k].copy(), layout, ready)
        done += k
        if done == n:
            break
    if done < n:
        raise MediaDecodeError(f"{path}: NVDEC decoded {done} of the {n} frames its index announces; "
                               f"the file is probably truncated: fetch it again or {FIX_HINT}")


def nvdec_messages(messages: Iterable[Message], jobs: Iterable[DecodeJob], device, decode: DecodeFn,
                   batch: int = BATCH_FRAMES) -> Iterator[Message]:
    """The decode pool's ``messages``, with the frames of each ``decoder == "nvdec"`` job decoded
    here after its header: VideoSplit (one segment: 0..n), FrameBatch ..., SegmentDone; or
    VideoFailed, which fails that video only (its audio and VideoDone, still to come from the
    worker, are then dropped by the feed, as after any failure)."""
    mine = {j.video_id: j for j in jobs if j.decoder == "nvdec"}
    for msg in messages:
        yield msg
        job = mine.get(msg.video_id) if isinstance(msg, VideoHeader) else None
        if job is None:
            continue
        assert isinstance(msg, VideoHeader)
        yield VideoSplit(job.video_id, ((0, msg.n_frames),))
        try:
            yield from video_frames(job, msg.n_frames, device, decode, batch)
        except Exception as exc:  # one video's failure; the run goes on
            yield VideoFailed(job.video_id, _reason(job, exc))
            continue
        yield SegmentDone(job.video_id, 0)
