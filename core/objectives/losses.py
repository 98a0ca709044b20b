"""Loss primitives shared by the methods. Each docstring names its source and formula."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core import parallel
from core.spec import TaskKind


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE (van den Oord et al. 2018; CLIP's form).

    With L2-normalised rows, s_ij = <a_i, b_j> / tau and positives on the diagonal:
    L = (CE(s, diag) + CE(s^T, diag)) / 2. For a batch of N pairs, I(A;B) >= log N - L: the loss is
    not itself a bound on I(A;B), it is an upper bound on log N - I(A;B), so minimising L raises a
    lower bound on the mutual information, a bound that saturates at log N since L >= 0.

    In a distributed run the N pairs are the global batch: each rank's rows are anchors against every
    rank's rows (``core.parallel.gather``), so the loss is the single-process one.
    """
    a = F.normalize(a, dim=1)
    b = F.normalize(b, dim=1)
    every_a, every_b = parallel.gather(a), parallel.gather(b)
    targets = torch.arange(len(a), device=a.device) + parallel.rank() * len(a)
    return 0.5 * (
        F.cross_entropy(a @ every_b.t() / temperature, targets)
        + F.cross_entropy(b @ every_a.t() / temperature, targets)
    )


def task_loss(
    task: TaskKind, output: torch.Tensor, labels: torch.Tensor | None, *, label_smoothing: float = 0.0
) -> torch.Tensor:
    """The supervised loss, averaged over labelled samples only (zero when the batch has none).

    classification: cross-entropy against the label smoothed by eps (Szegedy et al. 2016,
    "Rethinking the Inception architecture"): target (1 - eps) * onehot(y) + eps / K, so
    L = (1 - eps) * CE(p, y) + eps * mean_k(-log p_k); multilabel: BCE with logits; regression: L1.
    ``label_smoothing`` applies to classification only. Written without boolean indexing or a host
    sync, since it runs for every network at every step. In a distributed run the mean is over the
    labelled samples of the global batch: the local sum over the count of every rank, times W (the
    gradients are averaged over the W ranks).
    """
    assert labels is not None, "task_loss needs labels"
    if task == "classification":
        total = F.cross_entropy(output, labels, ignore_index=-1, reduction="sum", label_smoothing=label_smoothing)
        return total * parallel.world_size() / parallel.total(labels.ge(0).sum()).clamp(min=1)
    targets = labels.reshape(output.shape)
    mask = torch.isfinite(targets)
    filled = torch.where(mask, targets, torch.zeros_like(targets))  # no NaN reaches the gradient
    if task == "multilabel":
        elementwise = F.binary_cross_entropy_with_logits(output, filled, reduction="none")
    else:
        elementwise = F.l1_loss(output, filled, reduction="none")
    rows = mask.all(dim=1, keepdim=True)
    count = parallel.total(rows.sum() * output.shape[1])
    return (elementwise * rows).sum() * parallel.world_size() / count.clamp(min=1)


def hinton_kd(
    task: TaskKind, student: torch.Tensor, teacher: torch.Tensor, temperature: float, *, detach: bool = True
) -> torch.Tensor:
    """Logit distillation (Hinton, Vinyals, Dean 2015).

    classification: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean;
    multilabel: T^2 * BCE(sigmoid(s/T), sigmoid(t/T)); regression: MSE(s, t).
    ``teacher`` is a fixed target (detached) unless ``detach`` is False (mst_distill's soft routing
    trains its gate through the mixture it builds the target from).
    """
    if detach:
        teacher = teacher.detach()
    t2 = temperature * temperature
    if task == "classification":
        log_p_student = F.log_softmax(student / temperature, dim=1)
        p_teacher = F.softmax(teacher / temperature, dim=1)
        return t2 * F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    if task == "multilabel":
        return t2 * F.binary_cross_entropy_with_logits(student / temperature, torch.sigmoid(teacher / temperature))
    return F.mse_loss(student, teacher)


def projection_head(in_dim: int, out_dim: int, layers: int) -> nn.Module:
    """The small head that maps a representation into the contrastive space (linear or 2-layer MLP)."""
    if layers == 1:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim))


#: The most elements one block of ``kendall_tau``'s pairwise comparison holds (rows x classes^2):
#: 2^22 float32 values, 16 MiB per intermediate, however large the batch.
KENDALL_BLOCK = 1 << 22


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall's tau-a between the rows of ``a`` and ``b`` (N, C), batched on the device: the mean of
    sign(a_i - a_j) * sign(b_i - b_j) over the C(C-1)/2 pairs i < j (ties count 0). C2KD's ranking
    agreement; the reference code calls scipy per sample on the CPU. Rows go in blocks of at most
    ``KENDALL_BLOCK`` comparisons, so memory is bounded by C^2 (one row), not N * C^2."""
    classes = a.shape[1]
    upper = torch.triu(torch.ones(classes, classes, dtype=torch.bool, device=a.device), diagonal=1)
    rows = max(KENDALL_BLOCK // max(classes * classes, 1), 1)
    taus = []
    for start in range(0, a.shape[0], rows):
        block_a, block_b = a[start : start + rows], b[start : start + rows]
        concordance = torch.sign(block_a[:, :, None] - block_a[:, None, :]) * torch.sign(
            block_b[:, :, None] - block_b[:, None, :]
        )
        taus.append((concordance * upper).sum(dim=(1, 2)))
    pairs = max(classes * (classes - 1) // 2, 1)
    return (torch.cat(taus) if taus else a.new_zeros(0)) / pairs


def kl_to(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(logits)) per sample at temperature 1, ``target`` detached: the
    ``KL(logits <- target)`` of the C2KD and MST-Distill code."""
    return F.kl_div(F.log_softmax(logits, dim=1), F.softmax(target.detach(), dim=1), reduction="none").sum(dim=1)


def non_target_kl(logits: torch.Tensor, target: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """C2KD's non-target distillation, per sample: ``kl_to`` with the logit of ``classes`` (one class
    index per sample) multiplied by 0 on both sides, as in the reference code, so the
    distributions compared are shaped by the other classes' logits."""
    keep = torch.ones_like(logits).scatter(1, classes[:, None], 0.0)
    return kl_to(logits * keep, target * keep)
