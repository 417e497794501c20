"""The ablation grid parser, the table it writes, and `expr ablate` end to end."""

import pytest

from expr.core.errors import ConfigError
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


# -- `expr ablate` end to end --------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from expr.train_heads import write_synthetic_dataset

    root = tmp_path_factory.mktemp("ablate")
    return write_synthetic_dataset(root, n_train=3, n_val=2, n_frames=(60, 90), visual_dim=32, audio_dim=16,
                                   text_dim=16)


def _ablate(ds, out, *extra):
    from expr.app.cli import run

    return run(["ablate", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(out),
                "--epochs", "1", "--channels", "16", "--tcn-levels", "2", "--heads", "2", "--lr", "1e-3",
                "--batch-size", "16", "--device", "cpu", *extra])


def test_ablate_rows_resume_and_seeds(dataset, tmp_path, monkeypatch, capsys):
    import csv

    import torch

    import expr.train_heads as data  # ablation reaches load_bank through the public interface

    torch.set_num_threads(1)
    loads = []
    real_load_bank = data.load_bank
    monkeypatch.setattr(data, "load_bank", lambda *a, **k: loads.append(a[1]) or real_load_bank(*a, **k))
    out = tmp_path / "abl"
    grid = "window=8,12 fusion=bica,concat audio=on,off"
    assert _ablate(dataset, out, "--grid", grid) == 0
    assert loads == [dataset.train_ids, dataset.val_ids]  # the cache is read once for all 8 cells
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert len(rows) == 8
    assert {(r["window"], r["fusion"], r["audio"]) for r in rows} == {
        (w, f, a) for w in ("8", "12") for f in ("bica", "concat") for a in ("on", "off")}
    assert all(0 <= float(r["frame_macro_f1"]) <= 1 for r in rows)
    assert sum(1 for line in (out / "ablation.md").read_text().splitlines() if line.startswith("| ") and
               line[2].isdigit()) == 8
    assert (out / "ablation.png").is_file()
    results = sorted((out / "cells").rglob("result.json"))
    assert len(results) == 8
    stamp = {p: p.stat().st_mtime_ns for p in results}
    capsys.readouterr()

    # re-run: every cell is skipped, nothing is loaded or trained, same table
    loads.clear()
    assert _ablate(dataset, out, "--grid", grid) == 0
    assert loads == [] and "0 trained, 8 already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in results} == stamp
    assert len(list(csv.DictReader((out / "ablation.csv").open()))) == 8

    # a second seed: only the new (cell, seed) pairs train; the table shows mean ± std
    assert _ablate(dataset, out, "--grid", "window=8,12") == 0
    assert "2 trained, 0 already done" in capsys.readouterr().out  # window-only cells are new cells
    assert _ablate(dataset, out, "--grid", "window=8,12", "--seeds", "2") == 0
    assert "2 trained, 2 already done" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "ablation.csv").open()))
    assert len(rows) == 4 and sorted(r["seed"] for r in rows) == ["42", "42", "43", "43"]
    assert "±" in (out / "ablation.md").read_text()


def test_ablate_retrains_a_cell_whose_options_changed(dataset, tmp_path, capsys):
    out = tmp_path / "abl"
    assert _ablate(dataset, out, "--grid", "window=8") == 0
    assert _ablate(dataset, out, "--grid", "window=8", "--lr", "2e-3") == 0
    printed = capsys.readouterr().out
    assert "1 trained, 0 already done" in printed.split("✓")[-1]
    # report.html: written by every ablate, says where it is, shows the cell with the options now used
    assert f"report: {out / 'report.html'}" in " ".join(printed.split())
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<title>Ablation: window=8</title>" in html and "window=8" in html and "0.002" in html


def test_ablate_bad_grid_is_one_line(dataset, tmp_path, capsys):
    assert _ablate(dataset, tmp_path / "abl", "--grid", "window=30 fuson=bica") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "'fuson' is unknown" in err and len(err.splitlines()) <= 2
    assert not (tmp_path / "abl").exists()


def _files(cell_dir):
    return sorted(p.name for p in cell_dir.iterdir() if p.is_file())


def test_ablate_keeps_only_the_checkpoints_asked_for(dataset, tmp_path, capsys):
    """Issue 21: --keep best (default) | last | all; no optimiser state once a cell is done."""
    out = tmp_path / "abl"
    assert _ablate(dataset, out, "--grid", "window=8") == 0
    cell = out / "cells" / "window=8" / "seed42"
    kept = _files(cell)
    assert "best.safetensors" in kept and "result.json" in kept and "config.json" in kept
    assert not {"last.safetensors", "last.optim.safetensors", "last.state.json"} & set(kept)
    assert "MB of checkpoints deleted" in capsys.readouterr().out

    out_all = tmp_path / "abl_all"
    assert _ablate(dataset, out_all, "--grid", "window=8", "--keep", "all") == 0
    cell_all = out_all / "cells" / "window=8" / "seed42"
    assert {"best.safetensors", "last.safetensors", "last.optim.safetensors", "last.state.json"} <= set(
        _files(cell_all))
    # a re-run with --keep last prunes the finished cell without retraining it
    capsys.readouterr()
    assert _ablate(dataset, out_all, "--grid", "window=8", "--keep", "last") == 0
    assert "0 trained, 1 already done" in capsys.readouterr().out
    kept = set(_files(cell_all))
    assert "last.safetensors" in kept
    assert not {"best.safetensors", "last.optim.safetensors", "last.state.json"} & kept
    from expr.train_heads import load_run

    assert load_run(cell_all, "last").meta["epoch"] == 1  # what is kept still loads


def test_ablate_keep_is_checked(dataset, tmp_path, capsys):
    assert _ablate(dataset, tmp_path / "abl", "--grid", "window=8", "--keep", "none") == 2
    assert "none" in capsys.readouterr().err
