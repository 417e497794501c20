"""The ABAW submission file: round trip, validation, atomic writes; `expr predict` end to end."""

import numpy as np
import pytest

from expr.errors import LabelFormatError
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
