"""One self-contained report.html for a run (``expr evaluate``) or an ablation (``expr ablate``).

Every image is embedded as a base64 data URI and the styling is one inline <style>: the file
can be mailed to a co-author or opened offline, and loads nothing from the network. No
JavaScript at all. Every string that comes from a user or the filesystem (video ids, paths,
config values, warnings) goes through ``html.escape``.

``write_report`` takes plain data (the shapes expr writes: the ``protocols`` block of
``eval_<split>.json``, a metrics.jsonl path, PNG paths); ``report_from_run`` and
``report_from_ablation`` in ``evaluate/report_sources.py`` read them from the folders.
"""

from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from expr.core.abaw import CLASS_NAMES
from expr.core.atomic import PNG_MAGIC, write_text
from expr.evaluate.palette import CLASS_COLOURS

# Display order and names of the two protocols (keys of eval_<split>.json's "protocols").
PROTOCOLS = {"per_frame": "per-frame (official ABAW)", "window": "window-level (paper's Table 1)"}
_SETTINGS = ("window", "stride", "target", "smooth", "smooth_mode", "unscored_frames")

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:19px;margin:36px 0 10px;border-bottom:2px solid #e4e7ec;padding-bottom:4px}
nav{font-size:13px;margin:4px 0 18px}nav a{margin-right:14px;color:#1f4e9c;text-decoration:none}
table{border-collapse:collapse;margin:8px 0 4px;font-size:14px}
th,td{padding:5px 12px;border-bottom:1px solid #e4e7ec;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
.key{font-size:28px;font-weight:700;color:#1f4e9c}.muted{color:#667;font-size:13px}
.cards{display:flex;gap:16px;flex-wrap:wrap}.card{border:1px solid #e4e7ec;border-radius:8px;padding:10px 16px;min-width:200px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
figure{margin:12px 0 22px}figure img{max-width:100%;border:1px solid #eef0f3}figcaption{font-size:13px;color:#556}
.pair{display:flex;gap:12px;flex-wrap:wrap}.pair figure{flex:1 1 460px}
.config{display:flex;gap:18px;flex-wrap:wrap;align-items:flex-start}.config h3{font-size:14px;margin:6px 0 2px}
.config table{font-size:12.5px}.config td{padding:2px 10px;word-break:break-all;max-width:420px}
td:first-child{white-space:nowrap}
.warn{background:#fff6e0;border-left:4px solid #f2b701;padding:6px 12px;margin:4px 0}
.banner{background:#b3261e;color:#fff;font-weight:600;padding:10px 16px;margin:10px 0;border-radius:6px}
.provenance{background:#eef3fb;border-left:4px solid #1f4e9c;padding:6px 14px;margin:8px 0}
.provenance table{margin:2px 0;font-size:13px}.provenance td{background:transparent!important;border:0;padding:2px 10px}
"""


@dataclass
class AblationTable:
    """The grid table (rows already formatted as text, best first) and the chart PNG."""

    columns: list[str]
    rows: list[list[str]]
    chart: Path | None = None
    note: str = ""
    numeric: list[bool] | None = None    # right-align these columns (default: none)


@dataclass
class ReportParts:
    """Everything a report may show; only ``title`` is required, empty parts are left out."""

    title: str
    facts: Mapping[str, object] = field(default_factory=dict)        # run, split, checkpoint, ...
    config: Mapping[str, object] = field(default_factory=dict)       # the run's config.json
    protocols: Mapping[str, Mapping] = field(default_factory=dict)   # eval_<split>.json "protocols"
    confusions: Mapping[str, object] = field(default_factory=dict)   # protocol -> PNG path or counts
    metrics_jsonl: Path | None = None  # the run's metrics.jsonl: read here unless ``epochs`` holds it
    epochs: Sequence[dict] | None = None  # its epoch records, when the caller has read them already
    timelines: Sequence[Path] = ()
    ablation: AblationTable | None = None
    warnings: Sequence[str] = ()
    class_names: Sequence[str] = CLASS_NAMES
    banners: Sequence[str] = ()                                       # shown first: random weights, demo
    provenance: Mapping[str, object] = field(default_factory=dict)   # date, version, device, backbones, ...


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def data_uri(path: str | os.PathLike) -> str:
    """A PNG file as a ``data:`` URI (the report must not point at files beside it)."""
    raw = Path(path).read_bytes()
    if not raw.startswith(PNG_MAGIC):
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def _img(path: Path, caption: str, alt: str) -> str:
    return (f'<figure><img src="{data_uri(path)}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _table(columns: Sequence[str] | None, rows: Sequence[Sequence[object]], numeric: Sequence[bool] | None = None,
           *, raw_first: bool = False, groups: Sequence[tuple[str, int]] = ()) -> str:
    """An HTML table; cells are escaped, except the first column when ``raw_first`` (markup made
    here, e.g. a colour swatch before an escaped class name). ``groups``: (label, span) pairs of
    an extra header row above the column names; ``columns`` None: no header."""
    width = len(columns) if columns else (len(rows[0]) if rows else 0)
    numeric = list(numeric or [False] * width)
    head = ""
    if groups:
        head += "<tr>" + "".join(f'<th colspan="{n}">{esc(g)}</th>' for g, n in groups) + "</tr>"
    if columns:
        head += "<tr>" + "".join(f'<th class="num">{esc(c)}</th>' if n else f"<th>{esc(c)}</th>"
                                 for c, n in zip(columns, numeric)) + "</tr>"
    body = []
    for row in rows:
        cells = [(str(v) if (raw_first and i == 0) else esc(v), n) for i, (v, n) in enumerate(zip(row, numeric))]
        body.append("<tr>" + "".join(f'<td class="num">{v}</td>' if n else f"<td>{v}</td>" for v, n in cells) + "</tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _section(sid: str, heading: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{esc(heading)}</h2>\n{body}\n</section>'


def _present(parts: ReportParts) -> list[tuple[str, str, Mapping]]:
    """(key, label, scores) of the protocols the report has, in display order."""
    return [(k, label, parts.protocols[k]) for k, label in PROTOCOLS.items() if parts.protocols.get(k)]


def _overview(parts: ReportParts) -> str:
    cards = [f'<div class="card"><div class="muted">{esc(label)} macro-F1</div>'
             f'<div class="key">{block["macro_f1"]:.4f}</div>'
             f'<div class="muted">accuracy {block["accuracy"]:.4f} · n = {block["n"]:,}</div></div>'
             for _, label, block in _present(parts)]
    facts = _table(None, [[k, _fmt(v)] for k, v in parts.facts.items()]) if parts.facts else ""
    return f'<div class="cards">{"".join(cards)}</div>{facts}'


def _metrics(parts: ReportParts) -> str:
    rows = [[label, f"{b['macro_f1']:.4f}", f"{b['accuracy']:.4f}", f"{b['n']:,}",
             ", ".join(f"{s}={b[s]}" for s in _SETTINGS if b.get(s) is not None)]
            for _, label, b in _present(parts)]
    notes = "".join(f"<p class=muted>{esc(b['description'])}</p>" for _, _, b in _present(parts) if b.get("description"))
    return _table(["protocol", "macro-F1", "accuracy", "scored", "settings"], rows,
                  [False, True, True, True, False]) + notes


ZERO_SUPPORT_MARK = "†"


def _per_class(parts: ReportParts) -> str:
    present = _present(parts)
    rows = []
    absent = [name for i, name in enumerate(parts.class_names)
              if present and any(b["support"][i] == 0 for _, _, b in present)]
    for i, name in enumerate(parts.class_names):
        swatch = f'<span class="swatch" style="background:{CLASS_COLOURS[i % len(CLASS_COLOURS)]}"></span>'
        mark = f'<span class="zero-support" title="0 support">{ZERO_SUPPORT_MARK}&nbsp;</span>' if name in absent else ""
        row: list[object] = [swatch + mark + esc(name)]
        for _, _, b in present:
            row += [f"{b['f1'][i]:.4f}", f"{b['precision'][i]:.4f}", f"{b['recall'][i]:.4f}", f"{b['support'][i]:,}"]
        rows.append(row)
    columns = ["class"] + ["F1", "precision", "recall", "support"] * len(present)
    groups = [("", 1)] + [(label, 4) for _, label, _ in present]
    table = _table(columns, rows, [False] + [True] * (len(columns) - 1), raw_first=True, groups=groups)
    if absent:  # ABAW's macro-F1 averages over all 8 classes, present or not
        ceiling = (len(parts.class_names) - len(absent)) / len(parts.class_names)
        table += (f'<p class="muted">{ZERO_SUPPORT_MARK} {esc(", ".join(absent))}: 0 support (no true frame or '
                  "window of the class in this split, under at least one protocol). Such a class's F1 is 0 and "
                  "counts as 0 in the 8-class macro-F1 (ABAW averages over all 8 classes), so the macro-F1 "
                  f"here cannot exceed {ceiling:.3f}.</p>")
    return table


def _confusions(parts: ReportParts, scratch: Path) -> str:
    from expr.evaluate.plots import save_confusion_png

    figures = []
    for key, label in PROTOCOLS.items():
        source = parts.confusions.get(key)
        if source is None and parts.protocols.get(key, {}).get("confusion") is not None:
            source = parts.protocols[key]["confusion"]
        if source is None:
            continue
        if not isinstance(source, (str, os.PathLike)):  # counts: draw them here
            source = save_confusion_png(scratch / f"{key}_matrix.png", np.asarray(source), title=label)
        figures.append(_img(Path(source), f"{label}: rows true class, columns predicted", f"confusion {label}"))
    return f'<div class="pair">{"".join(figures)}</div>' if figures else ""


def _training(parts: ReportParts, scratch: Path) -> str:
    from expr.evaluate.curves import read_metrics_jsonl, save_training_curves_png

    if parts.metrics_jsonl is None or (parts.epochs is None and not Path(parts.metrics_jsonl).is_file()):
        return ""
    records = read_metrics_jsonl(parts.metrics_jsonl) if parts.epochs is None else parts.epochs
    if not records:
        return ""
    png = save_training_curves_png(scratch / "curves.png", records)
    best = max(records, key=lambda r: r.get("val_f1", -1.0))
    caption = (f"{len(records)} epochs; best window-level val macro-F1 {best.get('val_f1', float('nan')):.4f} "
               f"at epoch {best['epoch']} (from {Path(parts.metrics_jsonl).name})")
    return _img(png, caption, "training curves")


def _timelines(parts: ReportParts) -> str:
    return "".join(_img(Path(p), Path(p).stem, f"timeline {Path(p).stem}") for p in parts.timelines)


def _ablation(table: AblationTable | None) -> str:
    if table is None:
        return ""
    body = (f"<p class=muted>{esc(table.note)}</p>" if table.note else "") + _table(
        table.columns, table.rows, table.numeric)
    if table.chart is not None and Path(table.chart).is_file():
        body += _img(Path(table.chart), "macro-F1 per cell, mean ± std over seeds", "ablation chart")
    return body


def _config(config: Mapping[str, object]) -> str:
    """One key/value table per top-level group (train, head, cache, ...), side by side; deeper
    values as compact JSON."""
    if not config:
        return ""
    groups = {k: v for k, v in config.items() if isinstance(v, Mapping)}
    loose = {k: v for k, v in config.items() if k not in groups}
    tables = [(name, values) for name, values in (("options", loose), *groups.items()) if values]
    cells = "".join(
        f'<div><h3>{esc(name)}</h3>' + _table(None, [[k, _value(v)] for k, v in values.items()]) + "</div>"
        for name, values in tables)
    return f'<div class="config">{cells}</div>'


def _value(v: object) -> str:
    if isinstance(v, (Mapping, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    # 10 significant digits: exact for what users type, without float noise (3e-05, not 2.9999999999999997e-05)
    return "null" if v is None else _fmt(v) if not isinstance(v, float) else format(v, ".10g")


def _banners(banners: Sequence[str]) -> str:
    return "".join(f'<div class="banner" role="alert">{esc(b)}</div>' for b in banners)


def _provenance(provenance: Mapping[str, object]) -> str:
    if not provenance:
        return ""
    return f'<div class="provenance">{_table(None, [[k, v] for k, v in provenance.items()])}</div>'


def _warnings(warnings: Sequence[str]) -> str:
    return "".join(f'<div class="warn">{esc(w)}</div>' for w in warnings)


def render_report(parts: ReportParts) -> str:
    """The whole HTML page as a string; sections without content are left out."""
    with tempfile.TemporaryDirectory(prefix="expr-report-") as tmp:
        scratch = Path(tmp)
        sections = [
            ("overview", "Overview", _overview(parts)),
            ("provenance", "Provenance", _provenance(parts.provenance)),
            ("metrics", "Metrics (both protocols)", _metrics(parts) if parts.protocols else ""),
            ("per-class", "Per-class scores", _per_class(parts) if parts.protocols else ""),
            ("confusion", "Confusion matrices", _confusions(parts, scratch)),
            ("training", "Training curves", _training(parts, scratch)),
            ("timelines", "Timelines", _timelines(parts)),
            ("ablation", "Ablation", _ablation(parts.ablation)),
            ("warnings", "Warnings", _warnings(parts.warnings)),
            ("config", "Configuration", _config(parts.config)),
        ]
    shown = [(sid, heading, body) for sid, heading, body in sections if body]
    nav = "".join(f'<a href="#{sid}">{esc(heading)}</a>' for sid, heading, _ in shown)
    body = "\n".join(_section(sid, heading, content) for sid, heading, content in shown)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(parts.title)}</title><style>{_CSS}</style></head>\n"
            f'<body><main><h1>{esc(parts.title)}</h1>{_banners(parts.banners)}<nav>{nav}</nav>\n{body}\n'
            f'<p class="muted">Made by expr. Self-contained: images are embedded, nothing is loaded from '
            f"the network.</p></main></body></html>\n")


def write_report(path: str | os.PathLike, parts: ReportParts | None = None, **fields) -> Path:
    """Write ``report.html`` atomically; pass a ReportParts or its fields as keywords
    (``title=..., protocols=..., timelines=[...]``)."""
    parts = parts or ReportParts(**fields)
    write_text(Path(path), render_report(parts))
    return Path(path)
