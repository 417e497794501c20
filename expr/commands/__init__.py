"""One module per CLI command; each exposes ``register(app)``."""

from rich.markup import escape


def esc(value) -> str:
    """``value`` (a path, a video id, a message quoting them) as text that rich prints as
    written: ``[`` is not markup. Print it on a ``Console(emoji=False)``, so ``:x:`` is no emoji."""
    return escape(str(value))
