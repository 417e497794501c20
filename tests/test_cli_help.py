"""Issue 21: the first hour at the command line: typo'd commands, --version, --help text."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import expr
from expr.__main__ import OUR_COMMANDS, main, misspelled_command
from expr.app.cli import run


@pytest.mark.parametrize("argv, guess", [
    (["trian", "--cache", "c.zarr"], "train"), (["trian"], "train"), (["evalute", "--run", "r"], "evaluate"),
    (["predcit"], "predict"), (["extact", "--videos", "v"], "extract"), (["cahce", "info"], "cache"),
    (["Train"], "train"),
])
def test_a_word_close_to_a_command_is_a_typo(argv, guess):
    assert misspelled_command(argv) == guess


@pytest.mark.parametrize("argv", [
    ["1", "+", "1"], ["length", "abc"], ["index", "abc", "b"], ["match", "abc", "a"], ["abc", ":", "a"],
    ["tran", ":", "t"], ["hello"], ["substr", "train", "1", "2"], ["train"],
])
def test_real_expressions_and_our_commands_are_not_typos(argv):
    assert misspelled_command(argv) is None


def test_typo_gets_one_line_and_never_reaches_coreutils(capsys, monkeypatch):
    import expr.__main__ as entry

    monkeypatch.setattr(entry, "passthrough", lambda argv: pytest.fail(f"passed {argv} to coreutils"))
    assert main(["trian", "--cache", "feats.zarr"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'trian'; did you mean 'train'?" in err
    assert len(err.strip().splitlines()) == 1


def test_every_command_is_in_the_typo_list():
    assert {"extract", "train", "evaluate", "predict", "ablate", "demo", "cache"} == OUR_COMMANDS


def test_version_says_0_3_and_the_commit(capsys):
    assert run(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("expr 0.3.0")
    assert expr.__version__ == "0.3.0"
    commit = expr.git_commit()
    if commit is not None:  # a checkout (editable install): the commit is shown
        assert f"(commit {commit})" in out
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=expr.__file__.rsplit("/", 2)[0]).stdout.strip()
        assert head.startswith(commit.split("+")[0])


def test_pyproject_version_matches():
    import tomllib
    from pathlib import Path

    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert data["project"]["version"] == expr.__version__


def _help(args, capsys) -> str:
    assert run([*args, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("args", [[], ["train"], ["extract"], ["evaluate"], ["predict"], ["ablate"], ["demo"],
                                  ["cache"], ["cache", "info"]])
def test_flags_show_no_bool_metavar(args, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "140")
    out = _help(args, capsys)
    assert "<bool>" not in out
    assert "--help" in out


def test_options_with_values_keep_their_type(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "140")
    out = _help(["train"], capsys)
    assert "<int>" in out and "<path>" in out


def test_command_summaries_are_not_broken_where_the_source_breaks(capsys, monkeypatch):
    """Each summary in the command list wraps only at the terminal's width: a row of the
    list never ends while the next row continues the same command far short of the edge."""
    monkeypatch.setenv("COLUMNS", "200")
    out = _help([], capsys)
    rows = [line for line in out.splitlines() if line.startswith("│ ")]
    # "evaluate"'s first paragraph fits within 200 columns as one line now
    (evaluate,) = [r for r in rows if r.startswith("│ evaluate")]
    assert "per-frame (the official ABAW metric)" in evaluate
    assert "report.html" in evaluate or "timelines" in evaluate


def test_an_installed_copy_inside_another_git_repo_claims_no_commit(tmp_path):
    """A wheel installed into a virtualenv inside the user's own git project (.venv/ is in
    their work tree) must not report the user's project commit as expr's."""
    import importlib.util
    import shutil
    from pathlib import Path

    if shutil.which("git") is None:
        pytest.skip("git not installed")
    project = tmp_path / "project"
    project.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path), "PATH": __import__("os").environ["PATH"]}
    for cmd in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "theirs"]):
        subprocess.run(["git", *cmd], cwd=project, env=env, check=True, capture_output=True)
    (project / ".gitignore").write_text(".venv/\n")
    package = project / ".venv" / "lib" / "python3" / "site-packages" / "expr"
    package.mkdir(parents=True)
    shutil.copy(Path(expr.__file__), package / "__init__.py")
    spec = importlib.util.spec_from_file_location("installed_expr", package / "__init__.py")
    assert spec is not None and spec.loader is not None
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.git_commit() is None
    assert installed.version_text() == f"expr {expr.__version__}"
