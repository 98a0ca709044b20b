"""Local commands: ``mmkd train``, ``mmkd tune``, ``mmkd predict``, ``mmkd probe`` (and the table behind
``mmkd datasets builtin``). torch loads inside them only."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.common import fail
from core.errors import one_line

if TYPE_CHECKING:
    from cli.run_folder import RunFolder
    from core.data.prepare import PreparedData
    from core.spec import JobSpec

console = Console()


def _load_spec(path: Path) -> JobSpec:
    from core.errors import SpecError
    from core.spec import load_spec

    try:
        return load_spec(path)
    except SpecError as exc:  # one line that starts with the path
        fail(one_line(str(exc)))


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


def gain_line(gain: dict[str, Any]) -> str:
    """The student against the reference trained in the same run; a study's gain over several seeds says
    so (its interval resamples the seeds, not the test samples)."""
    if gain.get("over") == "seeds":
        return (
            f"against {gain['reference_method']}, mean of {gain['seeds']} seeds: test {gain['metric']} "
            f"{gain['student']:.4f} vs {gain['reference']:.4f}, gain {gain['value']:+.4f} "
            f"[95% bootstrap over the seeds: {gain['low']:+.4f}, {gain['high']:+.4f}]"
        )
    return (
        f"against {gain['reference_method']} on the same split: test {gain['metric']} {gain['student']:.4f} vs "
        f"{gain['reference']:.4f}, gain {gain['value']:+.4f} [95% paired bootstrap: {gain['low']:+.4f}, "
        f"{gain['high']:+.4f}]"
    )


def load_data(spec: JobSpec) -> PreparedData:
    """The spec's data from this machine's files and from S3 (the configured endpoint, retries and
    timeouts): one file read whole, or a sharded folder or prefix streamed."""
    from core.data import prepare
    from core.data.arrays import read_local_or_s3
    from core.data.shards import LocalOrS3Folders
    from settings import get_common_settings

    settings = get_common_settings()
    endpoint, attempts, timeout = (
        settings.s3_endpoint_url,
        settings.storage_max_attempts,
        settings.storage_timeout_seconds,
    )
    return prepare(
        spec.dataset,
        spec.task,
        read=partial(read_local_or_s3, endpoint_url=endpoint, max_attempts=attempts, timeout_s=timeout),
        open_shards=LocalOrS3Folders(endpoint, attempts, timeout),
    )


def train_command(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Job spec (YAML or JSON).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create (it trains in OUT.partial).")],
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the unfinished run in OUT.partial from its newest checkpoint.")
    ] = False,
) -> None:
    """Train locally; --out gets summary.json, metrics.jsonl, checkpoints/ and student/ when the run
    finishes, and nothing before (the run trains in OUT.partial and is renamed at the end)."""
    spec = _load_spec(spec_path)
    from cli.run_folder import RunFolder

    if spec.resources.nodes > 1:
        fail(
            f"{spec_path}: resources.nodes {spec.resources.nodes}: several hosts run on a Ray cluster through the "
            "service; `mmkd train` runs on this one"
        )
    folder = RunFolder.at(out)
    folder.check(resume=resume)  # before reading the data: a wrong --resume fails at once
    data = _prepare(spec)
    with folder.locked():  # one process trains in OUT.partial; the checks are repeated under the lock
        step = folder.check(resume=resume)
        if step is None:
            folder.create()
        else:
            console.print(f"resuming {folder.work} from the checkpoint at step {step}")
        if spec.resources.procs_per_node > 1:
            summary = _train_in_ranks(folder, spec, spec_path)
        else:
            summary = _train_in(folder, spec, data)
        folder.finish()
    console.print(result_table(summary))
    if "gain" in summary:
        console.print(gain_line(summary["gain"]))
    console.print(f"student exported to {folder.final / 'student'}")


def _prepare(spec: JobSpec) -> PreparedData:
    """The spec's data, read and checked before any folder is made."""
    from core.errors import MmkdError

    try:
        return load_data(spec)
    except MmkdError as exc:
        fail(one_line(str(exc)))


def _train_in(folder: RunFolder, spec: JobSpec, data: PreparedData) -> dict[str, Any]:
    """Train in ``folder.work``; on any failure keep it only if a checkpoint makes it resumable."""
    from core.engine.tracking_local import FanOutTracker, MetricsFileTracker, RichProgressTracker
    from core.engine.trainer import train
    from core.errors import MmkdError
    from core.metrics import PRIMARY_METRIC

    store = folder.checkpoints(spec.checkpoint.keep_last)
    try:
        # metrics.jsonl is the run's metric record (core.metrics); a resume keeps it up to its checkpoint.
        with (
            MetricsFileTracker(folder.work / "metrics.jsonl") as record,
            RichProgressTracker(PRIMARY_METRIC[spec.task]) as bar,
        ):
            return train(spec, workdir=folder.work, tracker=FanOutTracker(record, bar), checkpoints=store, data=data)
    except (MmkdError, RuntimeError, ValueError, OSError, KeyboardInterrupt) as exc:
        if isinstance(exc, MmkdError):
            reason = one_line(str(exc))
        elif isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        else:
            reason = "training failed: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        kept = folder.abandon()
        fail(reason if kept is None else f"{reason}; {kept}")
    except BaseException:
        folder.abandon()
        raise


def _train_in_ranks(folder: RunFolder, spec: JobSpec, spec_path: Path) -> dict[str, Any]:
    """Train in ``folder.work`` as ``resources.procs_per_node`` ranks under torchrun (``cli.ranks``); on a
    failure keep the folder only if a checkpoint makes it resumable."""
    import json
    import subprocess

    from core.engine.launch import torchrun_command

    procs = spec.resources.procs_per_node
    console.print(f"training on {procs} processes (torchrun, {spec.resources.device})")
    command = torchrun_command(procs, "cli.ranks", [str(spec_path.resolve()), str(folder.work)])
    try:
        finished = subprocess.run(command, check=False)
    except BaseException:
        folder.abandon()
        raise
    if finished.returncode != 0:
        kept = folder.abandon()
        reason = f"training failed on {procs} processes (torchrun exited with {finished.returncode})"
        fail(reason if kept is None else f"{reason}; {kept}")
    summary: dict[str, Any] = json.loads((folder.work / "summary.json").read_text())
    return summary


def _check_output_file(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any model is loaded."""
    if out.is_dir():
        fail(f"{out}: is a folder; --out names the file to write")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        fail(f"{out}: cannot be written: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        fail(f"{out}: cannot be written: no permission to write in {parent}")


def predict_command(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="An exported student folder.")],
    data: Annotated[Path, typer.Argument(metavar="DATA.npz", help="Primary modalities, one array each.")],
    out: Annotated[
        Path, typer.Option("--out", help="The file to write: an .npz archive of prediction (and scores), at this path.")
    ],
) -> None:
    """Predict with an exported student from primary modalities only; --out is written whole or not at all."""
    _check_output_file(out)
    from core.engine.export import predict_file
    from core.errors import MmkdError
    from settings import get_common_settings

    try:
        result = predict_file(model_dir, data, max_bytes=get_common_settings().max_dataset_bytes)
    except MmkdError as exc:
        fail(one_line(str(exc)))
    from core.files import write_npz

    try:
        write_npz(out, result)
    except OSError as exc:
        fail(f"{out}: cannot be written ({exc.strerror})")
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


def probe_table(result: dict[str, Any]) -> Table:
    """One row per primary modality set: the probe's three figures."""
    table = Table(title=f"distillability of {result['dataset']}: primary {', '.join(result['primary'])}")
    for column in ("primary modalities", "general channels", "decisive share on them", "weighted R^2"):
        table.add_column(column, justify="left" if column == "primary modalities" else "right")

    def shown(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    for name, row in result["sets"].items():
        table.add_row(
            name, shown(row["general_share"]), shown(row["decisive_general_share"]), shown(row["weighted_r2"])
        )
    return table


def probe_command(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="Job spec (YAML or JSON); its method is ignored.")],
    out: Annotated[Path | None, typer.Option("--out", help="Also write the probe's figures to this JSON file.")] = None,
) -> None:
    """Distillability probe: train the networks alone, then report how much of the teacher's decision the
    primary modalities can explain (the modality focusing diagnosis) and whether the student alone already
    has it, in minutes, before a long run."""
    spec = _load_spec(spec_path)
    if spec.task == "retrieval":
        fail(f"{spec_path}: the probe needs a task with a prediction head; retrieval has none")
    if out is not None:
        _check_output_file(out)
    data = _prepare(spec)
    import json

    from core.engine.probe import probe
    from core.engine.tracking_local import RichProgressTracker
    from core.files import atomic_write
    from core.metrics import PRIMARY_METRIC

    with RichProgressTracker(PRIMARY_METRIC[spec.task]) as bar:
        result = probe(spec, data=data, tracker=bar)
    console.print(probe_table(result))
    metric = next(iter(result["teacher_val"]))
    console.print(
        f"validation {metric} after {result['teacher_epochs']} epochs: teacher {result['teacher_val'][metric]:.4f}, "
        f"teacher as the primary modalities reproduce it {result['reachable_val'][metric]:.4f}, "
        f"student alone {result['student_val'][metric]:.4f} (room {result['room']:+.4f})"
    )
    console.print(f"prediction: {result['verdict']}")
    if out is not None:
        try:
            atomic_write(out, (json.dumps(result, indent=2) + "\n").encode())
        except OSError as exc:
            fail(f"{out}: cannot be written ({exc.strerror})")
        console.print(f"figures written to {out}")


def _load_study(spec_path: Path, study_path: Path) -> Any:
    """The study file with SPEC as its base, validated; every problem is one line naming the file."""
    from core.errors import SpecError
    from core.spec import validate_spec_data
    from core.spec_yaml import parse_spec_mapping, read_spec_file
    from studies.spec import StudySpec

    try:
        base = parse_spec_mapping(read_spec_file(spec_path), str(spec_path))
        study = parse_spec_mapping(read_spec_file(study_path), str(study_path))
        if "base" in study:
            fail(f"{study_path}: has a base; with mmkd tune, SPEC is the base")
        return validate_spec_data(StudySpec, {**study, "base": base}, str(study_path), what="study")
    except SpecError as exc:
        fail(one_line(str(exc)))


def tune_command(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="The base job spec (YAML or JSON).")],
    study_path: Annotated[
        Path, typer.Argument(metavar="STUDY", help="The study: space, trials, objective, pruner... (no base).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder to create: trials, finalists, optuna.db, study.json.")],
) -> None:
    """Search locally, without a server: the study's trials one after another (pruned by its pruner), then
    the winner trained again with the reference; prints the winner and its gain over training alone."""
    study = _load_study(spec_path, study_path)
    if out.exists():
        fail(f"{out}: exists; --out names a folder to create")
    from core.errors import MmkdError
    from core.tracking import Tracker
    from studies.local import tune
    from studies.spec import trial_spec

    data = _prepare(trial_spec(study.base, {"method.name": "student_only"}))  # every trial's data

    def train_run(job_spec: JobSpec, workdir: Path, tracker: Tracker) -> dict[str, Any]:
        from core.engine.tracking_local import FanOutTracker, MetricsFileTracker
        from core.engine.trainer import train

        workdir.mkdir(parents=True)
        with MetricsFileTracker(workdir / "metrics.jsonl") as record:
            return train(job_spec, workdir=workdir, tracker=FanOutTracker(record, tracker), checkpoints=None, data=data)

    try:
        result = tune(study, out=out, train_run=train_run, echo=console.print)
    except MmkdError as exc:
        fail(one_line(str(exc)))
    winner = result["winner"]
    console.print(
        f"winner: trial {winner['trial']} {winner['values']}, validation {result['metric']} "
        f"{winner['validation']:.4f}; test {result['test']:.4f} (trials: {result['trials']})"
    )
    if result["gain"] is not None:
        console.print(gain_line(result["gain"]))
    console.print(f"student exported to {out / 'final-s0' / 'student'}; the study's record is {out / 'study.json'}")


def register(app: typer.Typer) -> None:
    """Add the local commands to ``app`` (``mmkd datasets builtin`` lives in ``cli.datasets``)."""
    app.command("train")(train_command)
    app.command("tune")(tune_command)
    app.command("predict")(predict_command)
    app.command("probe")(probe_command)
