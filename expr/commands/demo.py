"""`expr demo` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    @app.command("demo", help="(not implemented yet)")
    def _demo() -> None:
        raise typer.Exit(2)
