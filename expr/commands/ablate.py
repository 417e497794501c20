"""`expr ablate` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command("ablate", help="(not implemented yet)")
    def _ablate() -> None:
        raise typer.Exit(2)
