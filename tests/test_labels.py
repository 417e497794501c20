"""ABAW EXPR label parsing: tolerated variants, every malformed case, split loading."""

from __future__ import annotations

import numpy as np
import pytest

from expr.core.errors import LabelFormatError
from expr.train_heads.labels import HEADER, load_split, read_label_file, reconcile

GOOD = HEADER + "\n0\n-1\n7\n3\n"


def write(tmp_path, text, name="v.txt", raw: bytes | None = None):
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else text.encode("utf-8"))
    return path


def test_reads_labels_in_order(tmp_path):
    labels = read_label_file(write(tmp_path, GOOD))
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, -1, 7, 3]


@pytest.mark.parametrize("variant", ["crlf", "bom", "trailing_blank", "spaces_in_header", "no_final_newline"])
def test_tolerated_variants(tmp_path, variant):
    text = {
        "crlf": GOOD.replace("\n", "\r\n"),
        "bom": "\ufeff" + GOOD,
        "trailing_blank": GOOD + "\n\n",
        "spaces_in_header": HEADER.replace(",", ", ") + "\n0\n-1\n7\n3\n",
        "no_final_newline": GOOD.rstrip("\n"),
    }[variant]
    assert read_label_file(write(tmp_path, text)).tolist() == [0, -1, 7, 3]


@pytest.mark.parametrize(
    "text, where, says",
    [
        ("Neutral,Anger\n0\n", ":1:", "header"),
        ("AU1,AU2,AU4\n0\n", ":1:", "expected 'Neutral,Anger"),
        (HEADER + "\n0\n8\n", ":3:", "outside -1..7"),
        (HEADER + "\n0\n-2\n", ":3:", "outside -1..7"),
        (HEADER + "\n0\n1\n1.5\n", ":4:", "not an integer"),
        (HEADER + "\n0\nhappy\n", ":3:", "not an integer"),
        (HEADER + "\n0\n\n1\n", ":3:", "not an integer"),  # blank line inside the file
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, text, where, says):
    path = write(tmp_path, text)
    with pytest.raises(LabelFormatError) as err:
        read_label_file(path)
    assert f"{path}{where}" in str(err.value)
    assert says in str(err.value)


@pytest.mark.parametrize("text", ["", "\n\n", "\r\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(LabelFormatError, match="empty file") as err:
        read_label_file(path)
    assert str(path) in str(err.value)


def test_header_only(tmp_path):
    with pytest.raises(LabelFormatError, match="only a header"):
        read_label_file(write(tmp_path, HEADER + "\n"))


def test_not_utf8(tmp_path):
    with pytest.raises(LabelFormatError, match="not UTF-8"):
        read_label_file(write(tmp_path, "", raw=b"\xff\xfe\x00N\x00e"))


def test_load_split_abaw_layout(tmp_path):
    for split, ids in (("Train_Set", ["a", "b"]), ("Validation_Set", ["c"])):
        (tmp_path / split).mkdir()
        for vid in ids:
            write(tmp_path / split, GOOD, f"{vid}.txt")
    train = load_split(tmp_path, "Train_Set")
    assert list(train) == ["a", "b"]
    assert train["a"].tolist() == [0, -1, 7, 3]
    assert list(load_split(tmp_path, "Validation_Set")) == ["c"]


def test_load_split_abaw_nested_release_folder(tmp_path):
    folder = tmp_path / "EXPR_Recognition_Challenge" / "Train_Set"
    folder.mkdir(parents=True)
    write(folder, GOOD, "x.txt")
    assert list(load_split(tmp_path, "Train_Set")) == ["x"]


def test_load_split_flat_dir_with_id_list(tmp_path):
    for vid in ("a", "b", "c"):
        write(tmp_path, GOOD, f"{vid}.txt")
    ids = tmp_path / "train.lst"
    ids.write_text("# training videos\nc\n\na\n", encoding="utf-8")
    assert list(load_split(tmp_path, "Train_Set", ids)) == ["a", "c"]


def test_id_list_naming_a_missing_file(tmp_path):
    write(tmp_path, GOOD, "a.txt")
    ids = tmp_path / "train.lst"
    ids.write_text("a\nmissing_video\n", encoding="utf-8")
    with pytest.raises(LabelFormatError, match=r"train\.lst:2: no label file for video 'missing_video'"):
        load_split(tmp_path, "Train_Set", ids)


def test_flat_dir_without_list_says_what_to_do(tmp_path):
    write(tmp_path, GOOD, "a.txt")
    with pytest.raises(LabelFormatError, match="--train-list"):
        load_split(tmp_path, "Train_Set")


def test_bad_file_inside_split_is_named(tmp_path):
    (tmp_path / "Train_Set").mkdir()
    write(tmp_path / "Train_Set", GOOD, "a.txt")
    bad = write(tmp_path / "Train_Set", HEADER + "\n0\n9\n", "b.txt")
    with pytest.raises(LabelFormatError, match=f"{bad}:3:"):
        load_split(tmp_path, "Train_Set")


def test_reconcile_reports_both_directions():
    labels = {"a": np.zeros(3), "b": np.zeros(3), "z": np.zeros(3)}
    kept, no_cache, no_labels = reconcile(labels, ["a", "b", "c", "d"])
    assert list(kept) == ["a", "b"]
    assert no_cache == ["z"]
    assert no_labels == ["c", "d"]
