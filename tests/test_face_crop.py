"""Face cropping: the box logic on synthetic detections, OpenCV's Haar cascade on a frame
without a face and on the real CREMA-D clips."""

from __future__ import annotations

import numpy as np
import pytest

from expr.core.errors import ConfigError, MediaDecodeError
from expr.extract.face_crop import (
    Box,
    BoxTracker,
    FaceCropper,
    cascade_path,
    centre_box,
    crop_square,
    haar_detector,
    largest,
    square_box,
)
from media_fixtures import cremad_clips


# -- box logic ---------------------------------------------------------------------------

def test_largest_picks_biggest_area_and_none_when_empty():
    assert largest(np.zeros((0, 4))) is None
    boxes = np.array([[0, 0, 10, 10], [50, 50, 30, 20], [5, 5, 20, 20]])
    np.testing.assert_array_equal(largest(boxes), [50, 50, 30, 20])


def test_square_box_adds_margin_on_each_side_of_longer_edge():
    box = square_box(np.array([100, 40, 60, 80]), margin=0.25)
    assert (box.cx, box.cy, box.side) == (130.0, 80.0, 120.0)  # 80 * 1.5


def test_tracker_before_first_detection_then_ema_then_reuse():
    tracker = BoxTracker(smoothing=0.75)
    assert tracker.update(None) == (None, False)
    first = Box(100.0, 100.0, 80.0)
    assert tracker.update(first) == (first, True)
    box, found = tracker.update(Box(108.0, 96.0, 88.0))  # small move: averaged
    assert found and box == Box(102.0, 99.0, 82.0)
    assert tracker.update(None) == (box, True)  # miss: the last box stays, face assumed there
    assert tracker.update(None) == (box, True)


def test_reused_box_expires_so_no_face_is_recorded():
    """Issue 21.10: one false detection marked every later frame of a faceless video as a face."""
    tracker = BoxTracker(smoothing=0.5, max_reuse=3)
    first = Box(100.0, 100.0, 80.0)
    tracker.update(first)
    found = [tracker.update(None)[1] for _ in range(6)]
    assert found == [True, True, True, False, False, False]
    # A detection after the expiry starts afresh: no average with the stale box.
    later = Box(110.0, 100.0, 80.0)
    assert tracker.update(later) == (later, True)
    with pytest.raises(ConfigError, match="max_reuse"):
        BoxTracker(max_reuse=-1)


def test_one_spurious_detection_in_150_faceless_frames_marks_few_frames():
    frames = np.zeros((150, 60, 80, 3), dtype=np.uint8)
    calls = iter(range(150))
    # The detector "sees" a face in frame 3 only, as Haar does now and then on a test pattern.
    fake = lambda frame: np.array([[20.0, 10.0, 20.0, 20.0]]) if next(calls) == 3 else np.zeros((0, 4))  # noqa: E731
    _, found = FaceCropper(output_size=16, detector=fake)(frames)
    assert found.sum() == 1 + 5  # the detection and the default 5 reused frames, not 147
    assert found[3:9].all() and not found[9:].any()


def test_tracker_restarts_on_jump_or_resize():
    tracker = BoxTracker(smoothing=0.9)
    tracker.update(Box(100.0, 100.0, 80.0))
    far = Box(300.0, 100.0, 80.0)  # moved 2.5 sides: a cut, not motion
    assert tracker.update(far) == (far, True)
    bigger = Box(300.0, 100.0, 160.0)
    assert tracker.update(bigger) == (bigger, True)


def test_tracker_rejects_bad_smoothing():
    with pytest.raises(ConfigError, match="smoothing"):
        BoxTracker(smoothing=1.0)


def test_crop_square_inside_frame_is_exact_pixels():
    frame = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    crop = crop_square(frame, Box(cx=30.0, cy=20.0, side=10.0), size=10)
    np.testing.assert_array_equal(crop, frame[15:25, 25:35])


def test_crop_square_pads_black_outside_frame():
    frame = np.full((40, 60, 3), 200, dtype=np.uint8)
    crop = crop_square(frame, Box(cx=0.0, cy=0.0, side=20.0), size=20)  # 3/4 outside
    assert crop.shape == (20, 20, 3)
    assert (crop[:10, :] == 0).all() and (crop[:, :10] == 0).all()
    assert (crop[10:, 10:] == 200).all()
    nowhere = crop_square(frame, Box(cx=500.0, cy=500.0, side=20.0), size=8)
    assert nowhere.shape == (8, 8, 3) and not nowhere.any()


def test_crop_square_resizes_to_output_size():
    frame = np.zeros((360, 480, 3), dtype=np.uint8)
    assert crop_square(frame, Box(240.0, 180.0, 300.0), 224).shape == (224, 224, 3)  # down
    assert crop_square(frame, Box(240.0, 180.0, 100.0), 224).shape == (224, 224, 3)  # up


def test_cropper_with_fake_detections_marks_and_reuses():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (6, 90, 120, 3), dtype=np.uint8)
    face = np.array([[40.0, 20.0, 20.0, 20.0]])
    script = [np.zeros((0, 4)), np.zeros((0, 4)), face, np.zeros((0, 4)),
              np.vstack([face + [1, 1, 0, 0], [[0, 0, 5, 5]]]), np.zeros((0, 4))]
    calls = iter(script)
    cropper = FaceCropper(output_size=30, margin=0.25, smoothing=0.5, detector=lambda frame: next(calls))
    crops, found = cropper(frames[:3])  # fed in two calls: state carries over
    crops2, found2 = cropper(frames[3:])
    crops, found = np.concatenate([crops, crops2]), np.concatenate([found, found2])
    np.testing.assert_array_equal(found, [False, False, True, True, True, True])
    assert crops.shape == (6, 30, 30, 3) and crops.dtype == np.uint8
    # Before the first face: the centre square of the frame.
    np.testing.assert_array_equal(crops[0], crop_square(frames[0], centre_box(90, 120), 30))
    # Face box 20 px + 25% each side = 30 px square around (50, 30): no resize needed.
    np.testing.assert_array_equal(crops[2], frames[2][15:45, 35:65])
    np.testing.assert_array_equal(crops[3], frames[3][15:45, 35:65])  # miss: box reused
    # Largest detection chosen and averaged with the previous box: centre (50.5, 30.5).
    assert cropper.tracker.box == Box(50.5, 30.5, 30.0)


def test_cropper_rejects_non_rgb_uint8():
    cropper = FaceCropper(detector=lambda f: np.zeros((0, 4)))
    with pytest.raises(MediaDecodeError, match="uint8 RGB"):
        cropper(np.zeros((2, 10, 10), dtype=np.uint8))
    with pytest.raises(MediaDecodeError, match="uint8 RGB"):
        cropper(np.zeros((2, 10, 10, 3), dtype=np.float32))


# -- OpenCV ------------------------------------------------------------------------------

def test_missing_cascade_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="opencv-python-headless"):
        cascade_path(tmp_path / "nope.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<not a cascade/>")
    with pytest.raises(ConfigError, match="could not load"):
        haar_detector(bad)


def test_frame_without_face_is_not_found():
    # Smooth gradients and a few flat shapes: nothing face-like for the cascade.
    y, x = np.mgrid[0:360, 0:480]
    frame = np.stack([x * 255 // 480, y * 255 // 360, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    frame[100:200, 50:150] = 255
    frames = np.repeat(frame[None], 3, axis=0)
    crops, found = FaceCropper()(frames)
    assert not found.any()
    assert crops.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(crops[0], crop_square(frame, centre_box(360, 480), 224))


def _check_faces_in_clips(clips):
    import decord

    for clip in clips:
        reader = decord.VideoReader(str(clip))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        cropper = FaceCropper()
        crops, found = cropper(frames)
        assert crops.shape == (len(frames), 224, 224, 3)
        assert found.mean() >= 0.9, f"{clip.name}: face in only {found.mean():.0%} of frames"
        # The actor's face sits left of centre in the 480x360 frame, about 130 px wide.
        box = cropper.tracker.box
        assert box is not None
        assert 100 < box.cx < 240 and 60 < box.cy < 180 and 120 < box.side < 300, box


def test_haar_finds_face_in_cached_cremad_clip(request):
    """Fast path: runs when the slow test (or the demo) has fetched the clips already."""
    _check_faces_in_clips(cremad_clips(request.config)[:1])


@pytest.mark.slow
def test_haar_finds_face_in_most_cremad_frames(request):
    _check_faces_in_clips(cremad_clips(request.config, fetch=True))


@pytest.mark.slow
def test_real_haar_on_ffmpegs_testsrc2_marks_few_frames_as_face():
    """ffmpeg's testsrc2 pattern has no face, but Haar fires on 13 of its first 150 frames;
    with unbounded reuse of the last box 89 frames were marked as face."""
    import av.filter
    from typing import cast

    graph = av.filter.Graph()
    src, fmt, sink = graph.add("testsrc2", "size=480x360:rate=25"), graph.add("format", "rgb24"), graph.add("buffersink")
    src.link_to(fmt)
    fmt.link_to(sink)
    graph.configure()
    frames = np.stack([cast(av.VideoFrame, sink.pull()).to_ndarray() for _ in range(150)])
    haar, hits = haar_detector(), []

    def counting(frame):
        boxes = haar(frame)
        hits.append(len(boxes) > 0)
        return boxes

    _, found = FaceCropper(detector=counting)(frames)
    assert found.sum() <= sum(hits) * 6 and found.sum() < 40, (sum(hits), found.sum())
