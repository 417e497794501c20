"""report.html: escaped text, embedded images only, optional parts left out, and the adapters
that read a real evaluated run and an ablation folder."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from expr.core.abaw import CLASS_NAMES
from expr.core.errors import ConfigError
from expr.evaluate.class_scores import compute_metrics
from expr.evaluate.report import AblationTable, ReportParts, write_report
from report_helpers import SPLIT, evaluated_run

HOSTILE = '<script>alert("x")</script> [/bold] & "quoted"'


class _Page(HTMLParser):
    """Tags, attributes, section ids and the visible text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.attrs, self.ids, self.text = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        self.ids += [v for k, v in attrs if k == "id"]

    def handle_data(self, data):
        self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(self.text)


def _protocols(seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, 400)
    pred = np.where(rng.random(400) < 0.6, y, rng.integers(0, 8, 400))
    return {"per_frame": {**compute_metrics(y, pred).to_dict(), "window": 30, "smooth": 0},
            "window": {**compute_metrics(y[::10], pred[::10]).to_dict(), "window": 30, "stride": 15}}


def test_every_user_string_is_escaped(tmp_path):
    tl = tmp_path / "tl"
    tl.mkdir()
    png = tl / '<script>alert(1)[bold]v "x".png'
    from expr.evaluate.timeline import plot_timeline

    plot_timeline(png, video_id=HOSTILE, times=np.arange(5) / 25, probs=np.full((5, 8), 1 / 8),
                  predicted=np.zeros(5, int))
    path = write_report(
        tmp_path / "report.html", title=HOSTILE, facts={"video": HOSTILE}, config={"train": {"out": HOSTILE}},
        warnings=[HOSTILE], timelines=[png], protocols=_protocols(),
        ablation=AblationTable(["setting", "f1"], [[HOSTILE, "0.5"]], note=HOSTILE),
    )
    text = path.read_text(encoding="utf-8")
    page = _Page(text)
    assert "script" not in page.tags  # the hostile tag never became markup
    assert "<script>" not in text and "</script>" not in text
    assert text.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; [/bold] &amp; &quot;quoted&quot;") >= 6
    assert page.visible.count(HOSTILE) >= 5  # title, h1, fact, config, warning, ablation cell + note
    assert "&lt;script&gt;alert(1)[bold]v &quot;x&quot;" in text  # the timeline's caption (file stem)
    assert page.ids.count("timelines") == 1 and page.ids.count("warnings") == 1


def test_images_are_embedded_and_nothing_is_loaded(tmp_path):
    protocols = _protocols()
    conf_png = tmp_path / "conf.png"
    from expr.evaluate.plots import save_confusion_png

    save_confusion_png(conf_png, protocols["per_frame"]["confusion"], title="per-frame")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"epoch": e, "loss": 2.0 / e, "ce": 1.5 / e, "val_f1": 0.1 * e,
                                           "val_acc": 0.12 * e, "best": True}) + "\n" for e in (1, 2, 3))
                       + '{"epoch": 4, "lo', encoding="utf-8")  # a torn last line (killed run)
    path = write_report(tmp_path / "r.html", title="t", protocols=protocols, metrics_jsonl=metrics,
                        confusions={"per_frame": conf_png})  # window: drawn from its counts
    text = path.read_text(encoding="utf-8")
    page = _Page(text)
    srcs = [v for tag, k, v in page.attrs if k == "src"]
    assert len(srcs) == 3 and all(tag == "img" for tag, k, _ in page.attrs if k == "src")
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    decoded = [base64.b64decode(s.split(",", 1)[1]) for s in srcs]
    assert decoded[0] == conf_png.read_bytes()
    assert all(d[:8] == b"\x89PNG\r\n\x1a\n" for d in decoded)
    assert all(v.startswith("#") for _, k, v in page.attrs if k == "href")  # in-page anchors only
    assert not {"script", "link", "iframe", "object"} & set(page.tags)
    assert "http" not in text.replace("http-equiv", "")
    assert "3 epochs" in page.visible and "epoch 3" in page.visible


def test_a_report_without_optional_parts_still_renders(tmp_path):
    protocols = _protocols()
    page = _Page(write_report(tmp_path / "r.html", title="only metrics", protocols=protocols)
                 .read_text(encoding="utf-8"))
    assert page.ids == ["overview", "metrics", "per-class", "confusion"]
    assert f"{protocols['per_frame']['macro_f1']:.4f}" in page.visible
    assert f"{protocols['window']['macro_f1']:.4f}" in page.visible
    assert all(name in page.visible for name in CLASS_NAMES)
    assert sum(1 for _, k, _v in page.attrs if k == "src") == 2  # both confusions drawn from counts
    bare = _Page(write_report(tmp_path / "bare.html", ReportParts(title="bare")).read_text(encoding="utf-8"))
    assert bare.ids == ["overview"] and "bare" in bare.visible


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return evaluated_run(tmp_path_factory.mktemp("report"))


def test_report_from_a_real_evaluated_run(run_dir, tmp_path):
    from expr.evaluate.report_sources import report_from_run

    ev = json.loads((run_dir / f"eval_{SPLIT}.json").read_text())
    path = report_from_run(run_dir, SPLIT, tmp_path / "report.html")
    page = _Page(path.read_text(encoding="utf-8"))
    # warnings: expr train's data warnings (this tiny set has fewer windows than one batch)
    assert page.ids == ["overview", "provenance", "metrics", "per-class", "confusion", "training", "timelines",
                        "warnings", "config"]
    assert "training: only " in page.visible and "fewer than one batch" in page.visible
    for key in ("per_frame", "window"):
        assert f"{ev['protocols'][key]['macro_f1']:.4f}" in page.visible
        assert f"{ev['protocols'][key]['accuracy']:.4f}" in page.visible
    srcs = [v for _, k, v in page.attrs if k == "src"]
    assert len(srcs) == 4  # 2 confusions + curves + 1 timeline
    assert base64.b64decode(srcs[0].split(",", 1)[1]) == (run_dir / f"confusion_{SPLIT}_per_frame.png").read_bytes()
    assert "val_000" in page.visible and "fingerprint" in page.visible  # timeline caption, config


def test_report_from_a_run_reads_its_metrics_once(run_dir, tmp_path, monkeypatch):
    # the provenance (training time) and the training curves come from one reading
    from expr.evaluate import curves
    from expr.evaluate.report_sources import report_from_run

    reads = []
    real = curves.read_metrics_jsonl
    monkeypatch.setattr(curves, "read_metrics_jsonl", lambda path: reads.append(path) or real(path))
    page = _Page(report_from_run(run_dir, SPLIT, tmp_path / "report.html").read_text(encoding="utf-8"))
    assert "training" in page.ids and len(reads) == 1


def test_report_from_run_without_an_evaluation_says_what_to_run(run_dir, tmp_path):
    from expr.evaluate.report_sources import report_from_run

    with pytest.raises(ConfigError, match="run 'expr evaluate --run .* --split Train_Set' first"):
        report_from_run(run_dir, "Train_Set", tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def _cell_result(out, cell, seed, f1, options):
    from expr.evaluate.ablation_table import CellResult

    result = CellResult(cell=cell, seed=seed, frame_macro_f1=f1, frame_accuracy=f1 + 0.1, window_macro_f1=f1 + 0.05,
                        window_accuracy=f1 + 0.2, best_epoch=1, seconds=1.0, run_dir=f"cells/{cell.name}/seed{seed}")
    folder = out / result.run_dir
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"train": options, "result": result.to_dict()}))
    return result


def test_report_from_an_ablation_folder(tmp_path):
    from expr.evaluate.ablation_table import write_tables
    from expr.evaluate.grid import grid_cells, parse_grid
    from expr.evaluate.report_sources import report_from_ablation

    cells = grid_cells(parse_grid("window=30,60 audio=on,off"))
    f1s = [0.30, 0.20, 0.20, 0.40]  # cells 2 and 3 tie: grid order must be kept
    results = [_cell_result(tmp_path, c, 42, f, {"window": c.values[0][1], "lr": 1e-5, "epochs": 30})
               for c, f in zip(cells, f1s)]
    write_tables(tmp_path, results, title="Ablation: window=30,60 audio=on,off")
    page = _Page(report_from_ablation(tmp_path, tmp_path / "report.html").read_text(encoding="utf-8"))
    assert page.ids == ["overview", "provenance", "ablation", "config"]
    text = page.visible
    order = [text.index(label) for label in ("window=60 audio=off", "window=30 audio=on ★",
                                             "window=30 audio=off", "window=60 audio=on")]
    assert order == sorted(order)
    assert "0.4000" in text and "0.4500" in text  # per-frame and window macro-F1 of the best cell
    assert "Ablation: window=30,60 audio=on,off" in text
    shared = text.split("Configuration")[-1]  # the section, not the nav link
    assert "lr" in shared and "epochs" in shared and "window" not in shared  # window varies: not shared
    assert sum(1 for _, k, _v in page.attrs if k == "src") == 1  # the chart
