"""report.html in a real headless Chromium: it renders (the screenshot is not blank) and the
DOM Chromium built holds the title, the class names and the macro-F1 values.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; CI installs it). Without a
binary on PATH (or in $CHROMIUM) the tests are skipped and say why.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from expr.core.abaw import CLASS_NAMES
from report_helpers import SPLIT, evaluated_run

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = os.environ.get("CHROMIUM") or next((p for p in map(shutil.which, _NAMES) if p), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH or in $CHROMIUM: install Debian's chromium "
           "(apt-get install -y chromium) to run the browser render tests",
)


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium call with a throwaway profile (parallel runs must not share one)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report.html that `expr evaluate --timelines 1` wrote into the run."""
    run_dir = evaluated_run(tmp_path_factory.mktemp("browser"), timelines=1)
    ev = json.loads((run_dir / f"eval_{SPLIT}.json").read_text())
    return run_dir / "report.html", ev


def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    path, _ = report
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", path.resolve().as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20  # a blank or single-colour page is ~0
    # Ink on every band of the first screen: the page laid out top to bottom, not one stray element.
    bands = pixels[:1800].reshape(6, 300, 1280)
    assert ((bands < 128).mean(axis=(1, 2)) > 0.002).all()


def test_the_dom_chromium_built_has_the_title_classes_and_scores(report, tmp_path):
    path, ev = report
    dom = _chromium(tmp_path, "--dump-dom", path.resolve().as_uri()).stdout
    assert f"<title>run · {SPLIT}</title>" in dom
    assert f"<h1>run · {SPLIT}</h1>" in dom
    for name in CLASS_NAMES:
        assert f"{name}</td>" in dom
    for key in ("per_frame", "window"):
        assert f">{ev['protocols'][key]['macro_f1']:.4f}<" in dom
    assert dom.count('src="data:image/png;base64,') == 4
    for sid in ("overview", "metrics", "per-class", "confusion", "training", "timelines", "config"):
        assert f'id="{sid}"' in dom


def test_an_ablation_report_written_by_expr_ablate_renders(tmp_path_factory, tmp_path):
    from expr.app.cli import run
    from expr.train_heads import write_synthetic_dataset

    root = tmp_path_factory.mktemp("ablate_browser")
    ds = write_synthetic_dataset(root, n_train=2, n_val=2, n_frames=(40, 60), visual_dim=32, audio_dim=16,
                                 text_dim=16)
    out = root / "abl"
    assert run(["ablate", "--cache", str(ds.cache), "--labels", str(ds.labels), "--out", str(out), "--grid",
                "window=8,12", "--epochs", "1", "--channels", "16", "--tcn-levels", "1", "--heads", "2",
                "--device", "cpu"]) == 0
    dom = _chromium(tmp_path, "--dump-dom", (out / "report.html").resolve().as_uri()).stdout
    assert "<title>Ablation: window=8,12</title>" in dom
    assert "window=8</td>" in dom and "window=12</td>" in dom and "per-frame macro-F1" in dom
    assert 'id="ablation"' in dom and dom.count('src="data:image/png;base64,') == 1  # the chart


# Run inside Chromium on a copy of the report (the report itself has no JavaScript): where the
# random-weights banner and the provenance block are laid out, and whether they are shown.
_PROBE = """<script>
window.addEventListener("load", () => {
  const out = {};
  for (const [key, sel] of [["banner", ".banner"], ["provenance", "#provenance"]]) {
    const el = document.querySelector(sel);
    if (!el) { out[key] = null; continue; }
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    out[key] = {top: r.top, height: r.height, width: r.width, display: s.display, visibility: s.visibility,
                opacity: s.opacity, color: s.color, background: s.backgroundColor, text: el.innerText};
  }
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_random_weights_banner_and_provenance_are_visible(report, tmp_path):
    """Issue 21: the banner and the provenance block are laid out, shown, and on the first
    screen of a 1280x1000 window (the banner) or the page (provenance), in the pixels too."""
    import re

    from PIL import Image

    path, _ = report
    probe = tmp_path / "probe.html"
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, "--window-size=1280,1000", "--virtual-time-budget=5000", "--dump-dom",
                    probe.resolve().as_uri()).stdout
    probed = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert probed is not None, dom[-500:]
    found = json.loads(probed.group(1).replace("&quot;", '"'))
    banner, prov = found["banner"], found["provenance"]
    assert banner is not None and prov is not None, found
    for box in (banner, prov):
        assert box["display"] != "none" and box["visibility"] == "visible" and float(box["opacity"]) == 1
        assert box["width"] > 600 and box["height"] > 20
    assert 0 <= banner["top"] < 200  # right under the title
    assert banner["color"] == "rgb(255, 255, 255)" and banner["background"] == "rgb(179, 38, 30)"
    assert "RANDOM BACKBONE WEIGHTS" in banner["text"]
    for label in ("report written", "written by", "device", "training time", "cache", "visual backbone",
                  "audio backbone", "window rule"):
        assert label in prov["text"]
    assert "weights RANDOM (none)" in prov["text"]
    # and in the pixels of the first screen: a wide band of the banner's red
    shot = tmp_path / "top.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1000", path.resolve().as_uri())
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    red = (np.abs(rgb - np.array([179, 38, 30])).sum(axis=2) < 30)
    assert red[:200].sum() > 600 * 20
