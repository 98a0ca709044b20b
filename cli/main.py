"""The ``mmkd`` command. Sub-commands live in their own modules and import heavy things lazily,
so ``mmkd jobs ...`` never loads torch and ``mmkd train`` never loads the web stack."""

from __future__ import annotations

import typer

from cli import admin, datasets, jobs, local, studies, worker

app = typer.Typer(no_args_is_help=True, add_completion=False, help="mmkd: cross-modal distillation.")
local.register(app)
jobs.register(app)
datasets.register(app)
studies.register(app)
admin.register(app)
worker.register(app)
