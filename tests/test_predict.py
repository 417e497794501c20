"""The ABAW submission file: round trip, validation, atomic writes; `expr predict` end to end."""

import numpy as np
import pytest

from expr.core.errors import LabelFormatError
from report_helpers import trained_run
from expr.evaluate.submission import (
    HEADER,
    image_location,
    read_probabilities,
    read_submission,
    validate_submission,
    write_submission,
)


def _labels():
    rng = np.random.default_rng(0)
    return {"vid_a": rng.integers(0, 8, 12), "vid_b_left": rng.integers(0, 8, 3)}


def test_image_location_is_one_based_five_digits():
    assert image_location("v", 0) == "v/00001.jpg"
    assert image_location("v", 123455) == "v/123456.jpg"


def test_submission_round_trips(tmp_path):
    labels = _labels()
    rng = np.random.default_rng(1)
    probs = {v: rng.dirichlet(np.ones(8), len(l)).astype(np.float32) for v, l in labels.items()}
    out = tmp_path / "sub" / "predictions.csv"
    write_submission(out, labels, probabilities=probs, probs_path=tmp_path / "probs.csv")
    text = out.read_text().splitlines()
    assert text[0] == HEADER
    assert text[1] == f"vid_a/00001.jpg,{labels['vid_a'][0]}"
    assert len(text) == 1 + 12 + 3
    back = read_submission(out, {"vid_a": 12, "vid_b_left": 3})
    assert back.keys() == labels.keys()
    for v in labels:
        assert back[v].tolist() == labels[v].tolist()
        np.testing.assert_allclose(read_probabilities(tmp_path / "probs.csv")[v], probs[v], atol=1e-6)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "body, expected, message",
    [
        ("v/00001.jpg,0\nv/00002.jpg,8\n", None, "labels must be 0..7"),
        ("v/00001.jpg,0\nv/00003.jpg,1\n", None, "without gaps"),
        ("v/00001.jpg,x\n", None, "non-integer"),
        ("v/1.jpg,0\n", None, ":2: expected"),
        ("v/00001.jpg,0,1\n", None, ":2: expected"),
        ("", None, "no prediction rows"),
        ("v/00001.jpg,0\n", {"v": 2}, "has 1 rows but 2 frames"),
        ("v/00001.jpg,0\n", {"v": 1, "w": 4}, "missing \\['w'\\]"),
    ],
)
def test_validator_rejects(tmp_path, body, expected, message):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + "\n" + body)
    with pytest.raises(LabelFormatError, match=message) as err:
        validate_submission(path, expected)
    assert "bad.csv" in str(err.value)


def test_validator_rejects_wrong_header(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image,label\nv/00001.jpg,0\n")
    with pytest.raises(LabelFormatError, match="bad.csv:1: header"):
        validate_submission(path)


def test_failed_validation_leaves_previous_file_untouched(tmp_path):
    out = tmp_path / "predictions.csv"
    write_submission(out, {"v": np.array([1, 2])})
    before = out.read_text()
    with pytest.raises(LabelFormatError):
        write_submission(out, {"v": np.array([1, 9])})  # label 9: invalid
    assert out.read_text() == before
    assert not list(tmp_path.glob(".*.tmp"))


# -- `expr predict` end to end -------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("predict"), dataset=dict(masked_frames_frac=0.2), window=12,
                       stride=6, epochs=1)


def _predict(ds, run_dir, out, *extra):
    from expr.app.cli import run

    return run(["predict", "--run", str(run_dir), "--cache", str(ds.cache), "--out", str(out),
                "--device", "cpu", *extra])


def test_predict_every_frame_of_every_cached_video(trained, tmp_path, capsys):
    from expr.cache_format import open_cache

    ds, run_dir = trained
    out, probs_path = tmp_path / "predictions.csv", tmp_path / "probs.csv"
    assert _predict(ds, run_dir, out, "--probs", str(probs_path)) == 0
    assert "validated" in capsys.readouterr().out
    with open_cache(ds.cache) as cache:
        n_frames = {v: cache.info(v).n_frames for v in cache.video_ids}
        masked = {v: int((~cache.frame_mask(v)).sum()) for v in cache.video_ids}
    assert sum(masked.values()) > 0  # frames without a face still get a row
    labels = read_submission(out, n_frames)
    probs = read_probabilities(probs_path, n_frames)
    assert labels.keys() == n_frames.keys()
    for vid, lab in labels.items():
        assert lab.tolist() == probs[vid].argmax(1).tolist()
    assert out.read_text().count("\n") == 1 + sum(n_frames.values())


def test_predict_listed_videos_with_smoothing(trained, tmp_path):
    ds, run_dir = trained
    ids = tmp_path / "ids.txt"
    ids.write_text("# test videos\nval_001\n\nval_000\n")
    out = tmp_path / "sub.csv"
    assert _predict(ds, run_dir, out, "--ids", str(ids), "--smooth", "5") == 0
    assert list(read_submission(out)) == ["val_001", "val_000"]  # the listed order


def test_predict_bad_input(trained, tmp_path, capsys):
    ds, run_dir = trained
    ids = tmp_path / "ids.txt"
    ids.write_text("val_000\nnot_extracted\n")
    assert _predict(ds, run_dir, tmp_path / "p.csv", "--ids", str(ids)) == 1
    err = capsys.readouterr().err
    assert "1 video(s) not in the cache (not_extracted)" in err and "ids.txt" in err
    assert not (tmp_path / "p.csv").exists()
    assert _predict(ds, run_dir, tmp_path / "p.csv", "--probs", str(tmp_path / "p.csv")) == 1
    assert "--probs must name another file" in capsys.readouterr().err
