"""One module per CLI command; each exposes ``register(app)``."""

from rich.markup import escape


def esc(value) -> str:
    """``value`` (a path, a video id, a message quoting them) as text that rich prints as
    written: ``[`` is not markup. Print it on a ``Console(emoji=False)``, so ``:x:`` is no emoji."""
    return escape(str(value))


# The command line being run (without the program name); set by ``expr.app.cli.run``, so that an
# interrupted command can print the command that continues it.
ARGV: list[str] = []


def command_line(add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> str:
    """``expr <the current arguments>``, minus the flags in ``drop``, plus those of ``add``
    not already there; shell-quoted, to copy and paste."""
    import shlex

    args = [a for a in ARGV if a not in drop]
    args += [a for a in add if a not in args]
    return "expr " + shlex.join(args)
