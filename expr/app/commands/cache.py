"""`expr cache info|validate|remove|export|import|consolidate`: look after a feature cache.

Paths and video ids come from the user and the filesystem: they are printed escaped, so a
name like ``w[/bold]v`` is shown as written, not parsed as rich markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

CachePath = Annotated[Path, typer.Argument(help="Cache: a .zarr directory or an exported .h5 file.")]


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def info(path: CachePath) -> None:
    """Summarise a cache: videos, frames, audio steps, sizes on disk, backbones."""
    from expr.cache_format import open_cache

    console = Console(emoji=False)
    with open_cache(path) as cache:
        infos = [cache.info(v) for v in cache.video_ids]
        frames = sum(i.n_frames for i in infos)
        steps = sum(i.audio_steps for i in infos)
        raw = frames * cache.visual_dim * 2 + steps * cache.audio_dim * 2
        table = Table(title=f"expr cache {escape(str(path))}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_row("format", f"{cache.attrs['format']} v{cache.attrs['version']} ({cache.backend})")
        checksum = "CRC-32C" if cache.backend == "zarr" else "Fletcher-32"
        table.add_row("integrity", f"{checksum} on every chunk" if cache.checksummed else
                      "no chunk checksums (schema v1): export + import, or re-extract, to add them")
        table.add_row("created by", escape(str(cache.attrs.get("created_by"))))
        table.add_row("videos", f"{len(infos)} complete, {sum(i.has_audio for i in infos)} with audio"
                      + (f", {len(cache.incomplete_ids)} incomplete" if cache.incomplete_ids else ""))
        table.add_row("frames", f"{frames:,} ({sum(i.duration for i in infos) / 3600:.2f} h)")
        table.add_row("audio steps", f"{steps:,}")
        table.add_row("size on disk", f"{_human(_disk_size(path))} (raw float16 {_human(raw)})")
        for stream, bb in (("visual", cache.backbones.visual), ("audio", cache.backbones.audio)):
            shown = escape(str(bb.weights)) if bb.weights else "[bold red]RANDOM WEIGHTS (features are not meaningful)[/]"
            resize = f" resize={escape(str(bb.resize))}" if bb.resize is not None else ""  # caches before it lack it
            table.add_row(f"{stream} backbone", f"{escape(str(bb.name))} dim={bb.dim} weights={shown}{resize}")
        options = cache.attrs.get("options")  # expr 0.2 caches record them per video only
        if isinstance(options, dict):
            table.add_row("options", escape(" ".join(f"{k}={v}" for k, v in options.items())))
        table.add_row("classes", ", ".join(cache.class_names))
        failures = cache.failures
        table.add_row("failed videos", str(len(failures)) if failures else "0")
        console.print(table)
        for vid, reason in list(failures.items())[:10]:
            console.print(f"  [red]failed[/] {escape(vid)}: {escape(str(reason))}", highlight=False)


def validate(
    path: CachePath,
    deep: Annotated[bool, typer.Option(help="Read every chunk of every video and list each damaged or missing one.")] = False,
) -> None:
    """Check a cache against the schema; exit 1 listing every problem."""
    from expr.cache_format import validate_cache

    problems = validate_cache(path, deep=deep)
    console = Console(emoji=False)
    if problems:
        for p in problems:
            console.print(f"[red]✗[/] {escape(p)}", highlight=False, soft_wrap=True)
        console.print(f"[bold red]{len(problems)} problem(s) in {escape(str(path))}[/]", soft_wrap=True)
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {escape(str(path))}: valid" + (" (every chunk read)" if deep else ""), highlight=False)


def remove(
    path: CachePath,
    video_ids: Annotated[list[str], typer.Argument(
        help="Video ids to remove: ID[,ID...] or several arguments (an argument naming a video as a whole is not split).",
        show_default=False)],
) -> None:
    """Remove videos from a Zarr cache, so that the next `expr extract` redoes them."""
    from expr.cache_format import remove_videos

    removed = remove_videos(path, video_ids)
    Console(emoji=False).print(f"removed {len(removed)} video(s) from {escape(str(path))}: {escape(', '.join(removed))}; "
                    "run expr extract again to redo them", highlight=False, soft_wrap=True)


def export(
    src: CachePath,
    dst: Annotated[Path, typer.Argument(help="HDF5 file to write, e.g. feats.h5.")],
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it exists.")] = False,
) -> None:
    """Export a Zarr cache to one HDF5 file (the reader opens either)."""
    from expr.cache_format import export_hdf5

    n = export_hdf5(src, dst, overwrite=overwrite)
    Console(emoji=False).print(f"exported {n} videos to {escape(str(dst))}", highlight=False)


def import_(
    src: CachePath,
    dst: Annotated[Path, typer.Argument(help="Zarr directory to create, e.g. feats.zarr.")],
    overwrite: Annotated[bool, typer.Option(help="Replace DST if it exists.")] = False,
) -> None:
    """Import an HDF5 cache into a Zarr cache."""
    from expr.cache_format import import_hdf5

    n = import_hdf5(src, dst, overwrite=overwrite)
    Console(emoji=False).print(f"imported {n} videos into {escape(str(dst))}", highlight=False)


def consolidate(path: CachePath) -> None:
    """Re-snapshot the metadata of a Zarr cache (after writers finished) for fast opening."""
    from expr.cache_format import consolidate as _consolidate

    _consolidate(path)
    Console(emoji=False).print(f"consolidated {escape(str(path))}", highlight=False)


def register(app: typer.Typer) -> None:
    cache_app = typer.Typer(help="Inspect, validate, export and import feature caches; remove videos to redo them.", no_args_is_help=True)
    cache_app.command("info")(info)
    cache_app.command("validate")(validate)
    cache_app.command("remove")(remove)
    cache_app.command("export")(export)
    cache_app.command("import")(import_)
    cache_app.command("consolidate")(consolidate)
    app.add_typer(cache_app, name="cache")
