"""``make demo``: the embedded stack end to end.

Starts ``mmkd up`` (API, one Celery worker, reaper; SQLite, kombu's SQLAlchemy transport and a local
artifact folder), submits ``examples/mfeat-distill.yaml`` (the setting where distillation pays: 10 %
of mfeat's labels, the rest kept unlabelled, frozen-teacher logit KD) and a ``student_only``
reference on the same split through the SDK, shows live progress, prints the result table with the
student's gain over the reference and where the exported student is, predicts the test split with
the downloaded student through the CLI, then stops everything.

Every file the demo writes lies under ``bench/out/demo`` (git-ignored, emptied at each start):
``up.log``, ``home/`` (the stack's database, broker, artifacts and worker files), ``student/`` (the
student downloaded through the API), ``primary.npz`` and ``predictions.npz`` (the README's
``datasets export`` and ``predict`` on it), and ``cache/`` and ``tmp/``, where the stack's libraries
put their caches and temporary files instead of the user's home and /tmp.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from mmkd_client import Client
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "demo"
SPEC = ROOT / "examples" / "mfeat-distill.yaml"
MMKD = str(Path(sys.executable).with_name("mmkd"))
console = Console()


def contained_environment() -> dict[str, str]:
    """Environment that sends the stack's caches (matplotlib's fonts, XDG caches) and temporary files into OUT."""
    folders = {"XDG_CACHE_HOME": OUT / "cache", "MPLCONFIGDIR": OUT / "cache" / "matplotlib", "TMPDIR": OUT / "tmp"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {name: str(folder) for name, folder in folders.items()}


def start_stack(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``mmkd up`` on a free loopback port; returns the process and the API URL once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMKD_")}
    env.update(MMKD_HOME=str(home), PYTHONUNBUFFERED="1", **contained_environment())
    with (OUT / "up.log").open("wb") as log:
        process = subprocess.Popen(
            [MMKD, "up", "--port", str(port)], env=env, cwd=OUT, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while "mmkd is up" not in (OUT / "up.log").read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mmkd up did not start; see {OUT / 'up.log'}")
        time.sleep(0.3)
    for line in (OUT / "up.log").read_text().splitlines():
        if line.startswith(("mmkd is up", "  home")):
            console.print(line)
    return process, url


def predict_test_split() -> float | None:
    """The README's tour on the downloaded student, in OUT: ``datasets export`` the test split's primary
    modalities, ``predict`` them, and score the predictions against the exported labels (None on a failure)."""
    export = ["datasets", "export", "--like", "student", "--split", "test", "--out", "primary.npz"]
    predict = ["predict", "student", "primary.npz", "--out", "predictions.npz"]
    for arguments in (export, predict):
        console.print(f"$ mmkd {' '.join(arguments)}   (in {OUT})")
        if subprocess.run([MMKD, *arguments], cwd=OUT, env={**os.environ, **contained_environment()}).returncode:
            return None
    with np.load(OUT / "primary.npz") as truth, np.load(OUT / "predictions.npz") as predicted:
        return float((truth["label"] == predicted["prediction"]).mean())


def follow(client: Client, job_id: int, label: str) -> Any:
    """A live bar for one job (step, epoch, ETA, validation accuracy) until it ends."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.fields[where]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=None, where="queued", detail="")
        while True:
            job = client.get(job_id)
            p = job.progress
            accuracy = {k.split("/")[1][0].upper(): v for k, v in job.latest_metrics.items() if k.endswith("/accuracy")}
            bar.update(
                task,
                total=p.total_steps,
                completed=p.step or 0,
                where=f"{job.status} {p.epoch or 0}/{p.total_epochs or '?'} epochs",
                detail=(f"eta {p.eta_seconds:.0f}s " if p.eta_seconds else "")
                + "val acc "
                + " ".join(f"{net}={value:.3f}" for net, value in sorted(accuracy.items())),
            )
            if job.done:
                return job
            time.sleep(1.0)


def result_table(distilled: Any, reference: Any, method: str) -> Table:
    """Test-split accuracy and macro-F1 of every network of the distilled job, plus the reference's student."""
    table = Table(title=f"mfeat, 10% of the labels, test split (seed {distilled.seed})")
    for column in ("method", "network", "accuracy", "macro_f1"):
        table.add_column(column)
    rows = [(distilled, method, net) for net in ("student", "teacher", "auxiliary")]
    rows.append((reference, "student_only", "student"))
    for job, name, network in rows:
        metrics = (job.result or {}).get(network, {})
        cells = [f"{metrics[m]:.4f}" if m in metrics else "-" for m in ("accuracy", "macro_f1")]
        table.add_row(name, network, *cells)
    return table


def gain_line(distilled: Any, reference: Any, method: str) -> str:
    """The product's promise in one line: the distilled student against the student trained alone."""
    ours, alone = distilled.result["student"]["accuracy"], reference.result["student"]["accuracy"]
    return (
        f"student by {method}: {100 * ours:.1f}% vs student_only {100 * alone:.1f}% on the same split: "
        f"gain {100 * (ours - alone):+.1f} points (one seed; docs/results.md: the gain over 10 seeds with its interval)"
    )


def main() -> int:
    """Run the demo; returns the exit code."""
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    spec = load_spec(SPEC)
    reference_spec = spec.model_copy(update={"name": f"{spec.name}-student-only"}).model_dump(mode="json")
    reference_spec["method"] = {"name": "student_only"}
    process, url = start_stack(OUT / "home")
    try:
        with Client(url) as client:
            distilled_id = client.submit(spec).id
            reference_id = client.submit(reference_spec).id
            console.print(f"submitted job {distilled_id} ({SPEC.name}) and job {reference_id} (student_only reference)")
            compare = f"{url}/compare?ids={distilled_id},{reference_id}"
            console.print(f"watch them live in a browser: {url}/jobs/{distilled_id} (both: {compare})")
            distilled = follow(client, distilled_id, f"job {distilled_id} {spec.method.name}")
            reference = follow(client, reference_id, f"job {reference_id} student_only")
            console.print(result_table(distilled, reference, spec.method.name))
            if distilled.status == reference.status == "succeeded":
                console.print(gain_line(distilled, reference, spec.method.name))
            student = OUT / "student"
            student.mkdir()
            for artifact in client.artifacts(distilled_id):
                if artifact.kind == "student":
                    client.download(distilled_id, artifact, student)
        stored = OUT / "home" / "artifacts" / "jobs" / str(distilled_id)
        console.print(f"exported student (downloaded through the API): {student}")
        console.print(f"all artifacts of job {distilled_id} in the local store: {stored}")
        if distilled.status != "succeeded" or reference.status != "succeeded":
            return 1
        accuracy = predict_test_split()
        if accuracy is None:
            return 1
        reported = distilled.result["student"]["accuracy"]
        console.print(f"predictions.npz on the test split: accuracy {accuracy:.4f} (the job reported {reported:.4f})")
        return 0
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        console.print("embedded stack stopped")
        written = ", ".join(sorted(path.name + ("/" if path.is_dir() else "") for path in OUT.iterdir()))
        console.print(f"everything this demo wrote is in {OUT} ({written}); the next run starts it afresh")


if __name__ == "__main__":
    sys.exit(main())
