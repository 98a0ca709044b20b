"""``mmkd studies``: create, inspect, list and cancel studies on an mmkd server (through the SDK). A
study searches job specs; each trial is an ordinary job per seed (``mmkd jobs`` shows them too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.common import fail
from cli.jobs import DEFAULT_URL, JsonOption, KeyOption, UrlOption, connect

if TYPE_CHECKING:
    from mmkd_client import Client, Study

studies_app = typer.Typer(no_args_is_help=True, help="Search for the best student on an mmkd server (studies).")


def register(app: typer.Typer) -> None:
    """Add ``mmkd studies ...`` to ``app``."""
    app.add_typer(studies_app, name="studies")


@studies_app.command()
def create(
    spec: Annotated[Path, typer.Argument(metavar="STUDY", help="Study spec, YAML or JSON (base, space, trials...).")],
    wait: Annotated[bool, typer.Option("--wait", help="Poll the study until it ends; print its result.")] = False,
    poll: Annotated[float, typer.Option(min=0.1, help="Seconds between polls with --wait.")] = 5.0,
    timeout: Annotated[float | None, typer.Option(min=0, help="With --wait, give up after this many seconds.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Reuse to make retries safe.")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """Create a study; its first trials are queued as jobs. The spec is checked here first."""
    body = _checked_study(spec)
    with connect(url, api_key) as client:
        study = client.create_study(body, idempotency_key=idempotency_key)
        typer.echo(f"created study {study.id} ({study.name}): {study.status}")
        if wait:
            study = _wait(client, study.id, poll, timeout)
    if wait and study.result:  # its final status was the wait's last line
        _print_result(study.result)


def _checked_study(path: Path) -> dict[str, Any]:
    """The study file's fields as written, after the server's own checks of a study spec: a bad file
    is one line naming it and the problem, and no request is sent."""
    from core.errors import SpecError, one_line
    from core.spec import validate_spec_data
    from core.spec_yaml import parse_spec_mapping, read_spec_file
    from studies.spec import StudySpec

    try:
        data = parse_spec_mapping(read_spec_file(path), str(path))
        study = validate_spec_data(StudySpec, data, str(path), what="study")
    except SpecError as exc:
        fail(one_line(str(exc)))
    return study.model_dump(mode="json", exclude_unset=True)


def _wait(client: Client, study_id: int, poll: float, timeout: float | None) -> Study:
    """Poll until the study ends, echoing each change of its status or reason; the study if it
    succeeded (a failed or cancelled study, or the timeout, is the SDK's error: one line)."""
    seen: list[tuple[str, str | None]] = []

    def show(study: Study) -> None:
        now = (study.status, study.status_reason)
        if not seen or seen[-1] != now:
            seen.append(now)
            typer.echo(f"study {study.id}: {_status_text(study.status, study.status_reason)}")

    try:
        return client.wait_study(study_id, timeout, poll=poll, on_update=show)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@studies_app.command()
def get(study_id: int, as_json: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Show one study: its status and, once it succeeded, its winner, test metric and gain."""
    with connect(url, api_key) as client:
        study = client.study(study_id)
    if as_json:
        typer.echo(study.model_dump_json(indent=2))
        return
    from rich.console import Console

    Console().print(_study_table(study))
    if study.result:
        _print_result(study.result)


@studies_app.command("list")
def list_studies(
    status: Annotated[list[str] | None, typer.Option(help="Only these statuses (repeatable).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = 20,
    as_json: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
) -> None:
    """List your studies, newest first."""
    from itertools import islice

    with connect(url, api_key) as client:
        found = list(islice(client.studies(status=status, page_size=min(limit, 200)), limit))
    if as_json:
        typer.echo(json.dumps([study.model_dump(mode="json") for study in found], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "status")
    table.add_column("created", no_wrap=True)
    table.add_column("finished", no_wrap=True)
    table.add_column("reason")
    for study in found:
        created = study.created_at.strftime("%Y-%m-%d %H:%M:%S")
        finished = study.finished_at.strftime("%Y-%m-%d %H:%M:%S") if study.finished_at else ""
        table.add_row(str(study.id), study.name, study.status, created, finished, study.status_reason or "")
    Console().print(table)


@studies_app.command()
def trials(study_id: int, as_json: JsonOption = False, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """The study's trials in order: state, objective, last epoch reported, values and jobs."""
    with connect(url, api_key) as client:
        found = client.trials(study_id)
    if as_json:
        typer.echo(json.dumps([trial.model_dump(mode="json") for trial in found], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"study {study_id}")
    for column in ("trial", "state", "value", "epoch"):
        table.add_column(column, no_wrap=True)
    table.add_column("values", overflow="fold")  # a path=value pair has no space to wrap at
    table.add_column("jobs")
    for trial in found:
        value = "" if trial.value is None else f"{trial.value:.4f}"
        epoch = "" if trial.last_epoch is None else str(trial.last_epoch)
        jobs = ", ".join(f"{job.id} {job.status}" for job in trial.jobs)
        table.add_row(str(trial.number), trial.state, value, epoch, _values_text(trial.values), jobs)
    Console().print(table)


@studies_app.command()
def cancel(study_id: int, url: UrlOption = DEFAULT_URL, api_key: KeyOption = None) -> None:
    """Cancel a study: no more trials; queued trial jobs are cancelled, running ones stop at their next step."""
    with connect(url, api_key) as client:
        study = client.cancel_study(study_id)
    typer.echo(f"study {study.id}: {study.status}")


def _status_text(status: str, reason: str | None) -> str:
    return status + (f" ({reason})" if reason else "")


def _study_table(study: Study) -> Any:
    from rich.table import Table

    spec = study.spec
    table = Table(show_header=False, title=f"study {study.id}")
    rows = {
        "name": study.name,
        "status": _status_text(study.status, study.status_reason),
        "owner": study.owner,
        "method": str(spec.get("base", {}).get("method", {}).get("name", "")),
        "budget": f"{spec.get('trials')} trials, {spec.get('parallelism')} at once, {spec.get('seeds')} seed(s)",
        "created": str(study.created_at),
        "finished": str(study.finished_at or ""),
    }
    for name, value in rows.items():
        table.add_row(name, value)
    return table


def _print_result(result: dict[str, Any]) -> None:
    """The winner, the finalists' test metric and the gain: plain lines (never wrapped)."""
    winner, metric = result["winner"], result["metric"]
    typer.echo(
        f"winner: trial {winner['trial']} ({_values_text(winner['values']) or 'the base spec'}), "
        f"validation {metric} {winner['validation']:.4f}"
    )
    finalists = ", ".join(str(job_id) for job_id in result["finalist_job_ids"])
    typer.echo(
        f"test {metric} {result['test']:.4f} (mean over finalist jobs {finalists}; "
        f"the student is job {result['student_job_id']}'s)"
    )
    if result.get("gain"):
        from cli.local import gain_line

        typer.echo(gain_line(result["gain"]))
    counts = ", ".join(f"{state} {count}" for state, count in sorted(result.get("trials", {}).items()))
    if counts:
        typer.echo(f"trials: {counts}")


def _values_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{path}={_scalar(value)}" for path, value in values.items())


def _scalar(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
