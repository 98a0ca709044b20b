"""Write docs/results.md and docs/results.png from bench/results/accuracy.json.

    python -m bench.report_accuracy

The three claims of the method spec are judged per dataset and label setting by fixed rules,
stated in the page, on the test accuracy over the reported seeds.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path("bench/results/accuracy.json")
PAGE = Path("docs/results.md")
PLOT = Path("docs/results.png")
NETWORKS = ("student", "teacher", "auxiliary")


def stats(runs: list[dict[str, Any]], network: str, metric: str = "accuracy") -> tuple[float, float]:
    """Mean and sample standard deviation over seeds."""
    values = [run[network][metric] for run in runs]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(mean_std: tuple[float, float]) -> str:
    """Accuracy in percent, mean +- std."""
    return f"{100 * mean_std[0]:.1f} ± {100 * mean_std[1]:.1f}"


def paired_gain(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Mean per-seed difference of the student's test accuracy to the reference's on the same seeds,
    with its 95 % t-interval: (mean, low, high), in accuracy units."""
    from scipy import stats as scipy_stats

    by_seed = {run["seed"]: run["student"]["accuracy"] for run in reference}
    diffs = [run["student"]["accuracy"] - by_seed[run["seed"]] for run in runs if run["seed"] in by_seed]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = scipy_stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def fmt_gain(gain: tuple[float, float, float]) -> str:
    """A paired gain in points with its interval; bold when the interval excludes 0."""
    mean, low, high = (100 * value for value in gain)
    text = f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def claims(cell: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(claim, held, evidence) for the three claims on one dataset/setting."""
    runs = cell["runs"]
    ceiling = stats(runs["teacher_only"], "teacher")
    joint = stats(runs["mi_joint"], "teacher")
    weak = joint[0] < ceiling[0] - ceiling[1]
    out = [
        (
            "1. weak teacher under mi_joint",
            weak,
            f"teacher {fmt(joint)} under mi_joint vs {fmt(ceiling)} under teacher_only",
        )
    ]
    kept = {row: stats(runs[row], "teacher") for row in ("mi_joint_aux", "paper")}
    holds = all(mean >= ceiling[0] - ceiling[1] for mean, _ in kept.values()) and weak
    evidence = ", ".join(f"{row} {fmt(value)}" for row, value in kept.items())
    note = "" if weak else " (moot: mi_joint did not weaken the teacher)"
    out.append(("2. I(T;A) keeps the teacher at teacher_only level", holds, f"teacher: {evidence}{note}"))
    paper = stats(runs["paper"], "student")
    others = {
        row: stats(runs[row], "student")
        for row in runs
        if row not in ("paper", "paper+kd", "teacher_only") and "/" not in row  # ablation rows are not methods
    }
    best_other = max(others, key=lambda row: others[row][0])
    gains = paper[0] > others[best_other][0]
    out.append(
        (
            "3. the paper's student beats student_only and every baseline",
            gains,
            f"student {fmt(paper)} under paper; best other: {best_other} {fmt(others[best_other])};"
            f" student_only {fmt(others['student_only'])}",
        )
    )
    return out


def table(cell: dict[str, Any]) -> list[str]:
    """Markdown rows: test accuracy of the three networks per method, and the chosen config."""
    lines = [
        "| method | student | student gain over student_only (95% CI) | teacher | auxiliary | chosen on validation |",
        "|---|---|---|---|---|---|",
    ]
    reference = cell["runs"]["student_only"]
    for row, runs in cell["runs"].items():
        chosen = {k: v for k, v in cell["chosen"][row].items() if k != "name"}
        shown = ", ".join(f"{k}={v}" for k, v in chosen.items()) or "defaults"
        student, teacher, auxiliary = (fmt(stats(runs, network)) for network in NETWORKS)
        gain = "—" if row in ("student_only", "teacher_only") else fmt_gain(paired_gain(runs, reference))
        lines.append(f"| {row} | {student} | {gain} | {teacher} | {auxiliary} | {shown} |")
    return lines


PROBE = Path("bench/results/probe.json")


def best_gain(cell: dict[str, Any]) -> tuple[str, tuple[float, float, float]]:
    """The method row with the largest mean paired gain over student_only, and that gain."""
    reference = cell["runs"]["student_only"]
    gains = {
        row: paired_gain(runs, reference)
        for row, runs in cell["runs"].items()
        if row not in ("student_only", "teacher_only") and "/" not in row
    }
    row = max(gains, key=lambda name: gains[name][0])
    return row, gains[row]


def probe_section(results: dict[str, Any]) -> list[str]:
    """The probe's figures (bench/results/probe.json) beside each setting's best measured gain."""
    if not PROBE.exists():
        return []
    probes = json.loads(PROBE.read_text())
    lines = [
        "## The distillability probe beside the gains",
        "",
        "`python -m bench.probe --processes 2` runs `mmkd probe`'s computation (the networks trained alone, then the"
        " modality-focusing diagnosis; docs/method.md) with this page's model and schedule, seeds 0–2."
        " Weighted R²: how much of the teacher's decision the primary modalities explain. Room: validation"
        " accuracy of the teacher as its primary encoders reproduce it minus the student trained alone (points);"
        " the probe predicts a gain when both are high enough (verdicts: docs/method.md)."
        " Best gain: the row above with the largest mean paired gain.",
        "",
        "| dataset | labels | probe: weighted R² | probe: general channels | probe: room (points)"
        " | probe: verdicts | best method | its gain over student_only (95% CI) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, cells in results.items():
        for setting, cell in cells.items():
            runs = probes.get(dataset, {}).get(setting)
            if not runs:
                continue
            overall = [run["weighted_r2"] for run in runs]
            first = next(iter(runs[0]["sets"]))
            general = [run["sets"][first]["general_share"] for run in runs]
            room = [run["room"] for run in runs]
            said = [
                "no gain" if "no gain" in run["verdict"] else "little" if "little" in run["verdict"] else "gain"
                for run in runs
            ]
            verdicts = ", ".join(f"{said.count(word)}× {word}" for word in dict.fromkeys(said))
            row, gain = best_gain(cell)

            def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{scale * statistics.mean(values):.{digits}f} ± {scale * std:.{digits}f}"

            lines.append(
                f"| {dataset} | {setting} | {spread(overall)} | {spread(general)} | {spread(room, 100, 1)} "
                f"| {verdicts} | {row} | {fmt_gain(gain)} |"
            )
    return [*lines, ""]


def plot(results: dict[str, Any]) -> None:
    """Student test accuracy per method, one panel per dataset, bars per label setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 4.5), squeeze=False)
    for axis, (dataset, cells) in zip(axes[0], results.items(), strict=True):
        first = next(iter(cells.values()))["runs"]
        rows = [row for row in first if row != "teacher_only" and all(row in cell["runs"] for cell in cells.values())]
        width = 0.8 / len(cells)
        for index, (setting, cell) in enumerate(cells.items()):
            means = [100 * stats(cell["runs"][row], "student")[0] for row in rows]
            errors = [100 * stats(cell["runs"][row], "student")[1] for row in rows]
            positions = [i + index * width for i in range(len(rows))]
            axis.bar(positions, means, width, yerr=errors, label=setting, capsize=2)
        axis.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], rows, rotation=35, ha="right")
        low = min(100 * stats(c["runs"][r], "student")[0] for c in cells.values() for r in rows)
        axis.set_ylim(max(0, low - 10), 100)
        axis.set_ylabel("student test accuracy (%)")
        axis.set_title(dataset)
        axis.legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def write_report(results: dict[str, Any]) -> None:
    """Render the page and the plot."""
    lines = [Path("bench/results_intro.md").read_text().rstrip(), ""]
    verdicts = []
    for dataset, cells in results.items():
        for setting, cell in cells.items():
            seeds = len(next(iter(cell["runs"].values())))
            sizes = next(iter(cell["runs"].values()))[0]["data"]
            lines += [
                f"## {dataset}, {setting} labels",
                "",
                f"Test accuracy (%), mean ± std over {seeds} seeds; train {sizes['sizes']['train']} samples"
                f" ({sizes['train_labelled']} labelled), val {sizes['sizes']['val']}, test {sizes['sizes']['test']}."
                " Gain: the mean per-seed difference to student_only's student on the same seeds, in points, with"
                " its 95% t-interval; bold when the interval excludes 0.",
                "",
                *table(cell),
                "",
            ]
            for claim, held, evidence in claims(cell):
                verdicts.append(f"| {dataset} | {setting} | {claim} | {'held' if held else 'not held'} | {evidence} |")
    lines += [
        "## The three claims",
        "",
        "Rules: (1) holds when the mean teacher accuracy under mi_joint is more than one teacher_only std"
        " below teacher_only's mean; (2) holds when (1) holds and the teacher under mi_joint_aux and paper"
        " stays within one teacher_only std of teacher_only's mean; (3) holds when the paper's student"
        " mean beats the mean of every other row (paper+kd excluded, teacher_only has no different student).",
        "",
        "| dataset | labels | claim | verdict | evidence |",
        "|---|---|---|---|---|",
        *verdicts,
        "",
        "![student test accuracy per method](results.png)",
        "",
        *probe_section(results),
    ]
    outro = Path("bench/results_outro.md")
    if outro.exists():
        lines.append(outro.read_text())
    PAGE.write_text("\n".join(lines))
    plot(results)


def main() -> None:
    """Entry point."""
    write_report(json.loads(RESULTS.read_text()))


if __name__ == "__main__":
    main()
