"""The window rules of train_heads/windows.py against window lists written out by hand, the
authors' loop transcribed literally (tests/window_oracle.py), and the bank-wide bank_windows (grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expr.core.errors import ConfigError
from expr.train_heads.config import WindowRule
from expr.train_heads.data import FeatureBank
from expr.train_heads.windows import WindowSpec, bank_windows, grid_windows, reference_windows, video_windows
from window_oracle import authors_loop

X = -1  # an unlabelled frame


def check(labels, face, window, stride, ends, filled=None, outside=()):
    """Reference windows of one video against the hand-written ``ends``, ``filled``
    {own frame: source frame} and ``outside`` (frames in no sequence); every other frame is
    its own source, and each target is the label of its end frame's source."""
    labels = np.asarray(labels)
    face = np.ones(len(labels), bool) if face is None else np.asarray(face, bool)
    got = reference_windows(labels, face, window, stride)
    want_source = np.arange(len(labels))
    for own, src in (filled or {}).items():
        want_source[own] = src
    want_source[list(outside)] = -1
    assert got.ends.tolist() == ends
    assert got.source.tolist() == want_source.tolist()
    assert got.targets.tolist() == [int(labels[want_source[e]]) for e in ends]
    assert got.ends.dtype == got.source.dtype == got.targets.dtype == np.int64
    return got


def test_gap_of_exactly_five_is_filled():
    labels = [1, 1, 1, X, X, X, X, X, 2, 2, 2, 2]
    check(labels, None, 4, 2, ends=[3, 5, 7, 9, 11], filled={3: 2, 4: 2, 5: 2, 6: 2, 7: 2})


def test_gap_of_six_resets():
    labels = [1, 1, 1, X, X, X, X, X, X, 2, 2, 2, 2, 2]
    # frames 3-7 filled from 2; frame 8 (6th) clears the sequence; 9 starts a new one
    check(labels, None, 4, 2, ends=[3, 5, 7, 12], filled={3: 2, 4: 2, 5: 2, 6: 2, 7: 2}, outside=[8])


def test_invalid_start_is_skipped():
    labels = [X, 3, 3, 3, 3, 3, 3]
    face = [1, 0, 1, 1, 1, 1, 1]  # frame 1 is labelled but has no face: invalid too
    check(labels, face, 4, 2, ends=[5], outside=[0, 1])


def test_gap_at_the_very_end_is_filled_and_still_emits():
    labels = [0, 1, 2, 3, 4, X, X, X]
    got = check(labels, None, 4, 2, ends=[3, 5, 7], filled={5: 4, 6: 4, 7: 4})
    assert got.targets.tolist() == [3, 4, 4]  # windows ending on filled frames take frame 4's label


def test_missing_face_inside_a_labelled_run_is_filled():
    labels = [0, 1, 2, 3, 4, 5, 6, 7]
    face = [1, 1, 1, 0, 0, 1, 1, 1]
    got = check(labels, face, 4, 2, ends=[3, 5, 7], filled={3: 2, 4: 2})
    assert got.targets.tolist() == [2, 5, 7]


def test_stride_larger_than_window_empties_the_sequence_but_keeps_the_fill():
    labels = [1, 1, 1, X, 2, 2, 2, 3, 3, 3, 3]
    # emit at 2, drop 5 of 3 -> empty; frame 3 is still filled from 2 (last_valid and the fill
    # count survive the emission), so 3-5 emit at 5, 6-8 at 8; 9-10 are left in the sequence.
    got = check(labels, None, 3, 5, ends=[2, 5, 8], filled={3: 2})
    assert got.targets.tolist() == [1, 2, 3]
    assert [w[-1][0] for w in authors_loop(labels, [1] * len(labels), 3, 5)[0]] == [2, 5, 8]


def test_fill_after_an_emission_counts_fills_from_before_it():
    labels = [1, 1, X, X, X, 2, X, X, X, X, X, X, 3, 3]
    # window 2 stride 4: emits at 1, 3 (filled 2-3), 5, 7 (filled 6-7), 9 (filled 8-9); frame 10
    # is the 5th fill after 5 and completes no window; 11 (6th) resets; 12-13 emit at 13.
    check(labels, None, 2, 4, ends=[1, 3, 5, 7, 9, 13],
          filled={2: 1, 3: 1, 4: 1, **{f: 5 for f in range(6, 11)}}, outside=[11])


def test_video_shorter_than_the_window_has_no_window():
    check([1, 2, 3], None, 4, 2, ends=[])
    check([], None, 4, 2, ends=[])
    assert len(grid_windows(np.array([1, 2, 3]), np.ones(3, bool), 4, 2)) == 0


def test_issue_example_300_frames():
    frames = np.arange(300)
    labels = (frames // 40) % 8
    labels[100:160] = X            # the 60-frame unlabelled gap: 100-104 filled from 99, 105 resets
    face = np.ones(300, bool)
    face[200:220] = False          # 20 no-face frames: 200-204 filled from 199, 205 resets, so the
                                   # sequence 160-204 (45 frames) never reaches 60; 220 starts anew
    ref = check(labels, face, 60, 15, ends=[59, 74, 89, 104, 279, 294],
                filled={**{f: 99 for f in range(100, 105)}, **{f: 199 for f in range(200, 205)}},
                outside=[*range(105, 160), *range(205, 220)])
    assert ref.targets.tolist() == [1, 1, 2, 2, 6, 7]
    grid = grid_windows(labels, face, 60, 15)
    assert grid.ends.tolist() == [59, 74, 89, 164, 179, 194, 224, 239, 254, 269, 284, 299]
    assert grid.source.tolist() == frames.tolist() and grid.targets.tolist() == labels[grid.ends].tolist()
    valid = (labels != X) & face
    assert sum(not valid[e - 59:e + 1].all() for e in grid.ends) == 7   # the issue's "seven of them"


def random_video(rng, n, max_gap=12, max_run=15):
    """Labels with runs of valid frames (0..max_run) and of invalid ones (1..max_gap) that are
    unlabelled, without a face, or both mixed."""
    labels = rng.integers(0, 8, n)
    face = np.ones(n, bool)
    t = 0
    while t < n:
        t += int(rng.integers(0, max_run + 1))               # valid run
        gap = int(rng.integers(1, max_gap + 1))
        kind = rng.integers(3)                               # unlabelled, no face, or both mixed
        if kind != 1:
            labels[t:t + gap] = X
        if kind != 0:
            face[t:t + gap] = rng.random(min(gap, max(n - t, 0))) < 0.5 if kind == 2 else False
        t += gap
    return labels, face


def assert_same_as_the_authors(labels, face, window, stride) -> list:
    """reference_windows == the literal loop in window ends, targets, every frame's source and
    each window's element sources; -> the loop's windows."""
    windows, source = authors_loop(labels.tolist(), face.tolist(), window, stride)
    got = reference_windows(labels, face, window, stride)
    case = f"labels {labels.tolist()} face {face.astype(int).tolist()} window {window} stride {stride}"
    assert got.ends.tolist() == [w[-1][0] for w in windows], case
    assert got.targets.tolist() == [int(labels[w[-1][1]]) for w in windows], case
    assert got.source.tolist() == source, case
    for w in windows:  # the observation the vectorised rule rests on: own frames contiguous
        end = w[-1][0]
        assert [own for own, _ in w] == list(range(end - window + 1, end + 1)), case
        assert [src for _, src in w] == got.source[end - window + 1:end + 1].tolist(), case
    return windows


def test_matches_the_literal_loop_on_small_random_videos():
    rng = np.random.default_rng(0)
    n_windows = 0
    for _ in range(1500):
        labels, face = random_video(rng, int(rng.integers(0, 120)))
        n_windows += len(assert_same_as_the_authors(labels, face, int(rng.integers(1, 13)), int(rng.integers(1, 16))))
    assert n_windows > 5000  # the sequences do produce windows, with and without fills


def test_differential_against_the_authors_loop():
    """Issue 19: thousands of seeded videos of 0-400 frames with invalid runs of 1-12 frames,
    window 1-90, stride 1-120; 0 mismatches. Counts show the risky cases do occur."""
    rng = np.random.default_rng(19)
    cases = windows = emptying = fill_after_emptying = 0
    for _ in range(3000):
        labels, face = random_video(rng, int(rng.integers(0, 401)), max_run=int(rng.choice([15, 60, 200])))
        window = int(rng.integers(1, 91)) if rng.random() < 0.5 else int(rng.integers(1, 13))
        stride = int(rng.integers(1, 121)) if rng.random() < 0.5 else int(rng.integers(1, 16))
        found = assert_same_as_the_authors(labels, face, window, stride)
        cases, windows = cases + 1, windows + len(found)
        if stride >= window and found:
            emptying += 1
            ends = {w[-1][0] for w in found}
            valid = (labels != X) & face
            fill_after_emptying += any(e + 1 < len(labels) and not valid[e + 1] for e in ends)
    assert cases == 3000 and windows > 20000
    assert emptying > 500 and fill_after_emptying > 200   # the path issue 19 found wrong


def test_grid_reproduces_bank_windows():
    rng = np.random.default_rng(1)
    videos = [random_video(rng, n) for n in (0, 3, 59, 60, 61, 200, 517)]
    labels = np.concatenate([v[0] for v in videos])
    face = np.concatenate([v[1] for v in videos])
    n = torch.tensor([len(v[0]) for v in videos])
    bank = FeatureBank(
        video_ids=[f"v{i}" for i in range(len(videos))], visual=torch.zeros(0, 1), audio=torch.zeros(1, 1),
        frame_offsets=torch.cumsum(n, 0) - n, audio_offsets=torch.zeros_like(n), n_frames=n,
        audio_steps=torch.zeros_like(n), fps=torch.full((len(n),), 30.0, dtype=torch.float64),
        timestamps=torch.zeros(len(labels), dtype=torch.float64), frame_mask=torch.from_numpy(face),
        labels=torch.from_numpy(labels))
    for window, stride in [(60, 15), (30, 15), (5, 7), (1, 1)]:
        old = bank_windows(bank, WindowSpec(window, stride, rule=WindowRule.grid))
        for v, (lab, fc) in enumerate(videos):
            new = grid_windows(lab, fc, window, stride)
            mine = old.video_idx == v
            assert new.ends.tolist() == old.end_frame[mine].tolist()
            assert new.targets.tolist() == old.target[mine].tolist()


def test_video_windows_dispatches_and_refuses_unknown_rules():
    labels, face = np.array([1, X, 2, 2, 2, 2]), np.ones(6, bool)
    assert video_windows("reference", labels, face, 3, 1).ends.tolist() == [2, 3, 4, 5]
    assert video_windows("grid", labels, face, 3, 1).ends.tolist() == [2, 3, 4, 5]
    assert video_windows("grid", labels, face, 2, 1).ends.tolist() == [2, 3, 4, 5]   # 1 unlabelled
    assert video_windows("reference", labels, face, 2, 1).ends.tolist() == [1, 2, 3, 4, 5]  # 1 filled
    with pytest.raises(ConfigError, match="reference, grid"):
        video_windows("sliding", labels, face, 3, 1)
    with pytest.raises(ValueError, match="one length"):
        video_windows("reference", labels, face[:5], 3, 1)
    with pytest.raises(ValueError, match=">= 1"):
        video_windows("grid", labels, face, 3, 0)
