"""`expr train` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command("train", help="(not implemented yet)")
    def _train() -> None:
        raise typer.Exit(2)
