"""Media decoding for `expr extract`: one video -> a stream of small messages.

Per video, in this order: ``VideoHeader``, ``FrameBatch`` ..., ``AudioTrack``, ``VideoDone``.
Frames come from decord in chunks of ``batch_frames`` (never the whole video in memory) with
CLIP's geometry applied here, in the decoding process: resize the shortest side to S with PIL
bicubic and centre-crop S x S, exactly what open_clip's preprocessing does to a PIL image; the
mean/std normalisation is left to the model side. With ABAW cropped-aligned frames the jpgs
replace the raw frames (resized to S x S) and a missing jpg is a masked frame, not an error.

Audio comes from PyAV (decord's AudioReader has returned garbage on stereo input), mixed to
mono and resampled to 16 kHz with torchaudio. Sample 0 is the presentation time of video
frame 0: audio that starts earlier (encoder priming the container does not hide, e.g. AAC in
FLV) is dropped, audio that starts later is preceded by silence, and audio longer than the
video is cut to the video's duration (shorter is kept as is; the run pads and masks).

Bad input raises MediaDecodeError naming the file and what to do. Decoding in worker
processes, so that a decoder crash costs one video and not the run, is in decode_pool.py.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from expr.errors import ConfigError, MediaDecodeError

AUDIO_RATE = 16000  # Wav2Vec2's sample rate
FACE_CROPS = ("none", "haar")
FRAMES_ONLY_FPS = 30.0  # assumed for a frames folder with no raw video (ABAW's usual rate)
_DECODER_THREADS = 1  # per decord reader; parallelism comes from decode workers
_FIX_HINT = "re-encode it with ffmpeg (ffmpeg -i IN -c:v libx264 -c:a aac OUT.mp4) or leave it out"


@dataclass(frozen=True)
class DecodeJob:
    """One cache entry to decode. ``video_path`` is None only for a frames folder without video."""

    video_id: str
    video_path: Path | None  # visual source (raw video)
    audio_path: Path | None  # raw video to take audio from (ABAW `_left`/`_right` share one)
    frames_dir: Path | None  # ABAW cropped_aligned/<video_id>/ with 00001.jpg ..., or None
    face_crop: str = "none"  # "none" | "haar" (raw frames only)
    image_size: int = 224  # S: frames come out S x S
    batch_frames: int = 128  # frames per FrameBatch message

    def __post_init__(self) -> None:
        if self.face_crop not in FACE_CROPS:
            raise ConfigError(f"face crop must be one of {', '.join(FACE_CROPS)}, got {self.face_crop!r}")
        if self.face_crop != "none" and self.frames_dir is not None:
            raise ConfigError("--face-crop cannot be combined with --frames: cropped-aligned jpgs are already faces")
        if self.video_path is None and self.frames_dir is None:
            raise ConfigError(f"video {self.video_id!r}: a job needs a video file or a frames folder")
        if self.image_size < 1 or self.batch_frames < 1:
            raise ConfigError(f"image size and batch frames must be positive, got {self.image_size}, {self.batch_frames}")

    @property
    def source(self) -> Path:
        """The file or folder that identifies this entry's input (recorded in the cache)."""
        return self.video_path if self.video_path is not None else self.frames_dir  # type: ignore[return-value]


@dataclass
class VideoHeader:
    video_id: str
    fps: float  # the video's own average rate
    n_frames: int  # frames to expect (labels have one line per video frame)
    duration: float  # seconds: end of the last frame
    has_audio: bool
    source_size: int  # bytes of the source (change detection)
    source_mtime: float


@dataclass
class FrameBatch:
    video_id: str
    start: int  # index of the first frame (0-based)
    pixels: np.ndarray  # (N, S, S, 3) uint8 RGB, geometry done, not normalised
    mask: np.ndarray  # (N,) bool: decoded and (frames dir / face crop) face present
    timestamps: np.ndarray  # (N,) float64 seconds from frame 0 (VFR-safe)


@dataclass
class AudioTrack:
    video_id: str
    samples: np.ndarray | None  # (n,) float32 mono 16 kHz, sample 0 at frame 0; None: no audio


@dataclass
class VideoDone:
    video_id: str
    warnings: tuple[str, ...] = ()  # things that did not fail the video but the user should know


@dataclass
class VideoFailed:
    video_id: str
    reason: str  # one line: names the file, says what is wrong and what to do


Message = VideoHeader | FrameBatch | AudioTrack | VideoDone | VideoFailed


# ---------------------------------------------------------------- probing (PyAV)


@dataclass
class _Probe:
    has_video: bool
    has_audio: bool
    video_start: float  # seconds: presentation time of the first video frame
    video_declared: float | None  # what the container says the video stream lasts, seconds
    video_frames: int  # frames the container header announces (0: unknown)


def declared_duration(stream) -> float | None:
    """A stream's duration as its container declares it (index or Matroska DURATION tag), seconds."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d*)?)", str(stream.metadata.get("DURATION", "")).strip())
    if tag:
        return int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3])
    return None


def probe(path: Path) -> _Probe:
    """Open ``path`` with PyAV first: it fails cleanly on input that can crash decord."""
    import av

    try:
        size = path.stat().st_size
    except OSError as e:
        raise MediaDecodeError(f"{path}: cannot read the file ({e.strerror})") from e
    if size == 0:
        raise MediaDecodeError(f"{path}: the file is empty (0 bytes); the copy or download failed: fetch it again")
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0] if container.streams.video else None
            start = 0.0
            if video is not None and video.start_time is not None:
                start = float(video.start_time * video.time_base)
            declared = declared_duration(video) if video is not None else None
            frames = int(video.frames or 0) if video is not None else 0
            return _Probe(video is not None, bool(container.streams.audio), start, declared, frames)
    except av.FFmpegError as e:
        raise MediaDecodeError(
            f"{path}: not a video ffmpeg can read ({_short(e)}); check that it is a complete video file or {_FIX_HINT}"
        ) from e


def _short(e: BaseException) -> str:
    """First line of an exception's message, without decord's '[time] file.cc:123:' prefix."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    text = re.sub(r"\[[\d:]+\] \S+?:\d+: ", "", text)
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    text = re.sub(r": '[^']*'$", "", text)  # ffmpeg repeats the path; the caller names it already
    text = re.sub(r"(failed with )?-?1094995529", "invalid data", text)  # AVERROR_INVALIDDATA
    return text[:200]


# ---------------------------------------------------------------- video (decord)


def _open_reader(path: Path):
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    try:
        return decord.VideoReader(str(path), num_threads=_DECODER_THREADS)
    except (decord.DECORDError, RuntimeError) as e:  # DECORDError is no RuntimeError
        raise MediaDecodeError(
            f"{path}: the video decoder cannot read it ({_short(e)}); the file is probably truncated or corrupt: {_FIX_HINT}"
        ) from e


def frame_timestamps(reader, n: int, fps: float) -> tuple[np.ndarray, str | None]:
    """Per-frame start times, seconds from frame 0, from decord (VFR-safe); i/fps when implausible.

    decord reports garbage for some containers (MPEG-PS: huge negative numbers, no pts on
    B-frames), so its times are used only when finite, non-decreasing and spanning about what
    the frame count and average rate say.
    """
    import decord

    even = np.arange(n, dtype=np.float64) / fps
    try:
        ts = np.asarray(reader.get_frame_timestamp(list(range(n))), dtype=np.float64)[:, 0]
    except (decord.DECORDError, RuntimeError, IndexError):
        return even, "the container has no usable frame timestamps; assumed a constant frame rate"
    ts = ts - ts[0]
    span = n / fps
    plausible = np.isfinite(ts).all() and (np.diff(ts) >= -1e-6).all() and ts[-1] <= 2 * span + 1.0
    if not plausible:
        return even, "the container's frame timestamps are inconsistent; assumed a constant frame rate"
    return ts, None


def clip_geometry(frames: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, S, S, 3): shortest side to S (PIL bicubic), centre crop.

    Same arithmetic as torchvision's Resize(S) + CenterCrop(S) on a PIL image, which is what
    open_clip's preprocessing runs, so cached features match open_clip's own pipeline.
    """
    from PIL import Image

    n, h, w, _ = frames.shape
    if h <= w:
        new_h, new_w = size, int(size * w / h)
    else:
        new_h, new_w = int(size * h / w), size
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        image = Image.fromarray(frames[i])
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.BICUBIC)
        out[i] = np.asarray(image)[top : top + size, left : left + size]
    return out


def _new_cropper(size: int):
    try:
        from expr.extract.face_crop import FaceCropper
    except ImportError as e:
        raise ConfigError(f"--face-crop haar is unavailable: expr.extract.face_crop cannot be imported ({e})") from e
    return FaceCropper(output_size=size)


def _read_frames(reader, path: Path, a: int, b: int, n: int, shape: tuple | None) -> np.ndarray:
    """Frames a..b-1 as (N, H, W, 3) uint8, read sequentially with ``next()``.

    Why not ``get_batch``: its memory grows with every call (~75 MB per 1000 frames at 360p),
    and the known cure, ``seek(0)`` between batches, returns wrong frames on containers where
    decord's seeking is broken (MPEG-PS, ASF/WMV: measured). Sequential reading is flat in
    memory, exact in order and about as fast.
    """
    import decord

    out = None
    for i in range(a, b):
        try:
            frame = reader.next().asnumpy()  # (H, W, 3) uint8
        except StopIteration:
            raise MediaDecodeError(
                f"{path}: only {i} of the {n} frames its index announces can be decoded; "
                f"the file is probably truncated: fetch it again or {_FIX_HINT}"
            ) from None
        except (decord.DECORDError, RuntimeError) as e:  # DECORDError is no RuntimeError
            raise MediaDecodeError(
                f"{path}: frame {i + 1} of {n} cannot be decoded ({_short(e)}); "
                f"the file is probably truncated or corrupt: {_FIX_HINT}"
            ) from e
        shape = shape or frame.shape
        if frame.dtype != np.uint8 or frame.shape != shape or len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 1:
            raise MediaDecodeError(
                f"{path}: the decoder returned frame {i + 1} as {frame.shape} {frame.dtype}, expected "
                f"(H, W, 3) uint8 with the same H x W as frame 1 {shape[:2]}: {_FIX_HINT}"
            )
        if out is None:
            out = np.empty((b - a, *shape), np.uint8)
        out[i - a] = frame
    return out


def _video_batches(job: DecodeJob, reader, n: int, timestamps: np.ndarray) -> Iterator[FrameBatch]:
    size = job.image_size
    cropper = _new_cropper(size) if job.face_crop == "haar" else None
    shape = None
    for a in range(0, n, job.batch_frames):
        b = min(a + job.batch_frames, n)
        raw = _read_frames(reader, job.video_path, a, b, n, shape)  # (N, H, W, 3)
        shape = raw.shape[1:]
        if cropper is not None:
            pixels, found = cropper(raw)
            mask = np.asarray(found, dtype=bool)
        else:
            pixels, mask = clip_geometry(raw, size), np.ones(b - a, dtype=bool)
        yield FrameBatch(job.video_id, a, pixels, mask, timestamps[a:b].copy())


# ---------------------------------------------------------------- ABAW frames folders


def index_jpgs(frames_dir: Path) -> dict[int, Path]:
    """1-based frame number -> jpg path, from names like 00001.jpg (any digit count)."""
    found = {}
    for entry in os.scandir(frames_dir):
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() in (".jpg", ".jpeg", ".png") and stem.isdigit() and int(stem) >= 1:
            found[int(stem)] = Path(entry.path)
    return found


def _frames_dir_batches(job: DecodeJob, n: int, timestamps: np.ndarray, jpgs: dict[int, Path],
                        warnings: list[str]) -> Iterator[FrameBatch]:
    from PIL import Image, UnidentifiedImageError

    size, unreadable = job.image_size, []
    for a in range(0, n, job.batch_frames):
        b = min(a + job.batch_frames, n)
        pixels = np.zeros((b - a, size, size, 3), np.uint8)
        mask = np.zeros(b - a, dtype=bool)
        for i in range(a, b):
            jpg = jpgs.get(i + 1)  # frame i (0-based) is jpg i+1
            if jpg is None:
                continue  # no face detected by ABAW: a masked frame, not an error
            try:
                with Image.open(jpg) as image:
                    pixels[i - a] = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))
                mask[i - a] = True
            except (OSError, UnidentifiedImageError):
                unreadable.append(jpg.name)
        yield FrameBatch(job.video_id, a, pixels, mask, timestamps[a:b].copy())
    if unreadable:
        warnings.append(f"{job.frames_dir}: {len(unreadable)} unreadable image(s) masked (first: {unreadable[0]})")
    extra = sum(1 for k in jpgs if k > n)
    if extra:
        warnings.append(f"{job.frames_dir}: {extra} image(s) numbered beyond the video's {n} frames were ignored")


# ---------------------------------------------------------------- audio (PyAV + torchaudio)


def decode_audio(path: Path, *, origin: float, duration: float | None) -> np.ndarray | None:
    """Mono float32 at 16 kHz, sample 0 at ``origin`` seconds, at most ``duration`` long.

    None when the file has no audio stream. Raises MediaDecodeError when the stream cannot be
    decoded or stops well before the duration its container declares (a truncated file gives
    partial audio without any error from ffmpeg: failing is better than silently short audio).
    """
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            declared = declared_duration(stream)
            first, rate, blocks = None, None, []
            resampler = av.AudioResampler(format="fltp")  # any sample format -> planar float
            for frame in container.decode(stream):
                if rate is None:
                    rate = frame.sample_rate
                    first = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
                elif frame.sample_rate != rate:
                    raise MediaDecodeError(f"{path}: the audio sample rate changes mid-stream: {_FIX_HINT}")
                for out in resampler.resample(frame):
                    blocks.append(out.to_ndarray().mean(axis=0))  # (C, n) -> (n,) mono
    except av.FFmpegError as e:
        raise MediaDecodeError(f"{path}: the audio stream cannot be decoded ({_short(e)}): {_FIX_HINT}") from e
    if rate is None:
        return np.zeros(0, np.float32)  # an audio stream with no packets: empty, not absent
    mono = np.concatenate(blocks).astype(np.float32)
    decoded = len(mono) / rate
    if declared is not None and decoded < declared - max(0.25, 0.02 * declared):
        raise MediaDecodeError(
            f"{path}: the audio stream stops after {decoded:.2f} s but the file declares {declared:.2f} s; "
            "the file looks truncated (interrupted download or copy?): fetch it again or " + _FIX_HINT
        )
    mono = _align(mono, rate, first - origin)
    samples = _resample(mono, rate)
    if duration is not None:
        samples = samples[: int(round(duration * AUDIO_RATE))]
    return np.ascontiguousarray(samples, dtype=np.float32)


def _align(mono: np.ndarray, rate: int, offset: float) -> np.ndarray:
    """Shift so that sample 0 is the video's frame 0: ``offset`` = audio start - video start."""
    shift = int(round(offset * rate))
    if shift < 0:
        return mono[-shift:]  # priming / audio that starts before the first frame
    if shift > 0:
        return np.concatenate([np.zeros(shift, np.float32), mono])
    return mono


def _resample(mono: np.ndarray, rate: int) -> np.ndarray:
    if rate == AUDIO_RATE or len(mono) == 0:
        return mono
    import torch
    import torchaudio.functional as AF

    with torch.inference_mode():
        return AF.resample(torch.from_numpy(mono), rate, AUDIO_RATE).numpy()


# ---------------------------------------------------------------- one video


def source_stat(job: DecodeJob, jpgs: dict[int, Path] | None = None) -> tuple[int, float]:
    """(size, mtime) identifying the job's input, recorded in the cache to detect a changed
    source: the raw video's, or for a frames folder without video the jpgs' total size and
    newest mtime (``jpgs``: its ``index_jpgs``, if already listed)."""
    if job.video_path is not None:
        st = job.video_path.stat()
        return st.st_size, st.st_mtime
    stats = [p.stat() for p in (index_jpgs(job.frames_dir) if jpgs is None else jpgs).values()]
    return sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)


def _check_complete(path: Path, info: _Probe, n: int, duration: float) -> None:
    """Fail a video with fewer frames than its container announces.

    Matroska/WebM (index at the end) and AVI (idx1 at the end) cut short just have fewer
    frames, silently; their headers still carry the full duration / frame count.
    """
    declared, frames = info.video_declared, info.video_frames
    short = declared is not None and duration < declared - max(0.5, 0.05 * declared)
    if short or (frames and n < frames - max(2, 0.05 * frames)):
        expected = f"{frames} frames" if frames else f"{declared:.2f} s"
        raise MediaDecodeError(
            f"{path}: the video stream holds {n} frames ({duration:.2f} s) but the file announces {expected}; "
            "the file looks truncated (interrupted download or copy?): fetch it again or " + _FIX_HINT
        )


def decode_video(job: DecodeJob) -> Iterator[Message]:
    """Decode one job in this process; raises MediaDecodeError (with cause) on bad input."""
    if job.video_path is None:
        yield from _decode_frames_only(job)
        return
    path, warnings = job.video_path, []
    info = probe(path)
    if not info.has_video:
        raise MediaDecodeError(f"{path}: the file has no video stream (audio only?); leave it out")
    reader = _open_reader(path)
    n, fps = len(reader), float(reader.get_avg_fps())
    if n < 1:
        raise MediaDecodeError(f"{path}: the video stream has no frames: {_FIX_HINT}")
    if not math.isfinite(fps) or fps <= 0:
        raise MediaDecodeError(f"{path}: the video has no valid frame rate ({fps}): {_FIX_HINT}")
    timestamps, note = frame_timestamps(reader, n, fps)
    if note:
        warnings.append(f"{path}: {note}")
    duration = float(timestamps[-1]) + 1.0 / fps
    _check_complete(path, info, n, duration)
    audio_info = info if job.audio_path in (None, path) else probe(job.audio_path)
    has_audio = job.audio_path is not None and audio_info.has_audio
    yield VideoHeader(job.video_id, fps, n, duration, has_audio, *source_stat(job))
    if job.frames_dir is not None:
        jpgs = index_jpgs(job.frames_dir)
        del reader  # only its frame count and timestamps were needed
        yield from _frames_dir_batches(job, n, timestamps, jpgs, warnings)
    else:
        yield from _video_batches(job, reader, n, timestamps)
        del reader
    samples = None
    if has_audio:
        samples = decode_audio(job.audio_path, origin=info.video_start, duration=duration)
    yield AudioTrack(job.video_id, samples)
    yield VideoDone(job.video_id, tuple(warnings))


def _decode_frames_only(job: DecodeJob) -> Iterator[Message]:
    """A frames folder with no raw video: frame count from the jpg numbers, no audio, assumed fps."""
    folder = job.frames_dir
    try:
        jpgs = index_jpgs(folder)
    except OSError as e:
        raise MediaDecodeError(f"{folder}: cannot list the frames folder ({e.strerror})") from e
    if not jpgs:
        raise MediaDecodeError(f"{folder}: no frame images (expected 00001.jpg, 00002.jpg, ...) and no raw video")
    n = max(jpgs)  # the highest number, not the count: missing jpgs are masked frames
    warnings = [f"{folder}: no raw video found, so no audio and an assumed {FRAMES_ONLY_FPS:g} fps"]
    timestamps = np.arange(n, dtype=np.float64) / FRAMES_ONLY_FPS
    yield VideoHeader(job.video_id, FRAMES_ONLY_FPS, n, n / FRAMES_ONLY_FPS, False, *source_stat(job, jpgs))
    yield from _frames_dir_batches(job, n, timestamps, jpgs, warnings)
    yield AudioTrack(job.video_id, None)
    yield VideoDone(job.video_id, tuple(warnings))
