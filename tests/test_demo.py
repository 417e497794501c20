"""`expr demo`: its settings fit the real commands; end to end on the CREMA-D clips (slow)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from expr.commands.evaluate import evaluate as evaluate_cmd
from expr.commands.extract import extract as extract_cmd
from expr.commands.train import train as train_cmd
from expr.demo import DemoConfig, evaluate_options, extract_options, train_options
from expr.errors import ConfigError
from expr.extract.config import ExtractConfig
from expr.train_heads.config import TrainConfig


def _accepts(command, options: dict) -> None:
    params = inspect.signature(command).parameters
    unknown = set(options) - set(params)
    assert not unknown, f"{command.__name__} has no option(s) {unknown}"
    required = {n for n, p in params.items() if p.default is inspect.Parameter.empty}
    assert required <= set(options)


def test_demo_options_are_real_command_options(tmp_path):
    cfg = DemoConfig(out=tmp_path).validate()
    for random in (False, True):
        ext = extract_options(cfg, tmp_path / "videos", random_weights=random)
        _accepts(extract_cmd, ext)
        ExtractConfig(**ext).validate()
        assert (ext.get("visual_weights"), ext.get("audio_weights")) == (("none", "none") if random else (None, None))
    tr = train_options(cfg, tmp_path / "labels")
    _accepts(train_cmd, tr)
    TrainConfig(**tr).validate()
    assert tr["window"] == 16 and tr["out"] == tmp_path / "run" and tr["cache"] == tmp_path / "feats.zarr"
    _accepts(evaluate_cmd, evaluate_options(cfg, tmp_path / "labels"))


@pytest.mark.parametrize("field, value", [("weights", "maybe"), ("window", 60), ("window", 1), ("epochs", 0)])
def test_demo_config_refuses_what_cannot_work(field, value):
    with pytest.raises(ConfigError, match=f"--{field}"):
        DemoConfig(**{field: value}).validate()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    from expr.cli import run

    assert run(["demo", "--out", str(tmp_path / "demo"), "--weights", "random", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "CREMA-D" in out and "per-frame" in out and "demo stage timings" in out
    report = json.loads((tmp_path / "demo" / "run" / "eval_Validation_Set.json").read_text())
    assert report["protocols"]["per_frame"]["n"] > 100
    assert list((tmp_path / "demo" / "run").glob("confusion_*.png"))
