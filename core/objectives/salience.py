"""Which of the teacher's representation channels the primary modalities can explain: the modality
focusing hypothesis's diagnosis (Xue et al., ICLR 2023), in a cheap closed form.

MFH's Algorithm 1 trains a student-modality network jointly with the teacher and scores each
teacher channel by how much permuting it across the batch hurts the match to the student's
features. Ours (choice, written in docs/method.md) replaces that network by a ridge regression
from what the primary modalities give the teacher, the outputs of the teacher's own primary
encoders, to the channel's value in z_T, cross-fitted on two halves of the training rows. A
channel's **salience** is its cross-fitted R^2, clipped to [0, 1]: near 1 the channel is
modality-general (the primary modalities determine it), near 0 modality-specific (it carries
what only the auxiliary modalities know). Its **decisiveness** is how much the teacher's
cross-entropy rises when that channel alone is permuted across samples (MFH's "decisive" features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.models.network import MultimodalNet

#: Ridge penalty per row of the (standardised) design matrix.
RIDGE = 0.1
#: A channel is modality-general when the primary modalities explain at least this share of it.
GENERAL_R2 = 0.5
CHUNK = 4096


@dataclass(frozen=True)
class Salience:
    """Per teacher channel: cross-fitted R^2 from the primary encoders, its training-set mean, and
    the teacher's loss rise when it is permuted (None without class labels)."""

    r2: torch.Tensor
    mean: torch.Tensor
    decisive: torch.Tensor | None


@torch.no_grad()
def encode(
    teacher: MultimodalNet, inputs: dict[str, torch.Tensor], primary: list[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(primary encoder outputs concatenated, z_T) for every row, in eval mode and in chunks."""
    was_training = teacher.training
    teacher.eval()
    rows = len(next(iter(inputs.values())))
    features, z = [], []
    for start in range(0, rows, CHUNK):
        part = {name: value[start : start + CHUNK] for name, value in inputs.items()}
        features.append(torch.cat([teacher.encoders[name](part[name]) for name in primary], dim=1).float())
        z.append(teacher.represent(part).float())
    teacher.train(was_training)
    return torch.cat(features), torch.cat(z)


@dataclass(frozen=True)
class Ridge:
    """A ridge regression fitted on standardised inputs (penalty ``RIDGE`` per row)."""

    mean_x: torch.Tensor
    std_x: torch.Tensor
    mean_y: torch.Tensor
    weights: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predictions for the rows of ``x``, in float64."""
        return ((x.double() - self.mean_x) / self.std_x) @ self.weights + self.mean_y


def fit_ridge(x: torch.Tensor, y: torch.Tensor) -> Ridge:
    """Ridge regression of every column of ``y`` on ``x``, in float64."""
    x, y = x.double(), y.double()
    mean_x, std_x = x.mean(0), x.std(0).clamp(min=1e-8)
    mean_y = y.mean(0)
    design = (x - mean_x) / std_x
    gram = design.T @ design + RIDGE * len(design) * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return Ridge(mean_x, std_x, mean_y, torch.linalg.solve(gram, design.T @ (y - mean_y)))


def cross_fitted_r2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R^2 of each column of ``y`` predicted by ridge regression on ``x``, fitted on one half of the
    rows (alternate rows) and scored on the other, both ways; constant columns score 0."""
    if len(x) < 4:  # each half needs two rows
        return torch.zeros(y.shape[1], device=y.device)
    halves = (torch.arange(len(x), device=x.device) % 2 == 0, torch.arange(len(x), device=x.device) % 2 == 1)
    residual = torch.zeros_like(y, dtype=torch.float64)
    for fit, score in (halves, halves[::-1]):
        residual[score] = y[score].double() - fit_ridge(x[fit], y[fit]).predict(x[score])
    y = y.double()
    total = ((y - y.mean(0)) ** 2).sum(0)
    r2 = 1 - (residual**2).sum(0) / total.clamp(min=1e-12)
    return torch.where(total > 1e-12, r2, torch.zeros_like(r2)).clamp(0.0, 1.0).float()


@torch.no_grad()
def permutation_drop(teacher: MultimodalNet, z: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Per channel: how much the teacher's cross-entropy on the labelled rows rises when that channel
    alone is permuted across those rows (0 when it falls); -1 marks an unlabelled row. A loss, not
    an accuracy: with many redundant channels one permuted channel rarely flips a prediction."""
    known = labels >= 0
    z, labels = z[known], labels[known]
    drops = torch.zeros(z.shape[1], device=z.device)
    if len(z) < 2:
        return drops
    base = F.cross_entropy(teacher.head(z), labels)
    order = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed)).to(z.device)
    for channel in range(z.shape[1]):
        permuted = z.clone()
        permuted[:, channel] = z[order, channel]
        drops[channel] = F.cross_entropy(teacher.head(permuted), labels) - base
    return drops.clamp(min=0.0)


def channel_salience(
    teacher: MultimodalNet, inputs: dict[str, torch.Tensor], primary: list[str], labels: torch.Tensor | None
) -> Salience:
    """The diagnosis on the training rows: R^2 per channel, channel means, and (with class labels) decisiveness."""
    features, z = encode(teacher, inputs, primary)
    decisive = None
    if labels is not None and labels.dtype == torch.long:
        was_training = teacher.training
        teacher.eval()
        decisive = permutation_drop(teacher, z, labels)
        teacher.train(was_training)
    return Salience(r2=cross_fitted_r2(features, z), mean=z.mean(0), decisive=decisive)
