"""`expr evaluate` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate", help="(not implemented yet)")
    def _evaluate() -> None:
        raise typer.Exit(2)
