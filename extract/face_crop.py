"""Square face crops for raw videos (``expr extract --face-crop haar``).

ABAW ships cropped-aligned faces; raw videos (and the CREMA-D demo clips) do not. CLIP was
trained on whole images, but the reference method feeds it faces, so a raw frame is cut to
the face before CLIP preprocessing. The detector is OpenCV's frontal-face Haar cascade, the
one that ships inside opencv-python-headless 4.x: no weights to download, 10-20 ms a frame
on a CPU core at 320 px (CLIP itself takes ~65 ms a frame on CPU), good enough for a
frontal talking face.

One ``FaceCropper`` per video, fed consecutive frames in order::

    cropper = FaceCropper(output_size=224)
    crops, found = cropper(frames)      # (N, H, W, 3) uint8 RGB -> (N, 224, 224, 3), (N,)

Per frame: detect on a grey copy whose longer side is ``detect_size`` pixels, keep the
largest face, smooth its box over time (EMA), reuse the last box when the detector misses
for at most ``max_reuse`` frames in a row (the face is assumed still there: ``found`` True),
and mark the frames after that, and those before the first detection, ``found`` False (the
caller masks them). Without the limit, one false detection on a faceless video marked every
later frame as a face (134 of 150 frames of a test pattern). The box logic (``BoxTracker``,
``square_box``, ``crop_square``) is plain numpy so it can be tested without OpenCV's detector.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expr.core.errors import ConfigError, MediaDecodeError

CASCADE_FILE = "haarcascade_frontalface_default.xml"

# Detector: RGB frame (H, W, 3) uint8 -> (K, 4) float boxes x, y, w, h in frame pixels.
Detector = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Box:
    """A square crop box in full-frame pixels: centre and side length."""

    cx: float
    cy: float
    side: float


def square_box(xywh: np.ndarray, margin: float) -> Box:
    """Square box around a detection, ``margin`` x the face size added on each side.

    Haar boxes are tight (brows to mouth); margin 0.25 gives a 1.5x box, close to the framing
    of ABAW's cropped-aligned faces.
    """
    x, y, w, h = (float(v) for v in xywh)
    return Box(cx=x + w / 2, cy=y + h / 2, side=max(w, h) * (1 + 2 * margin))


def largest(detections: np.ndarray) -> np.ndarray | None:
    """The detection (x, y, w, h) with the largest area, or None when there is none."""
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 4)
    if len(detections) == 0:
        return None
    return detections[int(np.argmax(detections[:, 2] * detections[:, 3]))]


class BoxTracker:
    """Smooths the face box over time and bridges frames where the detector misses.

    ``smoothing`` is the weight of the previous box in the exponential moving average
    (0 = follow every detection, 0.9 = very steady). A detection that jumps by more than
    ``jump`` x the box side, or changes size by more than that fraction, restarts the average:
    that is a cut or another person, and gliding there over ten frames would crop background.
    """

    def __init__(self, smoothing: float = 0.6, jump: float = 0.5, max_reuse: int = 5):
        if not 0.0 <= smoothing < 1.0:
            raise ConfigError(f"face-crop smoothing must be in [0, 1), got {smoothing}")
        if max_reuse < 0:
            raise ConfigError(f"face-crop max_reuse must be >= 0, got {max_reuse}")
        self.smoothing = smoothing
        self.jump = jump
        # 5: the window rule (DESIGN.md) bridges at most 5 invalid frames; a longer run of
        # misses is "no face", not a blink or a turned head.
        self.max_reuse = max_reuse
        self.box: Box | None = None
        self.misses = 0  # detector misses in a row since the last detection

    def update(self, detected: Box | None) -> tuple[Box | None, bool]:
        """Feed this frame's detection (or None); return the box to crop and whether a face
        is taken to be there: True on a detection and on up to ``max_reuse`` misses after one."""
        if detected is None:
            self.misses += 1
            return self.box, self.box is not None and self.misses <= self.max_reuse
        prev, expired = self.box, self.misses > self.max_reuse
        self.misses = 0
        if prev is None or expired or self._jumped(prev, detected):
            self.box = detected
        else:
            a = self.smoothing
            self.box = Box(
                cx=a * prev.cx + (1 - a) * detected.cx,
                cy=a * prev.cy + (1 - a) * detected.cy,
                side=a * prev.side + (1 - a) * detected.side,
            )
        return self.box, True

    def _jumped(self, prev: Box, new: Box) -> bool:
        moved = np.hypot(new.cx - prev.cx, new.cy - prev.cy) > self.jump * prev.side
        resized = abs(new.side - prev.side) > self.jump * prev.side
        return bool(moved or resized)


def centre_box(height: int, width: int) -> Box:
    """The largest centred square: what CLIP's own centre crop would keep."""
    return Box(cx=width / 2, cy=height / 2, side=float(min(height, width)))


def crop_square(frame: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Cut ``box`` out of ``frame`` (H, W, 3), black where it leaves the frame, resize to
    (size, size, 3) bicubic."""
    import cv2

    height, width = frame.shape[:2]
    side = max(1, int(round(box.side)))
    x0 = int(round(box.cx - side / 2))
    y0 = int(round(box.cy - side / 2))
    # Overlap of the box with the frame, in frame and in box coordinates.
    fx0, fy0 = max(x0, 0), max(y0, 0)
    fx1, fy1 = min(x0 + side, width), min(y0 + side, height)
    if fx0 >= fx1 or fy0 >= fy1:  # box entirely outside: nothing to show
        return np.zeros((size, size, 3), dtype=np.uint8)
    if (fx0, fy0, fx1, fy1) == (x0, y0, x0 + side, y0 + side):
        patch = frame[y0:y0 + side, x0:x0 + side]
    else:
        patch = np.zeros((side, side, 3), dtype=np.uint8)
        patch[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = frame[fy0:fy1, fx0:fx1]
    # Shrinking a 700 px face to 224 with bicubic alone aliases; INTER_AREA is the
    # right filter downwards, bicubic upwards (CLIP's own resize is bicubic).
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interp)


def cascade_path(path: str | Path | None = None) -> Path:
    """The frontal-face cascade file: ``path`` if given, else the copy inside OpenCV."""
    if path is not None:
        found = Path(path)
    else:
        try:
            import cv2.data  # a subpackage: its own import, which cv2's stubs need to see it

            found = Path(cv2.data.haarcascades) / CASCADE_FILE
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                "--face-crop haar needs OpenCV's Haar cascades, which ship in opencv-python-headless 4.x "
                f"(5.x wheels dropped them): pip install 'opencv-python-headless>=4.8,<5' ({exc})"
            ) from exc
    if not found.is_file():
        raise ConfigError(
            f"{found}: Haar cascade file not found; install opencv-python-headless 4.x "
            "(pip install 'opencv-python-headless>=4.8,<5'), whose wheels ship it, or pass the path "
            f"of a {CASCADE_FILE}"
        )
    return found


def haar_detector(cascade: str | Path | None = None, detect_size: int = 320,
                  min_face: float = 0.1) -> Detector:
    """A Haar face detector working on a grey copy whose longer side is ``detect_size`` px.

    Detecting at 320 px instead of 1280x720 is ~10x faster and loses only faces smaller than
    ``min_face`` x the frame's shorter side, which are too small for a useful crop anyway.
    """
    import cv2

    path = cascade_path(cascade)
    try:
        classifier = cv2.CascadeClassifier(str(path))
    except (cv2.error, SystemError):  # a malformed XML surfaces as SystemError
        classifier = None
    if classifier is None or classifier.empty():
        raise ConfigError(f"{path}: OpenCV could not load this Haar cascade; is it a cascade XML file?")

    def detect(frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        scale = min(1.0, detect_size / max(height, width))
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                              interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)  # evens out dim or backlit faces
        smallest = max(24, int(min_face * min(height, width) * scale))  # the cascade's window is 24 px
        boxes = classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                            minSize=(smallest, smallest))
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale

    return detect


class FaceCropper:
    """Turns consecutive RGB frames of one video into square face crops; see the module doc."""

    def __init__(
        self,
        output_size: int = 224,
        margin: float = 0.25,
        smoothing: float = 0.6,
        max_reuse: int = 5,
        min_face: float = 0.1,
        detect_size: int = 320,
        cascade: str | Path | None = None,
        detector: Detector | None = None,
    ):
        if output_size < 1:
            raise ConfigError(f"face-crop output size must be positive, got {output_size}")
        if margin < 0:
            raise ConfigError(f"face-crop margin must be >= 0, got {margin}")
        if not 0.0 < min_face < 1.0:
            raise ConfigError(f"face-crop min_face is a fraction of the frame's shorter side, got {min_face}")
        self.output_size = output_size
        self.margin = margin
        self.tracker = BoxTracker(smoothing, max_reuse=max_reuse)
        # Injectable so that another detector (or a test's fake) can stand in for Haar.
        self.detect = detector or haar_detector(cascade, detect_size, min_face)

    def __call__(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, 3) uint8 RGB -> crops (N, S, S, 3) uint8 and found (N,) bool."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise MediaDecodeError(
                f"face cropping expects (N, H, W, 3) uint8 RGB frames, got {frames.shape} {frames.dtype}"
            )
        size = self.output_size
        crops = np.empty((len(frames), size, size, 3), dtype=np.uint8)
        found = np.zeros(len(frames), dtype=bool)
        for i, frame in enumerate(frames):
            face = largest(self.detect(frame))
            box, found[i] = self.tracker.update(None if face is None else square_box(face, self.margin))
            crops[i] = crop_square(frame, box or centre_box(*frame.shape[:2]), size)
        return crops, found
