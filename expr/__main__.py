"""Entry point of the ``expr`` console script and of ``python -m expr``.

``expr`` is also the coreutils command shell scripts call (``expr 1 + 1``). Inside an
activated virtualenv ours shadows it, so any command line whose first word is not one of
ours is handed, whole, to the next ``expr`` on PATH that is not this script.
"""

from __future__ import annotations

import os
import subprocess
import sys

# THE list of our commands, in help order: expr/app/cli.py registers the module
# ``expr.app.commands.<name>`` of each. It lives here so that deciding "ours or coreutils'"
# never has to import typer or torch.
COMMANDS = ("extract", "train", "evaluate", "predict", "ablate", "demo", "cache")
OUR_COMMANDS = frozenset(COMMANDS)
OUR_FLAGS = frozenset(
    {"--help", "-h", "--version", "--debug", "--install-completion", "--show-completion"}
)


# coreutils expr's keywords and operators: a command line using them is an expression.
COREUTILS_WORDS = frozenset({"match", "substr", "index", "length", "quote"})
COREUTILS_OPERATORS = frozenset({"|", "&", "<", "<=", "=", "==", "!=", ">=", ">", "+", "-", "*", "/", "%", ":",
                                 "(", ")"})


def misspelled_command(argv: list[str]) -> str | None:
    """Our command that ``argv[0]`` is a typo of (``trian`` -> ``train``), or None.

    Only a word close to one of our commands, and not followed by an operator of coreutils'
    expr, counts: ``expr trian --cache c`` is a typo, ``expr tran : t`` stays an expression.
    """
    import difflib

    if not argv or argv[0] in OUR_COMMANDS or argv[0].lower() in COREUTILS_WORDS:
        return None
    word = argv[0]
    if not word.replace("-", "").isalpha() or (len(argv) > 1 and argv[1] in COREUTILS_OPERATORS):
        return None
    close = difflib.get_close_matches(word.lower(), sorted(OUR_COMMANDS), n=1, cutoff=0.7)
    return close[0] if close else None


def is_ours(argv: list[str]) -> bool:
    """True when the command line is meant for expr rather than coreutils' expr."""
    if not argv:
        return True  # bare `expr`: show our help (coreutils would only say "missing operand")
    return argv[0] in OUR_COMMANDS or argv[0] in OUR_FLAGS


def find_system_expr(self_path: str | None = None) -> str | None:
    """The next ``expr`` on PATH that is not this script (nor a copy of it)."""
    own = os.path.realpath(self_path or sys.argv[0])
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder or ".", "expr")
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        real = os.path.realpath(candidate)
        if real == own or _is_python_script(real):
            continue
        return candidate
    return None


def _is_python_script(path: str) -> bool:
    # Another venv's copy of us is a python console script; coreutils' is an ELF binary.
    try:
        with open(path, "rb") as fh:
            head = fh.read(128)
    except OSError:
        return False
    return head.startswith(b"#!") and b"python" in head.split(b"\n", 1)[0]


def passthrough(argv: list[str]) -> int:
    system_expr = find_system_expr()
    if system_expr is None:
        sys.stderr.write(
            "expr: not an expr command and no system 'expr' found on PATH; "
            "run 'expr --help' for our commands\n"
        )
        return 2
    return subprocess.call([system_expr, *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not is_ours(argv):
        guess = misspelled_command(argv)
        if guess is not None:
            sys.stderr.write(f"expr: unknown command '{argv[0]}'; did you mean '{guess}'? "
                             "(run 'expr --help' for our commands)\n")
            return 2
        return passthrough(argv)
    from expr.app.cli import run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
