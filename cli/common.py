"""What every ``mmkd`` sub-command shares."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: str) -> NoReturn:
    """Print a one-line error (no traceback) and exit with status 1."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(1)
