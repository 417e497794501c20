"""`expr predict` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command("predict", help="(not implemented yet)")
    def _predict() -> None:
        raise typer.Exit(2)
