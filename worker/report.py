"""The small report uploaded with every successful job: a markdown result table from the summary, the
student's gain over the job's reference when it has one, the run's warnings (``core.engine.health``),
and a PNG of the training curves from the job's metric series (``core.metrics``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.metrics import Series, is_validation, label

NETWORKS = ("student", "teacher", "auxiliary")


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


def gain_section(summary: Mapping[str, Any]) -> str:
    """The student against the job's reference (``reference`` in the spec), or nothing without one."""
    gain = summary.get("gain")
    if not isinstance(gain, Mapping):
        return ""
    return (
        f"Against the reference ({gain.get('reference_method')}, same split and seed), test {gain.get('metric')}: "
        f"student {gain.get('student'):.4f}, reference {gain.get('reference'):.4f}, "
        f"gain {gain.get('value'):+.4f} (95% paired bootstrap interval over {gain.get('test_samples')} test samples: "
        f"[{gain.get('low'):+.4f}, {gain.get('high'):+.4f}])."
    )


def warnings_section(summary: Mapping[str, Any]) -> str:
    """The run's warnings, one bullet each, or a line saying there were none."""
    warnings = summary.get("warnings") or []
    if not warnings:
        return "Warnings: none."
    return "\n".join(["Warnings:", *(f"- {warning.get('message')}" for warning in warnings)])


def plot_curves(series: Series, out: Path, *, title: str) -> None:
    """Training losses (left) and validation metrics (right) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, metrics) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in sorted(series.items()):
        axis = metrics if is_validation(name) else losses
        steps, values = zip(*points, strict=True)
        axis.plot(steps, values, label=label(name), marker="." if axis is metrics else None)
    for axis, title in ((losses, "training losses"), (metrics, "validation metrics")):
        axis.set_title(title)
        axis.set_xlabel("step")
        if axis.lines:
            axis.legend(fontsize=7)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def write_report(workdir: Path, summary: Mapping[str, Any], series: Series, *, job_id: int) -> Path:
    """Write ``workdir/report/{report.md,curves.png}``; returns the folder."""
    folder = workdir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    title = f"job {job_id}: {summary.get('name')} ({summary.get('method')} on {summary.get('dataset')})"
    plot_curves(series, folder / "curves.png", title=title)
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
            *([gain_section(summary)] if summary.get("gain") else []),
            "\n".join(facts),
            warnings_section(summary),
            "![training curves](curves.png)",
        ]
    )
    (folder / "report.md").write_text(text + "\n")
    return folder
