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

    from core.spec import DatasetSpec

MAX_MODEL_JSON_BYTES = 8 << 20  # as predict's limit: a spec and the class names fit many times over
datasets_app = typer.Typer(no_args_is_help=True, help="Your datasets on an mmkd server, and the built-in ones.")


def register(app: typer.Typer) -> None:
    """Add ``mmkd datasets ...`` to ``app``."""
    app.add_typer(datasets_app, name="datasets")


@datasets_app.command()
def upload(
    path: Annotated[
        Path,
        typer.Argument(
            help="An .npz: one array per modality, plus label (and split). Or a folder of shards (.npz "
            "shards or one .npy per array; a server storing in S3), each file sent in presigned parts."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="A label for it (default: the file name).")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Upload a dataset; the server validates it and prints what it holds."""
    if not path.is_file() and not path.is_dir():
        fail(f"{path}: no such file or folder")
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
    out: Annotated[Path, typer.Option("--out", help="The .npz file to write (replaced if it exists).")],
    dataset: Annotated[
        str | None, typer.Argument(help="A built-in dataset (see mmkd datasets builtin); implied by --like.")
    ] = None,
    like: Annotated[
        Path | None,
        typer.Option(
            help="A student folder (its model.json) or a spec file: split as it was trained (its dataset, "
            "split_seed and fractions), its primary modalities unless --modalities names others."
        ),
    ] = None,
    modalities: Annotated[
        str | None,
        typer.Option(help="Comma-separated modalities to write, e.g. the student's primary ones: fou,zer,mor."),
    ] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    split_seed: Annotated[int | None, typer.Option(help="dataset.split_seed, without --like (default 0).")] = None,
    label: Annotated[bool, typer.Option("--label/--no-label", help="Also write the true classes as 'label'.")] = True,
) -> None:
    """Write one split of a built-in dataset, as training splits it, for mmkd predict."""
    from core.data.prepare import split_part
    from core.errors import DataError
    from core.spec import BUILTIN_DATASETS

    settings = _dataset_settings(dataset, like, split_seed)
    assert settings.name is not None  # checked by _dataset_settings
    known = BUILTIN_DATASETS[settings.name]
    names = [name.strip() for name in modalities.split(",")] if modalities is not None else settings.primary
    unknown = [name for name in names if name not in known]
    if unknown or len(set(names)) != len(names):
        fail(f"--modalities: {','.join(names)!r} must name distinct modalities of {settings.name}: {list(known)}")
    if split not in ("train", "val", "test"):
        fail(f"--split: {split!r} is not one of train, val, test")
    # Every modality of the built-in, so the spec is valid whichever ones are asked for; the split
    # depends only on the labels, the seed and the fractions.
    spec = settings.model_copy(update={"primary": list(known[:1]), "auxiliary": list(known[1:])})
    try:
        arrays, how = split_part(spec, "classification", split)  # the built-ins are classification data
    except DataError as exc:
        fail(str(exc))
    chosen = {name: arrays[name] for name in names} | ({"label": arrays["label"]} if label else {})
    _write_npz(out, chosen)
    typer.echo(f"{len(arrays[names[0]])} samples of the {split} split ({how}) written to {out}: {', '.join(chosen)}")


def _dataset_settings(dataset: str | None, like: Path | None, split_seed: int | None) -> DatasetSpec:
    """The built-in dataset to split and how: from --like, or the name and --split-seed with the defaults."""
    from core.spec import BUILTIN_DATASETS, DatasetSpec

    if like is None:
        if dataset is None:
            fail("name a built-in dataset, or give --like a student folder or spec file")
        if dataset not in BUILTIN_DATASETS:
            fail(f"{dataset}: not a built-in dataset; the built-ins are {sorted(BUILTIN_DATASETS)}")
        known = BUILTIN_DATASETS[dataset]
        return DatasetSpec(name=dataset, primary=list(known[:1]), auxiliary=list(known[1:]), split_seed=split_seed or 0)
    if split_seed is not None:
        fail("--split-seed: --like gives the split's seed; give one or the other")
    settings = _trained_dataset(like)
    if settings.name is None:
        fail(f"--like: {like} trains on dataset.{'uri' if settings.uri else 'id'}, not a built-in dataset")
    if dataset is not None and dataset != settings.name:
        fail(f"{dataset}: --like {like} trains on {settings.name}")
    return settings


def _trained_dataset(like: Path) -> DatasetSpec:
    """The ``dataset`` section of a spec file, or of the spec in a student folder's model.json."""
    from core.errors import SpecError
    from core.spec import JobSpec, load_spec

    if not like.is_dir():
        try:
            return load_spec(like).dataset
        except SpecError as exc:
            fail(str(exc))
    card = like / "model.json"
    try:
        if card.stat().st_size > MAX_MODEL_JSON_BYTES:
            fail(f"{card}: larger than {MAX_MODEL_JSON_BYTES >> 20} MiB; not a student's model.json")
        return JobSpec.model_validate(json.loads(card.read_bytes())["spec"]).dataset
    except FileNotFoundError:
        fail(f"--like: {like}: not an exported student (no model.json) nor a spec file")
    except OSError as exc:
        fail(f"{card}: cannot be read ({exc.strerror or exc})")
    except (ValueError, KeyError, TypeError, RecursionError):  # bad JSON, no spec, an invalid spec
        fail(f"{card}: not a student's model.json (no valid spec in it)")


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
    described = f"{dataset.n_samples} samples; {shapes}; label: {_label(dataset)}; sha256 {dataset.sha256[:12]}"
    if dataset.shards:
        described += f"; {dataset.shards['files']} .{dataset.shards['layout']} files"
    return described
