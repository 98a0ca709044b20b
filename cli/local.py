"""Local commands: ``mmkd train``, ``mmkd predict`` (and the table behind ``mmkd datasets builtin``).
torch loads inside them only."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.common import fail

if TYPE_CHECKING:
    from core.data.arrays import DataReader
    from core.spec import JobSpec

console = Console()


def _load_spec(path: Path) -> JobSpec:
    from pydantic import ValidationError

    from core.spec import describe_validation_error, load_spec

    try:
        return load_spec(path)
    except FileNotFoundError:
        fail(f"{path}: no such file")
    except ValidationError as exc:
        fail(f"{path}: invalid spec: " + "; ".join(describe_validation_error(exc)))
    except (ValueError, OSError) as exc:  # YAML syntax errors are ValueErrors
        fail(f"{path}: {exc}")


def result_table(summary: dict[str, Any]) -> Table:
    """Test metrics of the three networks, one row each."""
    table = Table(title=f"{summary['method']} on {summary['dataset']} (test split)")
    metrics = list(summary["student"])
    table.add_column("network")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for network in ("student", "teacher", "auxiliary"):
        table.add_row(network, *(f"{summary[network][m]:.4f}" for m in metrics))
    return table


def _reader() -> DataReader:
    """Local files, and S3 objects through the configured endpoint, retries and timeouts."""
    from core.data.arrays import read_local_or_s3
    from settings import get_common_settings

    settings = get_common_settings()
    return partial(
        read_local_or_s3,
        endpoint_url=settings.s3_endpoint_url,
        max_attempts=settings.storage_max_attempts,
        timeout_s=settings.storage_timeout_seconds,
    )


def train_command(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Job spec (YAML or JSON).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder for checkpoints, metrics, export.")],
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = False,
) -> None:
    """Train locally; writes summary.json, metrics.jsonl, checkpoints/ and student/ under --out."""
    spec = _load_spec(spec_path)
    from core.data import prepare
    from core.engine.checkpoint import LocalCheckpointStore
    from core.engine.evaluation import PRIMARY_METRIC
    from core.engine.tracking_local import FanOutTracker, MetricsFileTracker, RichProgressTracker
    from core.engine.trainer import train
    from core.errors import MmkdError

    store = LocalCheckpointStore(out / "checkpoints", keep_last=spec.checkpoint.keep_last)
    if not resume and (store.load_latest() is not None or (out / "summary.json").exists()):
        fail(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    # metrics.jsonl is the run's metric record (core.metrics); a resume keeps it up to its checkpoint.
    tracker = FanOutTracker(MetricsFileTracker(out / "metrics.jsonl"), RichProgressTracker(PRIMARY_METRIC[spec.task]))
    try:
        data = prepare(spec.dataset, spec.task, read=_reader())
        summary = train(spec, workdir=out, tracker=tracker, checkpoints=store, data=data)
    except MmkdError as exc:
        fail(str(exc))
    except RuntimeError as exc:
        fail(f"training failed: {exc}")
    console.print(result_table(summary))
    console.print(f"student exported to {out / 'student'}")


def predict_command(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="An exported student folder.")],
    data: Annotated[Path, typer.Argument(metavar="DATA.npz", help="Primary modalities, one array each.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write prediction (and scores).")],
) -> None:
    """Predict with an exported student from primary modalities only."""
    if not (model_dir / "model.json").is_file():
        fail(f"{model_dir}: not an exported student (no model.json)")
    if not data.is_file():
        fail(f"{data}: no such file")
    import numpy as np

    from core.engine.export import predict_file
    from core.errors import MmkdError

    try:
        result = predict_file(model_dir, data)
    except MmkdError as exc:
        fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **result)  # type: ignore[arg-type]
    console.print(f"{len(result['prediction'])} predictions written to {out}")


def datasets_command() -> None:
    """List the built-in datasets with their modalities and shapes."""
    from core.data.arrays import _builtin_bytes, read_npz

    table = Table(title="built-in datasets")
    for column in ("name", "samples", "classes", "modalities (per-sample shape)", "split"):
        table.add_column(column)
    for name in ("mfeat", "basic_motions"):
        arrays = read_npz(*_builtin_bytes(name))
        modalities = [key for key in arrays if key not in ("label", "split", "class_names")]
        shapes = ", ".join(f"{key} {tuple(arrays[key].shape[1:])}" for key in modalities)
        split = "shipped" if "split" in arrays else "seeded stratified"
        table.add_row(name, str(len(arrays["label"])), str(len(arrays["class_names"])), shapes, split)
    console.print(table)
    console.print("Sources and licences: core/data/builtin/README.md")


def register(app: typer.Typer) -> None:
    """Add the local commands to ``app`` (``mmkd datasets builtin`` lives in ``cli.datasets``)."""
    app.command("train")(train_command)
    app.command("predict")(predict_command)
