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
