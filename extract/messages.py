"""What a decoder sends for one video, and the job that asks for it.

Per video, in this order: ``VideoHeader``, ``FrameBatch`` ..., ``AudioTrack``, ``VideoDone``;
``VideoFailed`` can come at any point and ends the video. Messages of different videos
interleave in a decode pool; within a video they are in order.

A long video is split (segments.py): its job sends ``VideoHeader``, ``VideoSplit`` (the
keyframe-aligned frame ranges), ``AudioTrack``, ``VideoDone`` and no frames; each range is a
segment job of its own (``DecodeJob.segment``) that sends ``FrameBatch`` ... ``SegmentDone``,
possibly on another worker, interleaved with the rest. The video is complete when its job is
done and every segment is; a ``VideoFailed`` from any of its jobs fails the whole video.

In a run the audio is a job of its own (``part="audio"``, made by the decode pool): it sends
only the ``AudioTrack`` (or ``VideoFailed``), uncut, in any order relative to the video's
frame job (``part="frames"``, which sends everything else); the consumer cuts the track to
the header's duration. One audio job serves every video of ``audio_for`` (an ABAW
``_left``/``_right`` pair shares its raw video's audio). ``part="all"`` (the default) is
the whole video in one job, in the order above.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expr.core.errors import ConfigError
from expr.extract.config import FACE_CROPS, JPG_RESIZES, Geometry  # the options' choices (one list)
from expr.extract.geometry_device import NativeLayout

PARTS = ("all", "frames", "audio")  # what a DecodeJob decodes (see the module docstring)
SEGMENT_FRAMES = 1024  # videos longer than twice this are split into keyframe-aligned segments
BATCH_FRAMES = 32  # frames a decoder decodes and resizes at once (a worker sends two such batches a message)


@dataclass(frozen=True)
class DecodeJob:
    """One cache entry to decode. ``video_path`` is None only for a frames folder without video."""

    video_id: str
    video_path: Path | None  # visual source (raw video)
    audio_path: Path | None  # raw video to take audio from (ABAW `_left`/`_right` share one)
    frames_dir: Path | None  # ABAW cropped_aligned/<video_id>/ with 00001.jpg ..., or None
    face_crop: str = "none"  # "none" | "haar" (raw frames only)
    image_size: int = 224  # S: frames come out S x S
    batch_frames: int = BATCH_FRAMES  # frames per FrameBatch: decoded at once (a worker sends 2 per slot and message)
    jpg_resize: str = JPG_RESIZES[0]  # how frames-folder jpgs are resized to S x S (antialiased)
    segment_frames: int = SEGMENT_FRAMES  # split videos longer than 2x this into keyframe-aligned segments (0: never)
    segment_workers: int = 1  # workers that share the segments: sizes shrink toward the end (plan_segments)
    segment: tuple[int, int] | None = None  # a segment job: decode only frames [a, b) of video_path
    segment_pts: int | None = None  # the pts of frame a (a keyframe): where PyAV seeks to (None: decord's seek)
    geometry: str = "worker"  # "device": raw frames go out native (native_decode.py), geometry in the parent
    decoder: str = "cpu"  # "nvdec": the job sends no frames; the main process decodes them (nvdec.py)
    part: str = "all"  # "all": frames and audio; "frames": no AudioTrack; "audio": only the AudioTrack
    audio_for: tuple[str, ...] = ()  # part="audio": the videos that take this track (video_id first)

    def __post_init__(self) -> None:
        if self.face_crop not in FACE_CROPS:
            raise ConfigError(f"face crop must be one of {', '.join(FACE_CROPS)}, got {self.face_crop!r}")
        if self.face_crop != "none" and self.frames_dir is not None:
            raise ConfigError("--face-crop cannot be combined with --frames: cropped-aligned jpgs are already faces")
        if self.jpg_resize not in JPG_RESIZES:
            raise ConfigError(f"jpg resize must be one of {', '.join(JPG_RESIZES)}, got {self.jpg_resize!r}")
        if self.video_path is None and self.frames_dir is None:
            raise ConfigError(f"video {self.video_id!r}: a job needs a video file or a frames folder")
        if self.segment is not None and (self.video_path is None or not 0 <= self.segment[0] < self.segment[1]):
            raise ConfigError(f"video {self.video_id!r}: bad segment {self.segment} (needs a video and 0 <= a < b)")
        if self.geometry not in (Geometry.worker, Geometry.device):  # auto is resolved before jobs exist
            raise ConfigError(f"geometry must be worker or device, got {self.geometry!r}")
        if self.decoder not in ("cpu", "nvdec") or (self.decoder == "nvdec" and self.video_path is None):
            raise ConfigError(f"video {self.video_id!r}: decoder must be cpu, or nvdec for a video, got {self.decoder!r}")
        if self.part not in PARTS or (self.part == "audio" and self.audio_path is None):
            raise ConfigError(f"video {self.video_id!r}: bad job part {self.part!r} (one of {', '.join(PARTS)}; "
                              "an audio job needs an audio path)")
        if self.image_size < 1 or self.batch_frames < 1:
            raise ConfigError(f"image size and batch frames must be positive, got {self.image_size}, {self.batch_frames}")

    @property
    def source(self) -> Path:
        """The file or folder that identifies this entry's input (recorded in the cache)."""
        source = self.video_path if self.video_path is not None else self.frames_dir
        assert source is not None  # __post_init__ refuses a job with neither
        return source


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
    pixels: np.ndarray  # (N, S, S, 3) uint8 RGB, geometry done, not normalised (or native: see layout; NVDEC: a device tensor)
    mask: np.ndarray  # (N,) bool: decoded and (frames dir / face crop) face present
    timestamps: np.ndarray  # (N,) float64 seconds from frame 0 (VFR-safe)
    layout: NativeLayout | None = None  # native frames (--geometry device): pixels are (N, *layout.frame_shape())
    ready: object | None = None  # pixels on a CUDA device (NVDEC): the event their producer recorded after them


@dataclass
class AudioTrack:
    video_id: str
    samples: np.ndarray | None  # (n,) float32 mono 16 kHz, sample 0 at frame 0; None: no audio


@dataclass
class VideoDone:
    video_id: str
    warnings: tuple[str, ...] = ()  # things that did not fail the video but the user should know


@dataclass
class VideoSplit:
    video_id: str
    segments: tuple[tuple[int, int], ...]  # frame ranges [a, b), in order, covering 0..n_frames
    starts_pts: tuple[int | None, ...] = ()  # the pts of each segment's first frame, from the packet scan


@dataclass
class SegmentDone:
    video_id: str
    start: int  # the segment's first frame: every frame of [start, end) was sent


@dataclass
class VideoFailed:
    video_id: str
    reason: str  # one line: names the file, says what is wrong and what to do


Message = VideoHeader | FrameBatch | AudioTrack | VideoDone | VideoFailed | VideoSplit | SegmentDone
