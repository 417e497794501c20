"""The stage packages' public interfaces and the facts they own (issue 11): evaluate uses
train_heads only through its __init__, the run folder's training files are named in
run_dir.py and evaluate's reports (and the ablation folder) in evaluate/report_dir.py, and
every command's defaults are its config's."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from expr.app.cli import app

REPO = Path(__file__).resolve().parents[1]
# Written in the run folder by training: only train_heads/run_dir.py may spell these.
RUN_FILE_NAMES = ("config.json", "metrics.jsonl", ".safetensors", "state.json")
# Evaluate's reports in a run folder and the ablation folder's files: only evaluate/report_dir.py.
REPORT_FILE_NAMES = ("result.json", "report.html", "ablation.csv", "ablation.md", "ablation.png")
RUN_REPORT_PREFIXES = ("eval_", "confusion_", "timelines_")
OWNERS = {"run_dir.py": ("train_heads", RUN_FILE_NAMES, ()),
          "report_dir.py": ("evaluate", REPORT_FILE_NAMES, RUN_REPORT_PREFIXES)}


def _code_strings(path: Path) -> list[str]:
    """String literals of a module that are code, not docstrings; f-strings as their literal
    parts with {} for each replacement field."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    strings = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            strings.append("".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            strings.append(node.value)
    return strings


def test_evaluate_imports_train_heads_only_through_its_public_interface():
    deep = re.compile(r"\bexpr\.train_heads\.\w")
    offenders = [f"{path.name}:{n}: {line.strip()}"
                 for path in sorted((REPO / "evaluate").glob("*.py"))
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if deep.search(line)]
    assert offenders == []


STAGES = ("extract", "cache_format", "train_heads", "evaluate")


@pytest.mark.parametrize("package", [f"expr.{stage}" for stage in STAGES])
def test_public_interface_resolves_and_matches_the_type_checking_imports(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    # the names pyright sees (TYPE_CHECKING imports + eager imports) are exactly __all__, written once
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    seen = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module and node.module.startswith(package) for alias in node.names}
    assert seen == set(module.__all__)
    literal = [node for node in tree.body if isinstance(node, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)]
    assert len(literal) == 1 and isinstance(literal[0].value, ast.List)  # one literal list, no `+=`
    assert not [node for node in tree.body if isinstance(node, ast.AugAssign)]
    from expr.core.lazy import type_checking_imports

    lazy = set(type_checking_imports(package))  # what __getattr__ imports on first use
    assert lazy <= set(module.__all__) and len(module.__all__) == len(set(module.__all__))
    eager = {n for n in module.__all__ if n in vars(module)}  # the configs, imported at once
    assert lazy | eager >= set(module.__all__)
    if package != "expr.cache_format":  # (the cache layer's names are all eager)
        assert lazy


def _own_modules(folder: Path) -> list[Path]:
    """The modules of ``folder``'s package tree, without following symlinks (the stage folders)."""
    return sorted(Path(root) / name for root, _dirs, files in os.walk(folder)
                  for name in files if name.endswith(".py"))


def test_the_application_layer_imports_stages_only_through_their_public_interface():
    # expr/'s own modules (the CLI, its commands, the pipeline, the demo; the bottom layer imports
    # no stage at all) name `expr.<stage>`, never `expr.<stage>.<module>`.
    deep = re.compile(rf"\bexpr\.({'|'.join(STAGES)})\.\w")
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
                 for path in _own_modules(REPO / "expr")
                 for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if deep.search(line) and "import" in line]
    assert offenders == []
    assert any(path.name == "pipeline.py" for path in _own_modules(REPO / "expr"))  # the walk found them


def test_importing_the_stage_interfaces_and_configs_imports_no_torch():
    code = ("import sys, expr.train_heads, expr.evaluate, expr.extract; from expr.train_heads import TrainConfig, RunDir; "
            "print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("owner", sorted(OWNERS))
def test_only_the_owner_spells_its_file_names(owner):
    from expr.train_heads.run_dir import REPORT_PATTERNS

    folder, names, prefixes = OWNERS[owner]
    files = [*(REPO / "train_heads").glob("*.py"), *(REPO / "evaluate").glob("*.py"),
             *(REPO / "expr" / "app" / "commands" / n for n in ("train.py", "evaluate.py", "predict.py", "ablate.py")),
             REPO / "expr" / "app" / "demo.py"]
    offenders = []
    for path in files:
        if path.name == owner and path.parent.name == folder:
            continue
        for text in _code_strings(path):
            if path.name == "run_dir.py" and text in REPORT_PATTERNS:
                continue  # what --overwrite may delete (the next test checks report_dir's names fit)
            if any(name in text for name in names) or any(text.startswith(prefix + "{}") for prefix in prefixes):
                offenders.append(f"{path.relative_to(REPO)}: {text!r}")
    assert offenders == []


def test_run_dir_names_its_files():
    from expr.train_heads import RunDir
    from expr.train_heads.run_dir import is_run_file

    run = RunDir(Path("r"))
    last = run.checkpoint("last")
    assert (run.config.name, run.metrics.name) == ("config.json", "metrics.jsonl")
    assert (last.weights.name, last.optimizer.name, last.state.name) == (
        "last.safetensors", "last.optim.safetensors", "last.state.json")
    assert is_run_file("best.safetensors") and is_run_file("confusion_x_per_frame.png")
    assert is_run_file("report.html") and is_run_file("timelines_Validation_Set")
    assert not is_run_file("result.json") and not is_run_file("notes.txt")


def test_report_dir_names_evaluates_files_and_train_overwrite_knows_them():
    from expr.evaluate import AblationDir, ReportDir
    from expr.train_heads.run_dir import is_run_file

    reports = ReportDir(Path("r"))
    assert reports.eval_report("Validation_Set").name == "eval_Validation_Set.json"
    assert reports.confusion_png("Validation_Set", "window").name == "confusion_Validation_Set_window.png"
    assert reports.timeline_png("Validation_Set", "v1").as_posix() == "r/timelines_Validation_Set/v1.png"
    assert reports.report.name == "report.html"
    # every report is part of the run: `expr train --overwrite` may replace it
    for path in (reports.eval_report("S"), reports.confusion_png("S", "per_frame"), reports.timelines("S"),
                 reports.report):
        assert is_run_file(path.name), path
    ablation = AblationDir(Path("a"))
    cell = ablation.cell("window=30", 43)
    assert cell.as_posix() == "a/cells/window=30/seed43"
    assert AblationDir.cell_result(cell).as_posix() == "a/cells/window=30/seed43/result.json"
    assert (ablation.csv.name, ablation.markdown.name, ablation.chart.name, ablation.report.name) == (
        "ablation.csv", "ablation.md", "ablation.png", "report.html")
    assert not is_run_file(AblationDir.cell_result(cell).name)  # the ablation's record, not the run's


def _cli_defaults(command: str) -> dict:
    params = typer.main.get_group(app).commands[command].params
    return {p.name: getattr(p.default, "value", p.default) for p in params}


@pytest.mark.parametrize("command, config", [("evaluate", "evaluate.EvaluateConfig"),
                                             ("predict", "app.pipeline.PredictVideosConfig"),
                                             ("ablate", "evaluate.AblateConfig")])
def test_cli_defaults_are_the_config_defaults(command, config):
    module, name = config.rsplit(".", 1)
    defaults = _cli_defaults(command)
    for f in dataclasses.fields(getattr(importlib.import_module(f"expr.{module}"), name)):
        if f.default is not dataclasses.MISSING:
            assert defaults[f.name] == f.default, f.name


def test_architecture_defaults_are_declared_once():
    from expr.evaluate import AblateConfig
    from expr.train_heads import HeadConfig, TrainConfig

    head = HeadConfig()
    train = TrainConfig(cache=Path("c"), labels=Path("l"), out=Path("o"))
    assert train.head_config(head.visual_dim, head.audio_dim, head.text_dim) == head
    ablate = AblateConfig(cache=Path("c"), labels=Path("l"), grid="window=30", out=Path("o"))
    assert (ablate.channels, ablate.tcn_levels, ablate.heads) == (head.channels, head.tcn_levels, head.heads)
    # the switches map by name: turning one off reaches the head
    off = dataclasses.replace(train, no_audio=True, no_tcn=True, fusion="concat", dropout_head=0.1)
    built = off.head_config(1, 1, 1)
    assert (built.use_audio, built.use_tcn, built.fusion, built.dropout_head) == (False, False, "concat", 0.1)


def test_options_that_do_not_change_what_is_learned_are_declared_once_as_config_metadata():
    from expr.evaluate import ablation
    from expr.train_heads import TrainConfig
    from expr.train_heads.run_dir import RESUME_FREE

    free = TrainConfig.not_learned()
    assert free == {"out", "resume", "overwrite", "device", "preload", "chunk_frames", "eval_batch_size", "compile"}
    assert RESUME_FREE == free and ablation._NOT_IDENTITY == free  # --resume and ablate read the same list


def test_an_ablation_record_that_still_holds_compile_is_reused(tmp_path):
    import json

    from expr.evaluate import AblationDir
    from expr.evaluate.ablation import _finished, _identity
    from expr.train_heads import TrainConfig

    tcfg = TrainConfig(cache=Path("c"), labels=Path("l"), out=tmp_path)
    identity = _identity(tcfg)
    assert "compile" not in identity and "device" not in identity and "window" in identity
    result = {"cell": [["window", "60"]], "seed": 42, "frame_macro_f1": 0.5, "frame_accuracy": 0.6,
              "window_macro_f1": 0.4, "window_accuracy": 0.7, "best_epoch": 1, "seconds": 2.0, "run_dir": "x"}
    # written by an expr before --compile was marked as not learned: the record held it
    AblationDir.cell_result(tmp_path).write_text(json.dumps({"train": identity | {"compile": "auto"},
                                                             "result": result}))
    found = _finished(tmp_path, identity)
    assert found is not None and found.frame_macro_f1 == 0.5
    assert _finished(tmp_path, identity | {"window": 30}) is None  # a learned option differs: retrain


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return found | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_floors_import_only_downwards():
    # bottom (expr/core) -> stages (the root folders) -> application (expr/app): nothing runs back up
    floors = {"expr/core": re.compile(rf"^expr\.(app|{'|'.join(STAGES)})\b"),
              **{stage: re.compile(r"^expr\.app\b") for stage in STAGES}}
    offenders = [f"{path.relative_to(REPO)}: {module}" for folder, upward in floors.items()
                 for path in _own_modules(REPO / folder) for module in sorted(_imported_modules(path))
                 if upward.search(module)]
    assert offenders == []
    assert _own_modules(REPO / "expr" / "core") and _own_modules(REPO / "expr" / "app")
