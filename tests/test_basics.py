"""The bottom layer every stage shares: task facts, atomic writes, devices, static imports."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from expr.core import abaw
from expr.core.atomic import atomic_path, write_json, write_text
from expr.core.devices import Dist, dist_env, resolve_device, setup_dist
from expr.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_abaw_facts_match_the_annotation_format():
    assert abaw.NUM_CLASSES == 8
    assert abaw.LABEL_HEADER == "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
    assert abaw.SUBMISSION_HEADER == "image_location," + abaw.LABEL_HEADER
    assert abaw.prompts()[4] == "A face expressing Happiness"


@pytest.mark.parametrize("n, steps", [(0, 0), (399, 0), (400, 1), (719, 1), (720, 2), (16_000, 49), (960_000, 2999)])
def test_audio_steps_follow_the_conv_stack(n, steps):
    assert abaw.audio_steps(n) == steps  # floor((N - 400) / 320) + 1


def test_audio_step_times_are_step_centres():
    t = abaw.audio_step_times(3)
    assert t.tolist() == pytest.approx([200 / 16_000, 520 / 16_000, 840 / 16_000])


def test_atomic_path_replaces_only_on_success(tmp_path):
    dest = tmp_path / "a.txt"
    dest.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # no temp file left behind
    write_json(dest, {"k": [1, 2]})
    assert json.loads(dest.read_text()) == {"k": [1, 2]}
    assert dest.read_text().endswith("}\n")


def test_atomic_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "m.txt", "x")
        with atomic_path(tmp_path / "w.bin") as tmp:
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # as tempfile-style writers create
            os.close(fd)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "w.bin").stat().st_mode) == 0o644


def test_resolve_device_refuses_clearly(monkeypatch):
    assert str(resolve_device("cpu")) == "cpu"
    assert str(resolve_device("auto")) == "cpu"  # the suite hides GPUs
    with pytest.raises(ConfigError, match="no CUDA device is visible; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_device("tpu7")


def test_dist_env_without_torchrun_is_one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert dist_env() == (0, 1, 0)
    assert setup_dist() == Dist()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_env() == (3, 4, 1)


@pytest.mark.skipif(shutil.which("pyright") is None, reason="pyright not installed (npm install -g pyright; .ci/run does)")
def test_pyright_resolves_every_expr_import_and_finds_no_error_in_the_project():
    proc = subprocess.run(["pyright", "--outputjson", "--pythonpath", str(Path(sys.executable))],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    report = json.loads(proc.stdout)
    unresolved = [f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
                  for d in report["generalDiagnostics"] if d.get("rule") == "reportMissingImports"]
    assert report["summary"]["filesAnalyzed"] > 50
    assert unresolved == []
    # The package, tests/ and benchmarks/ (all in pyproject's include) type-check clean.
    errors = [f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
              for d in report["generalDiagnostics"] if d["severity"] == "error"]
    assert errors == []


def _module_map() -> set[str]:
    """Paths listed in docs/architecture.md's module map: `### `folder/`` headings, then
    one table row per module whose first cell is `` `name.py` ``."""
    listed, folder = set(), None
    for line in (REPO / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("### `"):
            folder = line.split("`")[1].rstrip("/")
        elif folder and line.startswith("| `") and line.split("`")[1].endswith(".py"):
            listed.add(f"{folder}/{line.split('`')[1]}")
    return listed


def test_architecture_page_lists_every_module_of_the_tree():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    modules = {p for p in tracked if not p.startswith("tests/")}
    listed = _module_map()
    assert sorted(modules - listed) == [], "modules missing from docs/architecture.md's module map"
    assert sorted(listed - modules) == [], "docs/architecture.md lists modules that do not exist"
