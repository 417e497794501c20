"""`expr demo`: its settings fit the real commands; end to end on the CREMA-D clips (slow)."""

from __future__ import annotations

import inspect
import json

import pytest

from expr.app.demo import DemoConfig, evaluate_config, extract_options, train_config
from expr.core.errors import ConfigError
from expr.extract.config import ExtractConfig


def test_demo_settings_are_valid_stage_configs(tmp_path):
    cfg = DemoConfig(out=tmp_path).validate()
    for random in (False, True):
        ext = extract_options(cfg, tmp_path / "videos", random_weights=random)
        ExtractConfig(**ext).validate()  # unknown or missing fields raise TypeError
        assert (ext.get("visual_weights"), ext.get("audio_weights")) == (("none", "none") if random else (None, None))
    tr = train_config(cfg, tmp_path / "labels")
    tr.validate()
    assert tr.window == 16 and tr.out == tmp_path / "run" and tr.cache == tmp_path / "feats.zarr"
    ev = evaluate_config(cfg, tmp_path / "labels", timelines=6)
    ev.validate()
    assert (ev.run, ev.cache, ev.split, ev.timelines) == (tr.out, tr.cache, "Validation_Set", 6)


def test_demo_command_options_are_the_config_fields():
    import dataclasses

    from expr.app.commands.demo import demo

    assert set(inspect.signature(demo).parameters) == {f.name for f in dataclasses.fields(DemoConfig)}


@pytest.mark.parametrize("field, value", [("weights", "maybe"), ("window", 60), ("window", 1), ("epochs", 0)])
def test_demo_config_refuses_what_cannot_work(field, value):
    with pytest.raises(ConfigError, match=f"--{field}"):
        DemoConfig(**{field: value}).validate()


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    from expr.app.cli import run

    from expr.evaluate import ReportDir
    from expr.train_heads import RunDir

    assert run(["demo", "--out", str(tmp_path / "demo"), "--weights", "random", "--epochs", "3"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "CREMA-D" in out and "per-frame" in out and "demo stage timings" in out
    run_dir, reports = RunDir(tmp_path / "demo" / "run"), ReportDir(tmp_path / "demo" / "run")
    report = json.loads(reports.eval_report("Validation_Set").read_text())
    assert report["protocols"]["per_frame"]["n"] > 100
    assert reports.confusion_png("Validation_Set", "per_frame").is_file()
    # a timeline per clip, all in report.html, whose path is printed
    assert len(list(reports.timelines("Validation_Set").glob("*.png"))) == 6
    assert str(reports.report) in out
    html = reports.report.read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 2 + 1 + 6
    # issue 21: random weights and the demo caveat are banners of the report, and said in the terminal
    assert "RANDOM BACKBONE WEIGHTS" in html and "Demo, not a benchmark" in html and 'id="provenance"' in html
    assert "Demo, not a benchmark" in out
    assert json.loads(run_dir.config.read_text())["train"]["min_lr"] == 3e-05
