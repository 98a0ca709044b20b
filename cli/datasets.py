"""``mmkd datasets``: upload, list, show and delete your datasets on an mmkd server (through the
SDK), and ``mmkd datasets builtin`` for the datasets shipped with mmkd (local, no server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import fail
from cli.jobs import DEFAULT_URL, JsonOption, KeyOption, UrlOption, connect

if TYPE_CHECKING:
    from mmkd_client import Dataset

datasets_app = typer.Typer(no_args_is_help=True, help="Your datasets on an mmkd server, and the built-in ones.")


def register(app: typer.Typer) -> None:
    """Add ``mmkd datasets ...`` to ``app``."""
    app.add_typer(datasets_app, name="datasets")


@datasets_app.command()
def upload(
    path: Annotated[Path, typer.Argument(help="An .npz: one array per modality, plus label (and split).")],
    name: Annotated[str | None, typer.Option(help="A label for it (default: the file name).")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Upload a dataset; the server validates it and prints what it holds."""
    if not path.is_file():
        fail(f"no such file: {path}")
    with connect(url, api_key) as client:
        dataset = client.upload_dataset(path, name=name)
    typer.echo(f"uploaded dataset {dataset.id} ({dataset.name}): {_describe(dataset)}")
    typer.echo(f"train on it with  dataset: {{id: {dataset.id}, primary: [...], auxiliary: [...]}}")


@datasets_app.command("list")
def list_datasets(
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 50,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """List your datasets, newest first."""
    from itertools import islice

    with connect(url, api_key) as client:
        found = list(islice(client.datasets(page_size=min(limit, 200)), limit))
    if as_json:
        typer.echo(json.dumps([dataset.model_dump(mode="json") for dataset in found], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "samples", "modalities (per-sample shape)", "label", "size", "created")
    for dataset in found:
        shapes = ", ".join(f"{name} {tuple(m.shape)}" for name, m in dataset.modalities.items())
        created = dataset.created_at.strftime("%Y-%m-%d %H:%M:%S")
        size = f"{dataset.size_bytes / 1e6:.1f} MB"
        table.add_row(str(dataset.id), dataset.name, str(dataset.n_samples), shapes, _label(dataset), size, created)
    Console().print(table)


@datasets_app.command()
def show(dataset_id: int, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Show one dataset's summary as JSON."""
    with connect(url, api_key) as client:
        typer.echo(client.dataset(dataset_id).model_dump_json(indent=2))


@datasets_app.command("rm")
def remove(dataset_id: int, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Delete a dataset (refused while queued or running jobs use it)."""
    with connect(url, api_key) as client:
        client.delete_dataset(dataset_id)
    typer.echo(f"deleted dataset {dataset_id}")


@datasets_app.command()
def builtin() -> None:
    """List the built-in datasets with their modalities and shapes (no server needed)."""
    from cli.local import datasets_command

    datasets_command()


def _label(dataset: Dataset) -> str:
    if dataset.label is None:
        return "none"
    if dataset.label.classes is not None:
        return f"{dataset.label.classes} classes"
    return dataset.label.kind


def _describe(dataset: Dataset) -> str:
    shapes = ", ".join(f"{name} {tuple(m.shape)} {m.dtype}" for name, m in dataset.modalities.items())
    return f"{dataset.n_samples} samples; {shapes}; label: {_label(dataset)}; sha256 {dataset.sha256[:12]}"
