"""Local commands: train, predict, datasets (placeholder until the trainer lands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the local commands to ``app``."""
