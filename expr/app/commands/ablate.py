"""`expr ablate`: a grid of training settings from one cache load, both protocols, tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from expr.app.commands import esc

from expr.app.commands.evaluate import CacheOpt, DeviceOpt, LabelsOpt, SmoothModeOpt, SmoothOpt
from expr.evaluate import KEYS, AblateConfig, Keep
from expr.app.commands.train import WINDOWS_HELP
from expr.train_heads import Preload, WindowRule

DEFAULT = AblateConfig
GRID_HELP = ('Space-separated key=v1,v2 terms, e.g. "window=30,60 fusion=bica,concat audio=on,off". '
             f"Keys: {' '.join(KEYS)}.")


def ablate(
    cache: CacheOpt,
    labels: LabelsOpt,
    grid: Annotated[str, typer.Option(help=GRID_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Ablation dir: one run per cell and seed, plus the tables.")],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per cell.")] = DEFAULT.epochs,
    seeds: Annotated[int, typer.Option(min=1, help="Runs per cell (seeds seed, seed+1, ...): mean +- std.")
                     ] = DEFAULT.seeds,
    seed: Annotated[int, typer.Option(help="First seed.")] = DEFAULT.seed,
    lr: Annotated[float, typer.Option(help="Learning rate of every cell (grid key lr overrides).")] = DEFAULT.lr,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per micro-batch.")] = DEFAULT.batch_size,
    channels: Annotated[int, typer.Option(min=1, help="Head width.")] = DEFAULT.channels,
    tcn_levels: Annotated[int, typer.Option(min=1, help="TCN blocks (grid key tcn_levels overrides).")
                          ] = DEFAULT.tcn_levels,
    heads: Annotated[int, typer.Option(min=1, help="Attention heads.")] = DEFAULT.heads,
    windows: Annotated[WindowRule, typer.Option(help=f"{WINDOWS_HELP} Grid key windows overrides.")
                       ] = DEFAULT.windows,
    train_list: Annotated[Optional[Path], typer.Option(help="Ids file restricting Train_Set.")] = DEFAULT.train_list,
    val_list: Annotated[Optional[Path], typer.Option(help="Ids file restricting Validation_Set.")] = DEFAULT.val_list,
    smooth: SmoothOpt = DEFAULT.smooth,
    smooth_mode: SmoothModeOpt = DEFAULT.smooth_mode,
    # cpu or gpu: "none" (streaming) would re-read the cache for every cell; AblateConfig refuses it
    preload: Annotated[Preload, typer.Option(help="Where the features loaded once for every cell live "
                                                  "(auto: gpu on CUDA when it fits, else cpu; cpu; gpu).")] = DEFAULT.preload,
    device: DeviceOpt = DEFAULT.device,
    keep: Annotated[Keep, typer.Option(help="Checkpoints kept per finished cell (the tables need none): best, "
                                            "last (without optimiser state) or all (with it).")
                    ] = DEFAULT.keep,
) -> None:
    """Train and score every combination of --grid from ONE load of the cache; write
    ablation.csv, ablation.md (sorted by per-frame macro-F1) and ablation.png. Re-running
    skips finished cells."""
    from rich.console import Console

    from expr.evaluate import run_ablation

    console = Console(emoji=False)
    cfg = AblateConfig(cache=cache, labels=labels, grid=grid, out=out, epochs=epochs, seeds=seeds, seed=seed, lr=lr,
                       batch_size=batch_size, channels=channels, tcn_levels=tcn_levels, heads=heads,
                       windows=windows,
                       train_list=train_list, val_list=val_list, smooth=smooth, smooth_mode=smooth_mode,
                       preload=preload, device=device, keep=keep)

    def on_cell(i, n, cell, seed_, status):
        verb = "[dim]skip (done)[/]" if status == "skip" else "[bold]train[/]"
        console.print(f"{esc(f'[{i}/{n}]')} {verb} {esc(cell.label)} seed {seed_}", highlight=False)

    def on_epoch(record):
        console.print(f"    epoch {record['epoch']}: loss {record.get('loss', float('nan')):.4f}  "
                      f"val window macro-F1 {record.get('val_f1', float('nan')):.4f}", highlight=False)

    report = run_ablation(cfg, on_cell=on_cell, on_epoch=on_epoch,
                          on_stage=lambda msg: console.print(f"[dim]{esc(msg)}[/]"))
    console.print(report.paths["md"].read_text(encoding="utf-8"), markup=False, highlight=False, soft_wrap=True)
    console.print(f"[green]✓[/] {report.trained} trained, {report.skipped} already done; "
                  f"{esc(report.paths['csv'])}, {esc(report.paths['md'])}, {esc(report.paths['png'])}", highlight=False)
    if report.freed_bytes:
        console.print(f"--keep {cfg.keep}: {report.freed_bytes / 1e6:,.1f} MB of checkpoints deleted", highlight=False)
    console.print(f"report: {esc(report.report)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
