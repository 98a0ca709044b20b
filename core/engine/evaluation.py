"""Held-out metrics per task: what the trainer reports each epoch and once on the test split."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, f1_score

from core.metrics import LOWER_IS_BETTER
from core.spec import TaskKind


def at_least_as_good(metric: str, value: float, reference: float) -> bool:
    """Whether ``value`` of ``metric`` is as good as ``reference`` or better, in the metric's direction."""
    return value <= reference if metric in LOWER_IS_BETTER else value >= reference


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1."""
    predicted = logits.argmax(axis=1)
    return {
        "accuracy": float((predicted == labels).mean()),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def multilabel_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean average precision over labels that occur, and micro-F1 at threshold 0.5."""
    present = labels.sum(axis=0) > 0
    mean_ap = average_precision_score(labels[:, present], logits[:, present], average="macro")
    predicted = (logits > 0).astype(int)
    return {
        "mean_ap": float(mean_ap),
        "f1": float(f1_score(labels, predicted, average="micro", zero_division=0)),
    }


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean absolute error and Pearson r (averaged over target columns)."""
    predictions = predictions.reshape(len(predictions), -1)
    targets = targets.reshape(len(targets), -1)
    rs = []
    for column in range(targets.shape[1]):
        p, t = predictions[:, column], targets[:, column]
        rs.append(0.0 if p.std() == 0 or t.std() == 0 else float(np.corrcoef(p, t)[0, 1]))
    return {"mae": float(np.abs(predictions - targets).mean()), "pearson_r": float(np.mean(rs))}


def retrieval_metrics(queries: np.ndarray, gallery: np.ndarray) -> dict[str, float]:
    """Query i should retrieve gallery item i: R@1/5/10 and median rank (1 = best), cosine scores."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True).clip(1e-12)
    scores = q @ g.T
    ranks = (scores > scores[np.arange(len(q)), np.arange(len(q))][:, None]).sum(axis=1) + 1
    metrics = {f"r@{k}": float((ranks <= k).mean()) for k in (1, 5, 10)}
    metrics["median_rank"] = float(np.median(ranks))
    return metrics


def compute_metrics(
    task: TaskKind, outputs: torch.Tensor, labels: np.ndarray | None, targets: torch.Tensor | None = None
) -> dict[str, float]:
    """Dispatch on the task. ``targets`` are the gallery embeddings for retrieval."""
    out = outputs.detach().float().cpu().numpy()
    if task == "retrieval":
        assert targets is not None
        return retrieval_metrics(out, targets.detach().float().cpu().numpy())
    assert labels is not None
    if task == "classification":
        return classification_metrics(out, labels)
    if task == "multilabel":
        return multilabel_metrics(out, labels)
    return regression_metrics(out, labels)


def paired_bootstrap(
    task: TaskKind,
    metric: str,
    outputs: torch.Tensor,
    reference: torch.Tensor,
    labels: np.ndarray,
    *,
    resamples: int,
    seed: int,
    every: int = 100,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The student's ``metric`` against the reference's on the same test samples: both values, the gain
    (student minus reference, or the reverse for an error such as mae, so a positive gain is always
    better), and its 95% percentile interval over ``resamples`` paired bootstrap resamples of the
    samples (the same rows for both students), drawn from ``seed``.

    A resample whose metric is undefined (multilabel: no positive label among its rows) is drawn but
    not counted; ``resamples`` in the answer is the number that counted. ``check`` is called every
    ``every`` resamples (a caller's cancel check and progress mark)."""
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    ours, theirs = outputs.detach().float().cpu().numpy(), reference.detach().float().cpu().numpy()

    def value(out: np.ndarray, rows: np.ndarray | slice) -> float:
        if task == "multilabel" and not labels[rows].any():
            return float("nan")  # average precision needs a positive label
        return compute_metrics(task, torch.from_numpy(out[rows]), labels[rows])[metric]

    student, baseline = value(ours, slice(None)), value(theirs, slice(None))
    generator = np.random.default_rng(seed)
    n = len(labels)
    draws = []
    for drawn in range(resamples):
        if check is not None and drawn % every == 0:
            check()
        rows = generator.integers(0, n, n)
        draws.append(sign * (value(ours, rows) - value(theirs, rows)))
    counted = [draw for draw in draws if math.isfinite(draw)]
    low, high = np.percentile(counted, [2.5, 97.5]) if counted else (float("nan"), float("nan"))
    return {
        "metric": metric,
        "student": student,
        "reference": baseline,
        "value": sign * (student - baseline),
        "low": float(low),
        "high": float(high),
        "resamples": len(counted),
        "test_samples": n,
    }
