"""Submission CSVs quote what needs quoting and refuse formula ids; label files take ASCII
integers only and quote the offending line (issue 13, problems 7 and 8)."""

from __future__ import annotations

import numpy as np
import pytest

from expr.core.errors import LabelFormatError
from expr.evaluate.submission import HEADER, check_ids, read_probabilities, read_submission, write_submission
from expr.train_heads.labels import HEADER as LABEL_HEADER
from expr.train_heads.labels import read_label_file


def test_a_comma_or_quote_in_a_video_name_round_trips(tmp_path):
    labels = {"a,b": np.array([1, 2, 3]), 'say "hi"': np.array([7]), "plain_left": np.array([0, 0])}
    probs = {v: np.full((len(l), 8), 0.125, np.float32) for v, l in labels.items()}
    out = tmp_path / "predictions.csv"
    write_submission(out, labels, probabilities=probs, probs_path=tmp_path / "probs.csv")
    lines = out.read_text().splitlines()
    assert lines[0] == HEADER and lines[1] == '"a,b/00001.jpg",1' and lines[4] == '"say ""hi""/00001.jpg",7'
    back = read_submission(out, {v: len(l) for v, l in labels.items()})
    assert {v: x.tolist() for v, x in back.items()} == {v: x.tolist() for v, x in labels.items()}
    assert read_probabilities(tmp_path / "probs.csv").keys() == labels.keys()


@pytest.mark.parametrize("vid", ["=HYPERLINK(\"http://x\")", "+1", "-rf", "@SUM(A1)"])
def test_formula_ids_are_refused_before_anything_is_written(tmp_path, vid):
    with pytest.raises(LabelFormatError, match=r"start with one of = \+ - @: a spreadsheet would run"):
        check_ids(["ok", vid])
    with pytest.raises(LabelFormatError, match="rename those videos"):
        write_submission(tmp_path / "p.csv", {"ok": np.array([1]), vid: np.array([2])})
    assert list(tmp_path.iterdir()) == []


def test_abaw_ids_pass_the_check():
    check_ids(["10-60-1280x720", "video59_right", "1-30-1280x720_left", "a,b", "x=y"])


def test_a_malformed_quoted_line_is_quoted_as_written(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(HEADER + '\n"v/00001.jpg,0\n')
    with pytest.raises(LabelFormatError, match=r"bad.csv:2: expected .* found '\"v/00001.jpg,0'"):
        read_submission(path)


def write_labels(tmp_path, *lines: str):
    path = tmp_path / "v.txt"
    path.write_text(LABEL_HEADER + "\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("line", ["٣", "+3", "1_0", "\u00a03", "3.0", "0x3", "- 1", "3 4", "３"])
def test_only_ascii_integers_are_labels(tmp_path, line):
    path = write_labels(tmp_path, "0", line)
    with pytest.raises(LabelFormatError) as info:
        read_label_file(path)
    assert str(info.value) == f"{path}:3: {line!r} is not an integer; expected one of -1..7 per line"


def test_out_of_range_quotes_the_line_as_written(tmp_path):
    path = write_labels(tmp_path, "08")
    with pytest.raises(LabelFormatError, match=rf"{path}:2: label 8 is outside -1..7 \(the line reads '08'\)"):
        read_label_file(path)


def test_spaces_and_tabs_around_a_label_are_tolerated(tmp_path):
    assert read_label_file(write_labels(tmp_path, " 3", "-1\t", "\t7 ", "0")).tolist() == [3, -1, 7, 0]
