"""`expr extract` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command("extract", help="(not implemented yet)")
    def _extract() -> None:
        raise typer.Exit(2)
