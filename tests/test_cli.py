"""The console script: packaging, coreutils passthrough, `expr cache ...` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cache_helpers import new_writer, write_videos
from expr.__main__ import OUR_COMMANDS, is_ours
from expr.app.cli import app, run

REPO = Path(__file__).resolve().parents[1]
EXPR = Path(sys.executable).parent / "expr"
SYSTEM_EXPR = "/usr/bin/expr"


def sh(*args, env=None, cwd=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_stage_folders_install_only_under_expr(tmp_path):
    code = (
        "import importlib.util, json, expr.evaluate, expr.extract, expr.cache_format, expr.train_heads;"
        "print(json.dumps({n: (importlib.util.find_spec(n).origin if importlib.util.find_spec(n) else None)"
        " for n in ('evaluate', 'extract', 'cache_format', 'train_heads')}"
        " | {'expr.evaluate': expr.evaluate.__file__}))"
    )
    proc = sh(sys.executable, "-c", code, cwd=tmp_path)  # cwd away from the repo root
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    for name in ("evaluate", "extract", "cache_format", "train_heads"):
        assert found[name] is None or not found[name].startswith(str(REPO)), found
    # expr/evaluate is a symlink to the root folder: the code that runs is the root's
    assert os.path.realpath(found["expr.evaluate"]).startswith(str(REPO / "evaluate"))


def test_registered_commands_match_the_passthrough_list():
    import typer.main

    group = typer.main.get_group(app)
    assert set(group.commands) == OUR_COMMANDS


@pytest.mark.parametrize(
    "argv, ours",
    [([], True), (["cache", "info"], True), (["--help"], True), (["--version"], True),
     (["1", "+", "1"], False), (["length", "abc"], False), (["index", "abc", "b"], False)],
)
def test_is_ours(argv, ours):
    assert is_ours(argv) is ours


@pytest.mark.skipif(not os.path.exists(SYSTEM_EXPR), reason="coreutils expr not installed")
@pytest.mark.parametrize(
    "args, out, rc",
    [(["1", "+", "1"], "2\n", 0), (["length", "abc"], "3\n", 0), (["0"], "0\n", 1),
     (["3", "*", "4"], "12\n", 0), (["abc", ":", "a"], "1\n", 0)],
)
def test_coreutils_passthrough_output_and_exit_code(args, out, rc):
    env = {**os.environ, "PATH": f"{EXPR.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    expected = sh(SYSTEM_EXPR, *args)
    assert (expected.stdout, expected.returncode) == (out, rc)
    for cmd in ([EXPR], [sys.executable, "-m", "expr"]):
        got = sh(*cmd, *args, env=env)
        assert (got.stdout, got.returncode) == (out, rc), got.stderr


@pytest.mark.skipif(not os.path.exists(SYSTEM_EXPR), reason="coreutils expr not installed")
def test_passthrough_errors_keep_coreutils_exit_code():
    got = sh(EXPR, "1", "/", "0")
    assert got.returncode == 2 and "division by zero" in got.stderr


def test_no_system_expr_is_a_clear_error(tmp_path):
    env = {**os.environ, "PATH": str(EXPR.parent)}
    got = sh(EXPR, "1", "+", "1", env=env)
    assert got.returncode == 2
    assert "no system 'expr' found on PATH" in got.stderr


def test_version_and_help():
    got = sh(EXPR, "--version")
    assert got.returncode == 0 and got.stdout.startswith("expr ")
    got = sh(EXPR, "--help")
    assert got.returncode == 0
    for cmd in OUR_COMMANDS:
        assert cmd in got.stdout


def test_cache_info_validate_export(tmp_path, capsys):
    path = tmp_path / "c.zarr"
    w = new_writer(path)
    write_videos(w, ["a", "b", "c"])
    w.record_failures({"broken": "broken.mp4: moov atom not found"})
    assert run(["cache", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 complete" in out and "120" in out and "RANDOM WEIGHTS" in out and "broken.mp4" in out
    assert run(["cache", "validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out
    assert run(["cache", "export", str(path), str(tmp_path / "c.h5")]) == 0
    assert (tmp_path / "c.h5").is_file()
    assert run(["cache", "info", str(tmp_path / "c.h5")]) == 0
    assert "(hdf5)" in capsys.readouterr().out
    assert run(["cache", "import", str(tmp_path / "c.h5"), str(tmp_path / "d.zarr")]) == 0
    assert run(["cache", "validate", str(tmp_path / "d.zarr")]) == 0


def test_cache_validate_fails_with_the_list(tmp_path, capsys):
    path = tmp_path / "c.zarr"
    write_videos(new_writer(path), ["a"])
    meta_path = path / "videos" / "a" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["n_frames"] = 3
    meta_path.write_text(json.dumps(meta))
    assert run(["cache", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "videos/a: visual: shape (40, 16), expected (3, 16)" in out and "3 problem(s) in" in out


def test_errors_are_one_red_line_and_exit_1(tmp_path, capsys):
    assert run(["cache", "info", str(tmp_path / "nope.zarr")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "nope.zarr: no such cache" in err
    assert "Traceback" not in err
    with pytest.raises(Exception, match="no such cache"):
        run(["--debug", "cache", "info", str(tmp_path / "nope.zarr")])


def test_usage_error_exit_code(capsys):
    assert run(["cache", "info"]) == 2
    assert "Missing argument" in capsys.readouterr().err


def test_training_and_scoring_never_import_the_backbones():
    # Training from a cache needs no backbone: importing them costs seconds and GBs of RAM.
    code = ("import sys, expr.train_heads.loop, expr.evaluate.evaluation, expr.evaluate.ablation, "
            "expr.app.commands.train; print(sorted(m for m in ('open_clip', 'transformers', 'decord', 'cv2') "
            "if m in sys.modules))")
    proc = sh(sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_cli_startup_imports_no_torch():
    proc = sh(sys.executable, "-c", "import sys, expr.app.cli; print('torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
