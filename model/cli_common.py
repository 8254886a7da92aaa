"""What the management command's modules share: its error and how a bundle argument is read.

Its own module, so that `python -m model.cli` (whose module is `__main__`) and the subcommands'
modules raise and catch one and the same CliError.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODELS = Path("models")


class CliError(Exception):
    """An expected failure: one line on stderr, exit status 1."""


def bundle_path(arg: str) -> Path:
    """A bundle folder, or a model folder with CURRENT (then the current version)."""
    from model.bundle.format import CURRENT, read_current

    p = Path(arg)
    if (p / CURRENT).is_file():
        return p / read_current(p)
    if not p.exists():
        raise CliError(f"{p} does not exist")
    return p
