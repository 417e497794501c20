"""Issue 10 wired: `expr train` / `expr evaluate` / `expr ablate` on the authors' reference
windows by default, `--windows grid` for v0.1's, and the batch a filled frame gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cache_helpers import backbones
from expr.cache_format import VideoEntry, open_cache, open_writer
from expr.app.cli import run
from expr.train_heads import (WindowRule, load_bank, load_split, bank_windows, WindowSpec, read_metrics, with_sources,
                              write_synthetic_dataset)
from expr.train_heads.data import gather
from expr.train_heads.windows import video_windows
from window_oracle import authors_loop

SMALL = ["--window", "16", "--stride", "4", "--epochs", "1", "--channels", "16", "--tcn-levels", "2",
         "--heads", "2", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """Synthetic cache + ABAW labels with gaps: -1 onsets of ~0.5 s (resets), scattered -1 and
    no-face frames (fills), and in one video -1 runs of exactly 5 and 6 frames."""
    ds = write_synthetic_dataset(tmp_path_factory.mktemp("refwin"), n_train=4, n_val=2, n_frames=(150, 250),
                                 visual_dim=32, audio_dim=16, text_dim=16, masked_frames_frac=0.1)
    path = ds.labels / "Train_Set" / f"{ds.train_ids[0]}.txt"
    lines = path.read_text().splitlines()
    for frame in [*range(40, 45), *range(80, 86)]:  # line 1 is the header
        lines[1 + frame] = "-1"
    path.write_text("\n".join(lines) + "\n")
    return ds


def _expected(ds, split: str, rule: str, window=16, stride=4) -> dict[str, tuple[list, list]]:
    """video -> (ends, targets) on the label file and the cache's mask: the authors' loop
    (tests/window_oracle.py) for reference windows, windows.video_windows for grid ones."""
    out = {}
    with open_cache(ds.cache) as cache:
        for vid, labels in load_split(ds.labels, split).items():
            face = cache.frame_mask(vid)[:len(labels)]
            if rule == "reference":
                found, _ = authors_loop(labels.tolist(), face.tolist(), window, stride)
                out[vid] = ([w[-1][0] for w in found], [int(labels[w[-1][1]]) for w in found])
            else:
                w = video_windows(rule, labels, face, window, stride)
                out[vid] = (w.ends.tolist(), w.targets.tolist())
    return out


def _train_cli(ds, out: Path, *extra) -> list[dict]:
    assert run(["train", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(out), *SMALL,
                *extra]) == 0
    return read_metrics(out)


def _count(expected) -> int:
    return sum(len(ends) for ends, _ in expected.values())


def test_train_uses_the_reference_windows_by_default(ds, tmp_path):
    ref_train, ref_val = _expected(ds, "Train_Set", "reference"), _expected(ds, "Validation_Set", "reference")
    grid_train = _expected(ds, "Train_Set", "grid")
    assert _count(ref_train) != _count(grid_train)  # the gaps do change the set
    (record,) = _train_cli(ds, tmp_path / "ref")
    assert (record["train_windows"], record["val_windows"]) == (_count(ref_train), _count(ref_val))
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert config["train"]["windows"] == "reference"
    assert config["data"]["train_windows"] == _count(ref_train)
    # the same windows, one by one, as the bank-wide bank_windows builds them for training
    labels = load_split(ds.labels, "Train_Set")
    bank = load_bank(ds.cache, list(labels), labels, features=False)
    wins = bank_windows(bank, WindowSpec(16, 4))
    for v, vid in enumerate(bank.video_ids):
        mine = wins.video_idx == v
        assert (wins.end_frame[mine].tolist(), wins.target[mine].tolist()) == ref_train[vid]
    # the cache's whole backbones record (checkpoint, resize, ...) is in the run's config
    with open_cache(ds.cache) as cache:
        assert config["cache"]["backbones"] == json.loads(json.dumps(cache.backbones.to_dict()))
    assert config["cache"]["backbones"]["audio"]["name"] == "synthetic"


def test_metrics_window_counts_equal_the_authors_loop_when_emissions_empty_the_sequence(ds, tmp_path):
    """Issue 19: stride >= window empties the sequence at every emission; a frame right after
    it is still filled. metrics.jsonl counts what the authors' loop counts."""
    window, stride = 8, 10
    train, val = (_expected(ds, split, "reference", window, stride) for split in ("Train_Set", "Validation_Set"))
    labels = load_split(ds.labels, "Train_Set")
    with open_cache(ds.cache) as cache:
        starts_filled = sum(w[0][0] != w[0][1] for vid, lab in labels.items()
                            for w in authors_loop(lab.tolist(), cache.frame_mask(vid)[:len(lab)].tolist(),
                                                  window, stride)[0])
    assert starts_filled > 0  # the case the earlier rule dropped does occur in this data
    small = [*SMALL[4:]]      # SMALL without its --window/--stride
    assert run(["train", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(tmp_path / "r"),
                "--window", str(window), "--stride", str(stride), *small]) == 0
    (record,) = read_metrics(tmp_path / "r")
    assert (record["train_windows"], record["val_windows"]) == (_count(train), _count(val))


def test_train_grid_gives_the_v01_windows(ds, tmp_path):
    (record,) = _train_cli(ds, tmp_path / "grid", "--windows", "grid")
    assert record["train_windows"] == _count(_expected(ds, "Train_Set", "grid"))
    assert record["val_windows"] == _count(_expected(ds, "Validation_Set", "grid"))
    assert json.loads((tmp_path / "grid" / "config.json").read_text())["train"]["windows"] == "grid"


def test_unknown_rule_is_refused(ds, tmp_path, capsys):
    assert run(["train", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(tmp_path / "x"),
                "--windows", "sliding"]) == 2
    assert "sliding" in capsys.readouterr().err


# -- the batch of a filled frame --------------------------------------------------------------

@pytest.fixture(scope="module")
def index_bank(tmp_path_factory):
    """One 25 fps video whose every visual row and audio step holds its own index; label of
    frame t is t % 8, unlabelled at 43-44, no face at 70; nothing else invalid."""
    from expr.train_heads.synthetic import audio_steps_for

    path = tmp_path_factory.mktemp("idx") / "feats.zarr"
    writer = open_writer(path, backbones=backbones(2, 2), text_embeddings=np.eye(8, 2, dtype=np.float32), logit_scale=100.0)
    T, fps = 100, 25.0
    S = audio_steps_for(T / fps)
    mask = np.ones(T, bool)
    mask[70] = False
    writer.write_video("v", VideoEntry(visual=np.repeat(np.arange(T, dtype=np.float16)[:, None], 2, axis=1),
                                       audio=np.repeat(np.arange(S, dtype=np.float16)[:, None], 2, axis=1),
                                       frame_mask=mask, timestamps=np.arange(T) / fps, fps=fps, duration=T / fps,
                                       source="v.mp4", source_size=0, source_mtime=0.0))
    labels = np.arange(T) % 8
    labels[43:45] = -1
    return load_bank(path, ["v"], {"v": labels})


def test_gather_shows_a_filled_frame_its_source_and_keeps_own_audio(index_bank):
    wins = bank_windows(index_bank, WindowSpec(10, 5))
    assert 49 in wins.end_frame.tolist() and 74 in wins.end_frame.tolist()
    view = with_sources(index_bank, wins)
    ends = torch.tensor([49, 74])
    filled, plain = gather(view, torch.zeros(2, dtype=torch.long), ends, 10), \
        gather(index_bank, torch.zeros(2, dtype=torch.long), ends, 10)
    # frames 40..49 with 43, 44 showing 42; frames 65..74 with 70 showing 69
    assert filled.visual[0, :, 0].tolist() == [40, 41, 42, 42, 42, 45, 46, 47, 48, 49]
    assert filled.visual[1, :, 0].tolist() == [65, 66, 67, 68, 69, 69, 71, 72, 73, 74]
    assert torch.equal(filled.audio, plain.audio) and torch.equal(filled.audio_mask, plain.audio_mask)
    # the plain bank (per-frame inference) shows every frame its own features
    assert plain.visual[0, :, 0].tolist() == list(range(40, 50))
    assert with_sources(index_bank, bank_windows(index_bank, WindowSpec(10, 5, rule=WindowRule.grid))) is index_bank


@pytest.mark.parametrize("target, expected", [("last", 49 % 8), ("center", 42 % 8), ("majority", 42 % 8)])
def test_targets_read_labels_through_the_source_rows(index_bank, target, expected):
    # window 40..49: centre frame 44 is unlabelled (its source, 42, is class 2); via the sources
    # class 2 occurs 3 times, by own labels classes 0 and 1 occur twice and 2 once.
    wins = bank_windows(index_bank, WindowSpec(10, 5, target))
    assert wins.target[wins.end_frame == 49].tolist() == [expected]
    grid = bank_windows(index_bank, WindowSpec(10, 5, target, rule=WindowRule.grid))
    if target == "center":
        assert 49 not in grid.end_frame.tolist()  # own centre frame unlabelled: no target on the grid
    if target == "majority":
        assert grid.target[grid.end_frame == 49].tolist() == [0]


# -- evaluate and ablate --------------------------------------------------------------------

def _evaluate(ds, run_dir, *extra) -> dict:
    assert run(["evaluate", "--run", str(run_dir), "--cache", str(ds.cache), "--labels", str(ds.labels),
                "--device", "cpu", *extra]) == 0
    return json.loads((run_dir / "eval_Validation_Set.json").read_text())["protocols"]["window"]


def test_evaluate_scores_the_runs_own_rule_unless_told(ds, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (record,) = _train_cli(ds, run_dir)
    grid_n = _count(_expected(ds, "Validation_Set", "grid"))
    own = _evaluate(ds, run_dir)
    assert (own["windows"], own["n"]) == ("reference", record["val_windows"])
    assert own["macro_f1"] == pytest.approx(record["val_f1"], abs=1e-6)
    told = _evaluate(ds, run_dir, "--windows", "grid")
    assert (told["windows"], told["n"]) == ("grid", grid_n)
    # a v0.1 run's config.json has no "windows": it was trained (and selected) on grid windows
    config = json.loads((run_dir / "config.json").read_text())
    del config["train"]["windows"]
    (run_dir / "config.json").write_text(json.dumps(config))
    old = _evaluate(ds, run_dir)
    assert (old["windows"], old["n"]) == ("grid", grid_n)
    # ... and resuming it with today's default would change its windows
    capsys.readouterr()
    assert run(["train", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(run_dir), *SMALL,
                "--resume"]) == 1
    assert "--windows grid (now reference)" in capsys.readouterr().err


def test_ablate_windows_option_and_grid_key(tmp_path):
    from expr.evaluate import AblateConfig
    from expr.evaluate.ablation import _train_config
    from expr.evaluate.grid import grid_cells, parse_grid

    cells = grid_cells(parse_grid("windows=reference,grid"))
    assert [c.overrides() for c in cells] == [{"windows": "reference"}, {"windows": "grid"}]
    assert [c.is_paper() for c in cells] == [True, False]
    cfg = AblateConfig(cache=tmp_path, labels=tmp_path, grid="window=30", out=tmp_path, windows=WindowRule.grid)
    (cell,) = grid_cells(parse_grid("window=30"))
    assert _train_config(cfg, cell, 42).windows == "grid"
    assert _train_config(cfg, cells[0], 42).windows == "reference"  # the grid key wins
