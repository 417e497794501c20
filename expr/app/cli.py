"""The typer application: one small module per command under ``expr.app.commands``.

Only this layer prints and chooses exit codes. Known failures (``ExprError``) become one
red line and exit 1; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Optional

import typer

from expr import version_text
from expr.__main__ import COMMANDS
from expr.core.errors import ExprError

try:  # recent typer vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

app = typer.Typer(
    name="expr",
    help="Audio-visual expression recognition (ABAW EXPR): extract features once, train heads fast.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version (and git commit) and exit."),
    ] = None,
) -> None:
    _state["debug"] = debug


for _name in COMMANDS:  # (the import-light entry point's list: one list of commands)
    importlib.import_module(f"expr.app.commands.{_name}").register(app)


def _tidy(command) -> None:
    """Help-text fixes typer does not offer as options: an on/off flag takes no value, so it
    shows no ``<bool>`` type; a command's one-line summary in the list of commands is its
    first docstring paragraph as ONE line (rich would keep the docstring's line breaks, and
    break the sentence where the source code did)."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    make_help = command.get_help_option  # click makes --help anew for every context

    def help_option(ctx, make_help=make_help):
        option = make_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        if sub.help and not sub.short_help:
            sub.short_help = " ".join(sub.help.split("\n\n")[0].split())
        _tidy(sub)


def build_command():
    """The click command of ``app``, with the help fixes of ``_tidy``."""
    import typer.main

    command = typer.main.get_command(app)
    _tidy(command)
    return command


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv``; return the exit code instead of exiting."""
    from rich.console import Console
    from rich.markup import escape

    import expr.app.commands

    expr.app.commands.ARGV[:] = list(argv)
    try:
        # Non-standalone click returns the exit code of typer.Exit instead of exiting.
        code = build_command().main(args=argv, prog_name="expr", standalone_mode=False)
    except ExprError as exc:
        if _state["debug"] or "--debug" in argv:
            raise
        # Messages carry user paths: "[" in one must print as itself, not as markup.
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True, emoji=False)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        Console(stderr=True).print("[red]aborted[/]")
        return 130
    except ClickException as exc:  # usage errors arrive here in non-standalone mode
        exc.show(file=sys.stderr)
        return exc.exit_code
    return code if isinstance(code, int) else 0
