"""benchmarks/gpu_suite.sh runs end to end on CPU at its tiny scale (the GPU run is the same
script with bigger sizes): every step exits 0 and lands in the one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~50 s of CPU (full-size ViT-B/32 + Wav2Vec2 with random weights), ~2 min on a busy 2-core box
def test_gpu_suite_runs_end_to_end_on_cpu_tiny(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "SUITE_OUT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--device", "cpu", "--tiny"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "table.tsv").read_text().splitlines()
    measures = [line.split("\t")[0] for line in table]
    for wanted in ("video: bare ViT-B/32", "video: pipeline, visual", "train steps, --compile off",
                   "train steps, --compile auto", "epoch at Aff-Wild2 size, window 30",
                   "epoch at Aff-Wild2 size, window 60", "per-frame scoring, window 60",
                   "Table 1 projected"):
        assert any(m.startswith(wanted) for m in measures), (wanted, measures)
    assert not any("FAILED" in line or "TIMEOUT" in line for line in table)
    assert "expr GPU suite: CPU" in proc.stdout and "Table 1 projected" in proc.stdout
