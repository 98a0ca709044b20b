"""The small report uploaded with every successful job: a markdown result table and a PNG of the
training curves, both built from files the trainer wrote (``summary.json``, ``metrics.jsonl``)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NETWORKS = ("student", "teacher", "auxiliary")
Series = dict[str, list[tuple[int, float]]]
_NOT_SERIES = frozenset({"kind", "time", "step", "epoch"})


def result_table(summary: Mapping[str, Any]) -> str:
    """A markdown table: one row per network, one column per test metric."""
    metrics = sorted({name for net in NETWORKS for name in (summary.get(net) or {})})
    lines = [
        "| network | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for net in NETWORKS:
        values = summary.get(net) or {}
        cells = [f"{values[m]:.4f}" if isinstance(values.get(m), int | float) else "" for m in metrics]
        lines.append(f"| {net} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_series(path: Path) -> Series:
    """Series by name from the trainer's metrics.jsonl: ``train/{term}`` from ``train`` lines and
    ``val/{network}/{metric}`` from ``val`` lines, each as ``(step, value)`` points."""
    series: Series = defaultdict(list)
    if not path.exists():
        return series
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        kind = record.get("kind")
        if kind not in ("train", "val"):
            continue
        for name, value in record.items():
            if name not in _NOT_SERIES and isinstance(value, int | float):
                series[f"{kind}/{name}"].append((int(record["step"]), float(value)))
    return series


def plot_curves(series: Series, out: Path, *, title: str) -> None:
    """Training losses (left) and validation metrics (right) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, metrics) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in sorted(series.items()):
        axis = metrics if name.startswith("val/") else losses
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, label=name.split("/", 1)[-1], marker="." if axis is metrics else None)
    for axis, label in ((losses, "training losses"), (metrics, "validation metrics")):
        axis.set_title(label)
        axis.set_xlabel("step")
        if axis.lines:
            axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def write_report(workdir: Path, summary: Mapping[str, Any], *, job_id: int) -> Path:
    """Write ``workdir/report/{report.md,curves.png}``; returns the folder."""
    folder = workdir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    title = f"job {job_id}: {summary.get('name')} ({summary.get('method')} on {summary.get('dataset')})"
    plot_curves(read_series(workdir / "metrics.jsonl"), folder / "curves.png", title=title)
    facts = [
        f"- seed: {summary.get('seed')}",
        f"- steps: {summary.get('steps')} over {summary.get('epochs')} epochs",
        f"- resumed from step: {summary.get('resumed_from_step') or 'no'}",
        f"- training time: {summary.get('seconds')} s",
    ]
    text = "\n\n".join(
        [
            f"# {title}",
            "Test split:",
            result_table(summary),
            "\n".join(facts),
            "![training curves](curves.png)",
        ]
    )
    (folder / "report.md").write_text(text + "\n")
    return folder
