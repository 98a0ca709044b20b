"""``mmkd datasets``: upload, list, show and delete your datasets on an mmkd server (through the
SDK); ``mmkd datasets builtin`` and ``mmkd datasets export`` for the datasets shipped with mmkd
(local, no server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
        fail(f"{path}: no such file")
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


@datasets_app.command("export")
def export(
    dataset: Annotated[str, typer.Argument(help="A built-in dataset (see mmkd datasets builtin).")],
    modalities: Annotated[
        str, typer.Option(help="Comma-separated modalities to write, e.g. the student's primary ones: fou,zer,mor.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The .npz file to write (replaced if it exists).")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    split_seed: Annotated[int, typer.Option(help="The training spec's dataset.split_seed.")] = 0,
    label: Annotated[bool, typer.Option("--label/--no-label", help="Also write the true classes as 'label'.")] = True,
) -> None:
    """Write one split of a built-in dataset, as training splits it, for mmkd predict."""
    from core.data.prepare import split_part
    from core.errors import DataError
    from core.spec import BUILTIN_DATASETS, DatasetSpec

    known = BUILTIN_DATASETS.get(dataset)
    if known is None:
        fail(f"{dataset}: not a built-in dataset; the built-ins are {sorted(BUILTIN_DATASETS)}")
    names = [name.strip() for name in modalities.split(",")]
    unknown = [name for name in names if name not in known]
    if unknown or len(set(names)) != len(names):
        fail(f"--modalities: {modalities!r} must name distinct modalities of {dataset}: {list(known)}")
    if split not in ("train", "val", "test"):
        fail(f"--split: {split!r} is not one of train, val, test")
    # Every modality of the built-in, so the spec is valid whichever ones are asked for; the split
    # depends only on the labels and the seed.
    spec = DatasetSpec(name=dataset, primary=list(known[:1]), auxiliary=list(known[1:]), split_seed=split_seed)
    try:
        arrays, how = split_part(spec, "classification", split)  # the built-ins are classification data
    except DataError as exc:
        fail(str(exc))
    chosen = {name: arrays[name] for name in names} | ({"label": arrays["label"]} if label else {})
    _write_npz(out, chosen)
    typer.echo(f"{len(arrays[names[0]])} samples of the {split} split ({how}) written to {out}: {', '.join(chosen)}")


def _write_npz(path: Path, arrays: dict[str, Any]) -> None:
    """Write ``arrays`` to exactly ``path``, atomically, or fail with one line."""
    from core.files import write_npz

    try:
        write_npz(path, arrays)
    except OSError as exc:
        fail(f"{path}: cannot write ({exc.strerror or exc})")


def _label(dataset: Dataset) -> str:
    if dataset.label is None:
        return "none"
    if dataset.label.classes is not None:
        return f"{dataset.label.classes} classes"
    return dataset.label.kind


def _describe(dataset: Dataset) -> str:
    shapes = ", ".join(f"{name} {tuple(m.shape)} {m.dtype}" for name, m in dataset.modalities.items())
    return f"{dataset.n_samples} samples; {shapes}; label: {_label(dataset)}; sha256 {dataset.sha256[:12]}"
