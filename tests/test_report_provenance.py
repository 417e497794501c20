"""Issue 21 items 1, 2 and 11 (min_lr): every report says where its numbers come from, shows
a banner when a backbone had random weights, and per-video and per-class figures mean something."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest

from expr.evaluate.class_scores import compute_metrics
from expr.evaluate.provenance import DEMO_CAVEAT, random_weights_banner, run_provenance
from expr.evaluate.report import ReportParts, render_report
from report_helpers import SPLIT, evaluated_run

PRETRAINED = {"visual": {"name": "clip-vit-b-32", "weights": "openai", "dim": 512, "resize": "bicubic",
                         "face_crop": "haar"},
              "audio": {"name": "wav2vec2-base-960h", "weights": "facebook/wav2vec2-base-960h", "dim": 768}}
RANDOM = {"visual": {**PRETRAINED["visual"], "weights": None}, "audio": PRETRAINED["audio"]}


class _Text(HTMLParser):
    def __init__(self, html: str):
        super().__init__()
        self.parts: list[str] = []
        self.feed(html)

    def handle_data(self, data):
        self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


def _config(backbones):
    return {"train": {"window": 60, "stride": 15, "target": "last", "windows": "reference"},
            "cache": {"path": "/data/feats.zarr", "fingerprint": "0123456789abcdef", "backbones": backbones},
            "provenance": {"started": "2026-01-02 03:04:05 UTC", "expr": "expr 0.3.0", "device": "cuda:0"}}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A real run trained and evaluated by the CLI (synthetic cache: weights null), with what
    `expr evaluate` printed."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        run_dir = evaluated_run(tmp_path_factory.mktemp("prov"), timelines=1)
    return run_dir, buf.getvalue()


def test_the_evaluate_report_has_the_random_banner_and_provenance(evaluated):
    from expr import __version__

    run_dir, _ = evaluated
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    text = _Text(html).text
    assert html.count('class="banner"') == 1
    assert "RANDOM BACKBONE WEIGHTS" in text and "Not a benchmark" in text
    assert text.index("RANDOM BACKBONE WEIGHTS") < text.index("Overview")  # first thing under the title
    assert 'id="provenance"' in html
    config = json.loads((run_dir / "config.json").read_text())
    ev = json.loads((run_dir / f"eval_{SPLIT}.json").read_text())
    assert f"written by expr {__version__}" in text
    assert "device trained on cpu; evaluated on cpu" in text
    assert "s over 2 epochs" in text
    assert f"fingerprint {config['cache']['fingerprint']}" in text
    assert "visual backbone synthetic · weights RANDOM (none) · face crop not recorded" in text
    assert "window rule reference rule · window 16 · stride 8 · target last" in text
    # what the report draws on is recorded in the run
    assert config["provenance"]["device"] == "cpu" and config["provenance"]["expr"].startswith("expr ")
    assert ev["device"] == "cpu" and ev["backbones"]["visual"]["weights"] is None and ev["evaluated_at"]


def test_evaluate_prints_the_banner_in_the_terminal(evaluated):
    _, printed = evaluated
    assert "RANDOM BACKBONE WEIGHTS" in " ".join(printed.split())


def test_no_banner_with_pretrained_weights():
    assert random_weights_banner(PRETRAINED) is None
    html = render_report(ReportParts(title="t", provenance=run_provenance(_config(PRETRAINED))))
    assert 'class="banner"' not in html and "RANDOM" not in html
    text = _Text(html).text
    assert "visual backbone clip-vit-b-32 · weights openai · resize bicubic · face crop haar · 512-d" in text
    assert "audio backbone wav2vec2-base-960h · weights facebook/wav2vec2-base-960h · 768-d" in text
    assert "trained 2026-01-02 03:04:05 UTC with expr 0.3.0" in text and "device trained on cuda:0" in text


def test_one_random_stream_is_named():
    banner = random_weights_banner(RANDOM)
    assert banner is not None
    assert banner.startswith("RANDOM BACKBONE WEIGHTS: the visual (clip-vit-b-32) features")
    assert "audio" not in banner


def test_face_crop_of_the_evaluated_videos_is_shown():
    spec = {"visual": {"name": "clip", "weights": "openai", "dim": 512}}
    assert "face crop haar" in run_provenance(_config(spec), {"face_crop": ["haar"]})["visual backbone"]
    assert "face crop haar + none (MIXED)" in run_provenance(_config(spec), {"face_crop": ["haar", "none"]}
                                                             )["visual backbone"]


def test_no_face_counts_are_shown_when_evaluate_records_them():
    prov = run_provenance(_config(PRETRAINED), {"no_face": {"frames": 12, "filled": 10}})
    assert prov["frames without a face"] == '{"filled": 10, "frames": 12}'
    assert "frames without a face" not in run_provenance(_config(PRETRAINED), {})


def test_the_demo_caveat_is_a_banner(evaluated, tmp_path):
    from expr.evaluate.report_sources import report_from_run

    run_dir, _ = evaluated
    text = _Text(report_from_run(run_dir, SPLIT, tmp_path / "r.html", caveats=[DEMO_CAVEAT])
                 .read_text(encoding="utf-8")).text
    assert "Demo, not a benchmark" in text and "RANDOM BACKBONE WEIGHTS" in text


def test_the_ablation_report_has_banner_and_provenance(tmp_path):
    from expr.evaluate.ablation_table import CellResult
    from expr.evaluate.grid import grid_cells, parse_grid
    from expr.evaluate.report_sources import ablation_parts

    for k, cell in enumerate(grid_cells(parse_grid("window=8,16"))):
        folder = tmp_path / "cells" / cell.name / "seed42"
        folder.mkdir(parents=True)
        result = CellResult(cell=cell, seed=42, frame_macro_f1=0.3, frame_accuracy=0.4, window_macro_f1=0.3,
                            window_accuracy=0.4, best_epoch=1, seconds=2.5 + k, run_dir=f"cells/{cell.name}/seed42")
        (folder / "result.json").write_text(json.dumps({"train": {"lr": 1e-3}, "result": result.to_dict()}))
        (folder / "config.json").write_text(json.dumps(_config(RANDOM)))
    html = render_report(ablation_parts(tmp_path))
    text = _Text(html).text
    assert "RANDOM BACKBONE WEIGHTS: the visual (clip-vit-b-32) features" in text
    assert "training time 6.0 s over 2 (cell, seed) runs" in text
    assert "fingerprint 0123456789abcdef" in text


def test_zero_support_classes_are_marked_and_said_to_count_as_zero():
    y = np.array([0] * 30 + [4] * 20)
    block = {**compute_metrics(y, y).to_dict()}
    html = render_report(ReportParts(title="t", protocols={"per_frame": block}))
    text = _Text(html).text
    assert html.count('class="zero-support"') == 6  # every class but Neutral and Happiness
    assert "counts as 0 in the 8-class macro-F1" in text
    assert "cannot exceed 0.250" in text
    assert f"{block['macro_f1']:.4f}" == "0.2500"
    full = render_report(ReportParts(title="t", protocols={"per_frame": compute_metrics(np.arange(80) % 8,
                                                                                        np.arange(80) % 8).to_dict()}))
    assert "zero-support" not in full and "counts as 0" not in full


def test_per_video_figures_mean_something_on_a_one_class_video():
    from expr.evaluate.video_outputs import VideoPrediction, worst_videos

    t = 40
    probs = np.full((t, 8), 0.01, np.float32)
    probs[:, 3] = 0.93
    perfect = VideoPrediction("perfect", np.arange(t) / 25, np.ones(t, bool), probs, np.full(t, 3))
    half_truth = np.where(np.arange(t) < 20, 3, 5)
    half = VideoPrediction("half", np.arange(t) / 25, np.ones(t, bool), probs, half_truth)
    # the 8-class figure the old title showed (VideoPrediction.macro_f1, gone: nothing else used it)
    assert compute_metrics(perfect.truth, perfect.predicted).macro_f1 == pytest.approx(1 / 8)
    assert perfect.accuracy() == 1.0 and perfect.present_macro_f1() == (1.0, 1)
    assert perfect.score_text() == "per-frame accuracy 1.000 · macro-F1 over the 1 class present 1.000"
    assert [(v.video_id, acc) for v, acc in worst_videos([perfect, half], 2)] == [("half", 0.5), ("perfect", 1.0)]
    assert half.score_text().startswith("per-frame accuracy 0.500 · macro-F1 over the 2 classes present")


def test_min_lr_and_floats_print_without_binary_noise():
    from expr.app.demo import DemoConfig, min_lr, train_config
    from expr.evaluate.report import _value

    assert 3e-4 / 10 != 3e-05
    assert min_lr(3e-4) == 3e-05
    assert train_config(DemoConfig(), __import__("pathlib").Path("labels")).min_lr == 3e-05
    assert _value(3e-4 / 10) == "3e-05" and _value(1e-5) == "1e-05" and _value(0.1) == "0.1"


def test_readme_says_what_its_pictures_and_timings_are():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    hero = readme[readme.index("## What you get"):readme.index("## What you get") + 600]
    assert "synthetic" in hero and "no benchmark" in hero  # the hero timeline is synthetic data
    demo = readme[readme.index("`expr demo` runs end to end"):][:300]
    assert "2-core" in demo and "idle" in demo and "190-629 s" in demo


def test_the_terminal_class_table_marks_zero_support(capsys):
    from rich.console import Console

    from expr.app.commands.evaluate import print_protocol

    y = np.array([0] * 30 + [4] * 20)
    print_protocol(Console(width=120), "per-frame", compute_metrics(y, y))
    out = capsys.readouterr().out
    assert "Anger †" in out and "Neutral †" not in out
    assert "6 class(es) with 0 support: F1 0, counted as 0 in the 8-class macro-F1 (at most 0.250 here)" in out
