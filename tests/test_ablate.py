"""The ablation grid parser, the table it writes, and `expr ablate` end to end."""

import pytest

from expr.errors import ConfigError
from expr.evaluate.grid import grid_cells, parse_grid


def test_parse_grid_and_cells():
    grid = parse_grid("window=30,60 fusion=bica,concat audio=on,off")
    assert grid == {"window": ["30", "60"], "fusion": ["bica", "concat"], "audio": ["on", "off"]}
    cells = grid_cells(grid)
    assert len(cells) == 8
    assert cells[0].name == "window=30__fusion=bica__audio=on"
    assert cells[-1].label == "window=60 fusion=concat audio=off"
    assert cells[1].overrides() == {"window": 30, "fusion": "bica", "no_audio": True}
    assert [c.is_paper() for c in cells] == [True, False, False, False, True, False, False, False]


def test_grid_maps_every_key():
    (cell,) = grid_cells(parse_grid("tcn=off contrastive=0 stride=30 target=center lr=1e-4"))
    assert cell.overrides() == {"no_tcn": True, "contrastive_weight": 0.0, "stride": 30,
                                "target": "center", "lr": 1e-4}
    assert not cell.is_paper()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "--grid is empty"),
        ("   ", "--grid is empty"),
        ("window", "is not key=v1,v2"),
        ("=30", "is not key=v1,v2"),
        ("windw=30", "key 'windw' is unknown; valid keys: window, stride"),
        ("window=30 window=60", "appears twice"),
        ("window=", "empty value"),
        ("window=30,,60", "empty value"),
        ("window=30,30", "repeats a value"),
        ("window=abc", "window='abc' is invalid"),
        ("window=0", "must be >= 1"),
        ("fusion=cross", "choose from bica, v2a, a2v, concat"),
        ("audio=yes", "choose from on, off"),
        ("contrastive=-1", "must be >= 0"),
    ],
)
def test_malformed_grid_is_a_clear_config_error(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        parse_grid(text)
    assert "\n" not in str(err.value)


def _result(cell, seed, f1):
    from expr.evaluate.ablation_table import CellResult

    return CellResult(cell=cell, seed=seed, frame_macro_f1=f1, frame_accuracy=f1 + 0.1,
                      window_macro_f1=f1 + 0.05, window_accuracy=0.5, best_epoch=1, seconds=2.0,
                      run_dir=f"cells/{cell.name}/seed{seed}")


def test_tables_sorted_mean_std_and_paper_mark(tmp_path):
    import csv

    from expr.evaluate.ablation_table import CellResult, summarise, write_tables

    cells = grid_cells(parse_grid("window=30,60 audio=on,off"))
    f1s = {0: (0.30, 0.40), 1: (0.10, 0.10), 2: (0.50, 0.70), 3: (0.20, 0.20)}
    results = [_result(c, 42 + s, f1s[i][s]) for i, c in enumerate(cells) for s in (0, 1)]
    assert CellResult.from_dict(results[0].to_dict()) == results[0]
    summaries = summarise(results)
    assert [s.cell.label for s in summaries] == [
        "window=60 audio=on", "window=30 audio=on", "window=60 audio=off", "window=30 audio=off"]
    assert summaries[0].mean["frame_macro_f1"] == pytest.approx(0.6)
    assert summaries[0].std["frame_macro_f1"] == pytest.approx(0.1414213, rel=1e-5)  # sample std
    paths = write_tables(tmp_path, results)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 8 and rows[0]["window"] == "30" and rows[0]["audio"] == "on"
    assert [r["paper"] for r in rows[::2]] == ["1", "0", "1", "0"]
    md = paths["md"].read_text().splitlines()
    table = [line for line in md if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 4
    assert table[0].startswith("| 1 | `window=60 audio=on` ★ | 0.6000 ± 0.1414 |")
    assert "★" not in table[2] and "★" in table[1]
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
