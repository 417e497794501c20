"""`expr train`: train the paper's head on a feature cache (options = TrainConfig fields,
defaults = TrainConfig's defaults, choices = the library's enums)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from expr.app.commands import esc
from expr.core.devices import DEVICE_HELP, is_main_process
from expr.train_heads import Compile, Fusion, Preload, Target, TrainConfig, WindowRule

ARCH = "Architecture / ablation"
OPT = "Optimisation"
DATA = "Data"
RUN = "Run"
# shared with `expr evaluate` / `expr ablate`
WINDOWS_HELP = ("Which windows exist: reference (the authors' rule, Table 1: up to 5 unlabelled or "
                "no-face frames take the last valid frame's image and label, the 6th restarts) or grid "
                "(v0.1: ends every --stride from frame 0, kept when the last frame is valid).")


def _opt(help: str, panel: str, *decls: str, **kw):
    return typer.Option(*decls, help=help, rich_help_panel=panel, **kw)


def _flag(name: str, help: str, panel: str):
    """A plain on-switch (no --no-... twin: '--no-no-audio' would read badly)."""
    return _opt(help, panel, name)


def train(
    cache: Annotated[Path, _opt("Feature cache from 'expr extract' (.zarr dir or .h5).", DATA)],
    labels: Annotated[Path, _opt("ABAW EXPR annotation dir (Train_Set/, Validation_Set/) or a flat dir "
                                 "of <video>.txt with --train-list/--val-list.", DATA)],
    out: Annotated[Path, _opt("Run directory to write (config, metrics, best and last checkpoints).", RUN)],
    window: Annotated[int, _opt("Frames per window.", DATA)] = TrainConfig.window,
    stride: Annotated[int, _opt("Frames between training and validation windows.", DATA)] = TrainConfig.stride,
    target: Annotated[Target, _opt("Window label: its last frame (reference), majority or center.",
                                   DATA)] = TrainConfig.target,
    windows: Annotated[WindowRule, _opt(WINDOWS_HELP, DATA)] = TrainConfig.windows,
    train_list: Annotated[Optional[Path], _opt("Text file of training video ids, one per line.",
                                               DATA)] = TrainConfig.train_list,
    val_list: Annotated[Optional[Path], _opt("Text file of validation video ids, one per line.",
                                             DATA)] = TrainConfig.val_list,
    strict_labels: Annotated[bool, _flag("--strict-labels", "Stop when label files are longer or shorter than "
                                         "their videos by more than 5 frames or 2% (default: a warning).",
                                         DATA)] = TrainConfig.strict_labels,
    epochs: Annotated[int, _opt("Epochs.", OPT)] = TrainConfig.epochs,
    lr: Annotated[float, _opt("AdamW peak learning rate.", OPT)] = TrainConfig.lr,
    weight_decay: Annotated[float, _opt("AdamW weight decay.", OPT)] = TrainConfig.weight_decay,
    batch_size: Annotated[int, _opt("Windows per micro-batch.", OPT)] = TrainConfig.batch_size,
    accum: Annotated[int, _opt("Micro-batches per optimiser step.", OPT)] = TrainConfig.accum,
    grad_clip: Annotated[float, _opt("Max gradient norm (0 = off).", OPT)] = TrainConfig.grad_clip,
    min_lr: Annotated[float, _opt("Cosine annealing floor.", OPT)] = TrainConfig.min_lr,
    contrastive_weight: Annotated[float, _opt("Weight of the text-guided contrastive loss (0 = off).",
                                              OPT)] = TrainConfig.contrastive_weight,
    seed: Annotated[int, _opt("Random seed.", OPT)] = TrainConfig.seed,
    channels: Annotated[int, _opt("TCN channels = fusion width.", ARCH)] = TrainConfig.channels,
    tcn_levels: Annotated[int, _opt("Temporal blocks (dilation 2^i).", ARCH)] = TrainConfig.tcn_levels,
    tcn_kernel: Annotated[int, _opt("Causal convolution kernel.", ARCH)] = TrainConfig.tcn_kernel,
    heads: Annotated[int, _opt("Attention heads.", ARCH)] = TrainConfig.heads,
    dropout_tcn: Annotated[float, _opt("Dropout in the TCN.", ARCH)] = TrainConfig.dropout_tcn,
    dropout_audio: Annotated[float, _opt("Dropout of the audio adapter.", ARCH)] = TrainConfig.dropout_audio,
    dropout_attn: Annotated[float, _opt("Dropout of the cross-attention.", ARCH)] = TrainConfig.dropout_attn,
    dropout_head: Annotated[float, _opt("Dropout of the classifier.", ARCH)] = TrainConfig.dropout_head,
    no_audio: Annotated[bool, _flag("--no-audio", "Ablation: visual stream only.", ARCH)] = TrainConfig.no_audio,
    no_tcn: Annotated[bool, _flag("--no-tcn", "Ablation: no temporal convolution.", ARCH)] = TrainConfig.no_tcn,
    fusion: Annotated[Fusion, _opt("Cross-attention: both directions, visual->audio, audio->visual, or "
                                   "plain concat.", ARCH)] = TrainConfig.fusion,
    weight_norm: Annotated[bool, _flag("--weight-norm", "Weight-normalise the TCN convolutions (Bai et al.; "
                                       "off in the paper's code).", ARCH)] = TrainConfig.weight_norm,
    preload: Annotated[Preload, _opt("Features in pinned RAM (cpu), on the GPU (gpu), or streamed in "
                                     "chunks from the cache (none, for caches larger than memory).",
                                     RUN)] = TrainConfig.preload,
    chunk_frames: Annotated[int, _opt("--preload none: frames loaded at a time.", RUN)] = TrainConfig.chunk_frames,
    eval_batch_size: Annotated[int, _opt("Windows per validation batch.", RUN)] = TrainConfig.eval_batch_size,
    compile: Annotated[Compile, _opt("Training step fast path: auto (CUDA: torch.compile with CUDA graphs and "
                                     "fused AdamW; CPU: eager with foreach AdamW), on (compile without CUDA graphs, any device), "
                                     "off (plain eager step).", RUN)] = TrainConfig.compile,
    device: Annotated[str, _opt(f"{DEVICE_HELP}.", RUN)] = TrainConfig.device,
    overwrite: Annotated[bool, _flag("--overwrite", "Replace a previous run in --out.", RUN)] = TrainConfig.overwrite,
    resume: Annotated[bool, _flag("--resume", "Continue the run in --out from its last checkpoint.",
                                  RUN)] = TrainConfig.resume,
) -> None:
    """Train the TCN + audio + cross-attention head on cached features (no backbone needed)."""
    options = dict(locals())
    cfg = TrainConfig(**options)
    cfg.validate()
    _run(cfg)


def _run(cfg: TrainConfig) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from expr.train_heads import Checkpoint, RunDir
    from expr.train_heads import train as run_training

    main = is_main_process()
    console = Console(quiet=not main, emoji=False)  # paths and ids print as written (esc)
    progress = Progress(TextColumn("[bold]epoch[/] {task.completed}/{task.total}"), BarColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                        console=console, transient=False, disable=not main)

    def on_message(msg: str) -> None:
        if msg.startswith("warning: "):  # degenerate data (train_heads/data_warnings.py): not a mere note
            progress.console.print(f"[bold yellow]warning:[/] {esc(msg[len('warning: '):])}", highlight=False,
                                   soft_wrap=True)
            return
        progress.console.print(f"[yellow]note:[/] {esc(msg)}", highlight=False, soft_wrap=True)

    def on_step(step: int, loss: float) -> None:
        progress.update(task, status=f"step {step} loss {loss:.4f}")

    def on_epoch(r: dict) -> None:
        star = " [green]*best*[/]" if r["best"] else ""
        progress.console.print(
            f"epoch {r['epoch']:>3}  loss {r['loss']:.4f} (ce {r['ce']:.4f}, con {r['contrastive']:.4f})  "
            f"val macro-F1 {r['val_f1']:.4f}  acc {r['val_acc']:.4f}  {r['seconds']:.1f}s{star}",
            highlight=False, soft_wrap=True)
        progress.update(task, completed=r["epoch"], status=f"val F1 {r['val_f1']:.4f}")

    try:
        with progress:
            task = progress.add_task("train", total=cfg.epochs, status="loading features")
            result = run_training(cfg, on_epoch=on_epoch, on_step=on_step, on_message=on_message)
    except KeyboardInterrupt:
        console.print(interrupted_line(cfg), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None

    table = Table(title=f"expr train -> {esc(result.run_dir)}")
    for col in ("epoch", "lr", "loss", "ce", "contrastive", "val macro-F1", "val acc", "seconds"):
        table.add_column(col, justify="right")
    for r in result.history:
        style = "bold green" if r["epoch"] == result.best_epoch else None
        table.add_row(str(r["epoch"]), f"{r['lr']:.2e}", f"{r['loss']:.4f}", f"{r['ce']:.4f}",
                      f"{r['contrastive']:.4f}", f"{r['val_f1']:.4f}", f"{r['val_acc']:.4f}",
                      f"{r['seconds']:.1f}", style=style)
    console.print(table)
    best = RunDir(result.run_dir).checkpoint(Checkpoint.best.value).weights
    console.print(f"best epoch {result.best_epoch}: val macro-F1 {result.best_val_f1:.4f} (window level) "
                  f"-> {esc(best)}", highlight=False, soft_wrap=True)


def committed_epochs(out: Path) -> int:
    """Epochs committed in the run folder ``out`` (0: none): the epoch --resume continues
    after, a set a Ctrl-C left committed in ``.saving/`` included (--resume finishes it)."""
    from expr.train_heads import RunDir, resumable_epoch

    return resumable_epoch(RunDir(out))


def interrupted_line(cfg: TrainConfig) -> str:
    """The one line Ctrl-C prints: what is committed, and the command that continues."""
    from expr.app.commands import command_line
    from expr.train_heads import Checkpoint, RunDir

    done = committed_epochs(cfg.out)
    last = RunDir(cfg.out).checkpoint(Checkpoint.last.value).weights.name
    if done == 0:
        return (f"interrupted: no epoch committed in {esc(cfg.out)}; start again with: "
                f"{esc(command_line(add=('--overwrite',), drop=('--resume',)))}")
    return (f"interrupted: {done} of {cfg.epochs} epochs committed in {esc(cfg.out)} ({last}); "
            f"continue with: {esc(command_line(add=('--resume',), drop=('--overwrite',)))}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
