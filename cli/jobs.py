"""``mmkd jobs``: submit, inspect, cancel and watch jobs on an mmkd server (through the SDK)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import fail

if TYPE_CHECKING:
    from mmkd_client import Client, Job, JobSummary

jobs_app = typer.Typer(no_args_is_help=True, help="Submit and follow jobs on an mmkd server.")
UrlOption = Annotated[str, typer.Option("--url", envvar="MMKD_URL", help="Server URL.")]
KeyOption = Annotated[str | None, typer.Option("--api-key", envvar="MMKD_API_KEY", help="API key.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DEFAULT_URL = "http://127.0.0.1:8000"


def register(app: typer.Typer) -> None:
    """Add ``mmkd jobs ...`` to ``app``."""
    app.add_typer(jobs_app, name="jobs")


@contextmanager
def connect(url: str, api_key: str | None) -> Iterator[Client]:
    """An SDK client; its errors become one-line messages."""
    from mmkd_client import Client, MmkdError

    try:
        client = Client(url, api_key)
    except ValueError as exc:
        fail(str(exc))
    try:
        with client:
            yield client
    except MmkdError as exc:
        fail(str(exc))


@jobs_app.command()
def submit(
    spec: Annotated[Path, typer.Argument(help="Job spec, YAML or JSON.")],
    wait: Annotated[bool, typer.Option("--wait", help="Watch the job until it ends.")] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="Reuse to make retries safe.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Submit a job spec; with --wait, follow it to the end. The spec is checked here first."""
    body = _checked_spec(spec)
    with connect(url, api_key) as client:
        try:
            job = client.submit(body, idempotency_key=idempotency_key)
        except ValueError as exc:
            fail(str(exc))
        typer.echo(f"submitted job {job.id} ({job.name}): {job.status}")
        if wait:
            _watch(client, job.id)


def _checked_spec(path: Path) -> dict[str, Any]:
    """The spec file's fields as written, after the server's own checks: a bad spec is one line
    naming the file and the problem, and no request is sent."""
    from core.errors import SpecError
    from core.spec import load_spec

    try:
        spec = load_spec(path)
    except SpecError as exc:
        fail(str(exc))
    return spec.model_dump(mode="json", exclude_unset=True)


@jobs_app.command()
def get(job_id: int, as_json: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Show one job."""
    with connect(url, api_key) as client:
        job = client.get(job_id)
    if as_json:
        typer.echo(job.model_dump_json(indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(_job_table(job))
    if job.result:
        console.print(_result_table(job.result))


@jobs_app.command("list")
def list_jobs(
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses (repeatable).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 20,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """List your jobs, newest first."""
    from itertools import islice

    with connect(url, api_key) as client:
        jobs = list(islice(client.list(status=status, page_size=min(limit, 200)), limit))
    if as_json:
        typer.echo(json.dumps([job.model_dump(mode="json") for job in jobs], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "status", "progress", "created", "reason")
    for job in jobs:
        progress = _progress_text(job)
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(job.id), job.name, job.status, progress, created, job.status_reason or "")
    Console().print(table)


@jobs_app.command()
def cancel(job_id: int, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Cancel a job (queued: at once; running: at the next step boundary)."""
    with connect(url, api_key) as client:
        job = client.cancel(job_id)
    typer.echo(f"job {job.id}: {job.status}")


@jobs_app.command()
def watch(
    job_id: int,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Follow a job live (its stream) with a progress bar; ends with the result table."""
    with connect(url, api_key) as client:
        _watch(client, job_id)


@jobs_app.command()
def logs(
    job_id: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Go on with new lines until the job ends.")] = False,
    attempt: Annotated[int | None, typer.Option(min=1, help="Only this attempt's lines.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Print the job's log lines (the server keeps each job's newest; the whole log is an artifact)."""
    with connect(url, api_key) as client:
        try:
            for line in client.logs(job_id, follow=follow, attempt=attempt):
                typer.echo(f"{line.at:%H:%M:%S} [{line.attempt}] {line.level:<7} {line.logger}: {line.message}")
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


def _watch(client: Client, job_id: int) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[where]}"),
        TextColumn("eta {task.fields[eta]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"job {job_id}", total=None, where="", eta="?", metrics="")
            for event in client.watch(job_id):
                if event.job is not None:
                    bar.update(task, **_bar_fields(event.job))
                elif event.event is not None and event.event.kind == "warning":
                    console.print(f"[yellow]warning[/yellow]: {event.event.reason}")
            job = client.get(job_id)
            bar.update(task, **_bar_fields(job))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    _finish(console, job)


def _bar_fields(job: Job) -> dict[str, Any]:
    progress = job.progress
    total = progress.total_steps or progress.total_epochs
    done = progress.step if progress.total_steps else progress.epoch
    shown = sorted(job.latest_metrics.items())[:6]
    return {
        "description": f"job {job.id} {job.status}",
        "total": total,
        "completed": (total if job.status == "succeeded" else done) or 0,
        "where": f"epoch {progress.epoch or 0}/{progress.total_epochs or '?'}",
        "eta": f"{progress.eta_seconds:.0f}s" if progress.eta_seconds is not None else "?",
        "metrics": "  ".join(f"{name}={value:.4g}" for name, value in shown),
    }


def _finish(console: Any, job: Job) -> None:
    if job.result:
        console.print(_result_table(job.result))
    if job.status == "pruned":  # a study's trial stopped early by its pruner: a normal end, as in the SDK's wait
        console.print(f"job {job.id} pruned: {job.status_reason or 'no reason given'}")
        return
    if job.status != "succeeded":
        fail(f"job {job.id} {job.status}: {job.error or job.status_reason or 'no reason given'}")
    console.print(f"job {job.id} succeeded")


def _job_table(job: Job) -> Any:
    from rich.table import Table

    table = Table(show_header=False, title=f"job {job.id}")
    rows = {
        "name": job.name,
        "status": job.status + (f" ({job.status_reason})" if job.status_reason else ""),
        "owner": job.owner,
        "attempts": f"{job.attempts}/{job.max_attempts}",
        "progress": _progress_text(job),
        "created": str(job.created_at),
        "started": str(job.started_at or ""),
        "finished": str(job.finished_at or ""),
        "error": job.error or "",
        **({"study": _study_text(job)} if job.study_id is not None else {}),
        **{name: f"{value:.6g}" for name, value in sorted(job.latest_metrics.items())},
    }
    for name, value in rows.items():
        table.add_row(name, value)
    return table


def _study_text(job: JobSummary) -> str:
    trial = f"trial {job.trial_number}" if job.trial_number is not None else "finalist"
    return f"{job.study_id}, {trial}"


def _progress_text(job: JobSummary) -> str:
    progress = job.progress
    if progress.epoch is None and progress.step is None:
        return ""
    epochs = f"epoch {progress.epoch or 0}/{progress.total_epochs or '?'}"
    return f"{epochs}, step {progress.step or 0}/{progress.total_steps or '?'}"


def _result_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table("metric", "value", title="result")
    for name, value in _flatten(result):
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value
