"""Reference loops: each joint method (mi_joint, mi_joint_aux, paper) written out by hand, step by
step, and compared with the trainer's weights after the same run.

The reference shares nothing with the trainer but the network classes and the method's trainable
modules (projection heads, G, D), built in the same order from the same seed so that both start
from the same weights. It re-derives everything that makes the method: its own batch order, task
losses, InfoNCE, Hinton KD, warm-up and linear ramp, the loss sum, which network feeds which term,
the teacher detached inside L_adv, gradient clipping, AdamW with a cosine schedule, and the
discriminator's own Adam step on detached real (z_S, z_T) and fake (z_S, G(z_S)) pairs. Each run
spans the warm-up, the ramp and the plateau, and half of the training samples carry no label.
A wrong label, a dropped ramp or a term fed by the wrong network moves the weights far beyond the
tolerance, which only absorbs float32 rounding of a differently ordered computation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.data.prepare import PreparedData, prepare
from core.engine import checkpoint as ckpt
from core.engine.trainer import train
from core.models.network import Networks, build_networks
from core.objectives import OBJECTIVES
from core.objectives.joint import JointObjective
from core.objectives.mi_joint_aux import MIJointAuxObjective
from core.objectives.paper import PaperObjective
from core.spec import JobSpec, MIJointAux, Paper

EPOCHS = 5
WARMUP_EPOCHS, RAMP_EPOCHS = 1, 3  # distillation weights by epoch: 0, 1/3, 2/3, 1, 1
METHODS: dict[str, dict[str, Any]] = {
    "mi_joint": {"name": "mi_joint", "alpha": 0.7, "kd_weight": 0.6, "kd_temperature": 2.0},
    "mi_joint_aux": {"name": "mi_joint_aux", "alpha": 0.6, "beta": 0.9, "proj_layers": 1, "temperature": 0.2},
    "paper": {
        "name": "paper",
        "alpha": 0.5,
        "beta": 0.8,
        "gamma": 0.7,
        "recon_weight": 0.5,
        "noise_dim": 3,
        "disc_lr": 3e-3,
        "kd_weight": 0.3,
    },
}


class MemoryCheckpoints:
    """A CheckpointStore in memory: the test reads the trainer's final weights from it."""

    def __init__(self) -> None:
        self.saved: dict[int, bytes] = {}

    def save(self, step: int, payload: bytes) -> str:
        """Keep the blob under its step."""
        self.saved[step] = payload
        return f"memory:{step}"

    def load_latest(self) -> tuple[int, bytes] | None:
        """The newest blob (None before the first save, so the trainer starts fresh)."""
        if not self.saved:
            return None
        step = max(self.saved)
        return step, self.saved[step]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: these tensors are tiny, and on a busy 2-core runner threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, PreparedData]:
    """The path of 80 samples, three classes, two primary modalities and one auxiliary, half the train labels masked."""
    rng = np.random.default_rng(7)
    label = np.arange(80) % 3
    path = tmp_path_factory.mktemp("reference") / "data.npz"
    np.savez(
        path,
        a=rng.normal(size=(80, 6)) + label[:, None],
        b=rng.normal(size=(80, 5)),
        c=rng.normal(size=(80, 7)) - label[:, None],
        label=label,
    )
    spec = job_spec("mi_joint", str(path))
    return str(path), prepare(spec.dataset, spec.task)


def job_spec(method: str, uri: str) -> JobSpec:
    """A tiny joint run through warm-up, ramp and plateau, with dropout on and a gradient clip that bites."""
    return JobSpec.model_validate(
        {
            "name": "reference",
            "dataset": {"uri": uri, "primary": ["a", "b"], "auxiliary": ["c"], "label_fraction": 0.5},
            "model": {"hidden_dim": 12, "repr_dim": 6, "dropout": 0.1},
            "method": {**METHODS[method], "warmup_epochs": WARMUP_EPOCHS, "ramp_epochs": RAMP_EPOCHS, "proj_dim": 4},
            "train": {"epochs": EPOCHS, "batch_size": 16, "lr": 5e-3, "grad_clip": 1.0, "seed": 3, "device": "cpu"},
            "checkpoint": {"every_epochs": EPOCHS},
        }
    )


def ramp(epoch: int) -> float:
    """The documented schedule: 0 in warm-up, then k / ramp_epochs in the k-th epoch after it, capped at 1."""
    if epoch < WARMUP_EPOCHS:
        return 0.0
    return min(1.0, (epoch - WARMUP_EPOCHS + 1) / RAMP_EPOCHS)


def reference_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE written from the formula: mean of -log softmax on the diagonal, rows and columns."""
    a = a / a.norm(dim=1, keepdim=True)
    b = b / b.norm(dim=1, keepdim=True)
    scores = a @ b.T / tau
    return -(scores.log_softmax(dim=1).diagonal().mean() + scores.log_softmax(dim=0).diagonal().mean()) / 2


def reference_kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean, the teacher a constant."""
    p_teacher = (teacher.detach() / temperature).softmax(dim=1)
    kl = p_teacher * (p_teacher.log() - (student / temperature).log_softmax(dim=1))
    return temperature**2 * kl.sum(dim=1).mean()


def reference_task(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled samples of the batch (label -1: unlabelled)."""
    labelled = labels >= 0
    if not labelled.any():
        return 0.0 * output.sum()
    return F.cross_entropy(output[labelled], labels[labelled])


def bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """-log sigmoid(logit) for real, -log(1 - sigmoid(logit)) for fake, batch mean."""
    return F.softplus(-logits if real else logits).mean()


@dataclass
class ReferenceModel:
    """The three networks and the method's modules, initialised as the trainer initialises them."""

    nets: Networks
    objective: JointObjective
    noise: torch.Generator  # the paper's generator noise: its own stream from the seed, as in the trainer

    @classmethod
    def build(cls, spec: JobSpec, data: PreparedData) -> ReferenceModel:
        """Seed, then build the networks and the method's modules in the trainer's order."""
        torch.manual_seed(spec.train.seed)
        nets = build_networks(
            data.shapes,
            primary=list(spec.dataset.primary),
            auxiliary=list(spec.dataset.auxiliary),
            spec=spec.model,
            output_dim=data.output_dim,
        )
        objective = OBJECTIVES.get(spec.method.name)(spec, repr_dim=spec.model.repr_dim, n_train=len(data.train))
        assert isinstance(objective, JointObjective)
        return cls(nets, objective, torch.Generator().manual_seed(spec.train.seed))

    def discriminator(self) -> nn.Module | None:
        """The paper's D, which trains in its own optimiser; None for the other methods."""
        return getattr(self.objective, "discriminator", None)

    def main_parameters(self) -> list[nn.Parameter]:
        """Every parameter the main optimiser steps: the three networks and the method's modules but D."""
        disc = self.discriminator()
        excluded = set() if disc is None else {id(p) for p in disc.parameters()}
        modules = [self.nets.student, self.nets.teacher, self.nets.auxiliary, self.objective]
        return [p for module in modules for p in module.parameters() if id(p) not in excluded]

    def weights(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer, keyed as in a checkpoint."""
        return {
            **{f"nets.{k}": v for k, v in self.nets.state_dict().items()},
            **{f"objective.{k}": v for k, v in self.objective.state_dict().items()},
        }


def reference_loss(
    model: ReferenceModel, x: dict[str, torch.Tensor], y: torch.Tensor, epoch: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The method's loss for one batch, and the detached pairs its discriminator step needs."""
    method, head = model.objective.method, model.objective
    z_s, out_s = model.nets.student(x)
    z_t, out_t = model.nets.teacher(x)
    z_a, out_a = model.nets.auxiliary(x)
    loss = reference_task(out_s, y) + reference_task(out_t, y) + reference_task(out_a, y)
    scale = ramp(epoch)
    if scale == 0:  # warm-up: no distillation term at all, so its heads get no (zero) gradient
        return loss, {}
    tau = method.temperature
    loss = loss + scale * method.alpha * reference_info_nce(head.proj_ts_teacher(z_t), head.proj_ts_student(z_s), tau)
    if method.kd_weight > 0:
        loss = loss + scale * method.kd_weight * reference_kd(out_s, out_t, method.kd_temperature)
    if method.name in ("mi_joint_aux", "paper"):
        assert isinstance(head, MIJointAuxObjective) and isinstance(method, MIJointAux | Paper)
        mi_ta = reference_info_nce(head.proj_ta_teacher(z_t), head.proj_ta_auxiliary(z_a), tau)
        loss = loss + scale * method.beta * mi_ta
    pairs: dict[str, torch.Tensor] = {}
    if method.name == "paper" and method.gamma > 0:  # type: ignore[union-attr]
        assert isinstance(head, PaperObjective) and isinstance(method, Paper)
        generator, discriminator = head.generator, head.discriminator
        fake = generator(torch.cat([z_s, torch.randn(len(z_s), method.noise_dim, generator=model.noise)], dim=1))
        fool = bce(discriminator(torch.cat([z_s, fake], dim=1)).squeeze(1), real=True)
        recon = ((fake - z_t.detach()) ** 2).mean()
        loss = loss + scale * method.gamma * (fool + method.recon_weight * recon)
        pairs = {"student": z_s.detach(), "teacher": z_t.detach(), "fake": fake.detach()}
    return loss, pairs


def reference_run(spec: JobSpec, data: PreparedData) -> dict[str, torch.Tensor]:
    """Train by hand for ``EPOCHS`` epochs and return the final weights."""
    model = ReferenceModel.build(spec, data)
    train_spec = spec.train
    main_parameters = model.main_parameters()
    optimizer = torch.optim.AdamW(main_parameters, lr=train_spec.lr, weight_decay=train_spec.weight_decay)
    disc = model.discriminator()
    disc_optimizer = None
    if disc is not None:
        assert isinstance(spec.method, Paper)
        disc_lr = spec.method.disc_lr or train_spec.lr
        disc_optimizer = torch.optim.Adam(disc.parameters(), lr=disc_lr, betas=(0.5, 0.999))
    inputs = {name: torch.from_numpy(values) for name, values in data.train.modalities.items()}
    assert data.train.label is not None
    labels = torch.from_numpy(data.train.label)
    for module in (model.nets, model.objective):
        module.train()
    for epoch in range(EPOCHS):
        factor = 0.5 * (1 + math.cos(math.pi * epoch / EPOCHS))  # cosine decay over the run, set per epoch
        for group in optimizer.param_groups:
            group["lr"] = train_spec.lr * factor
        if disc_optimizer is not None:  # D decays on the same schedule
            assert isinstance(spec.method, Paper)
            for group in disc_optimizer.param_groups:
                group["lr"] = (spec.method.disc_lr or train_spec.lr) * factor
        order = torch.randperm(
            len(labels), generator=torch.Generator().manual_seed(train_spec.seed * 1_000_003 + epoch)
        )
        for rows in order.split(train_spec.batch_size):
            if len(rows) < 2:
                continue
            loss, pairs = reference_loss(model, {k: v[rows] for k, v in inputs.items()}, labels[rows], epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            assert train_spec.grad_clip is not None
            nn.utils.clip_grad_norm_(main_parameters, train_spec.grad_clip)
            optimizer.step()
            if disc is not None and disc_optimizer is not None and pairs:  # D rests while G does
                real = disc(torch.cat([pairs["student"], pairs["teacher"]], dim=1)).squeeze(1)
                fake = disc(torch.cat([pairs["student"], pairs["fake"]], dim=1)).squeeze(1)
                disc_optimizer.zero_grad(set_to_none=True)
                (bce(real, real=True) + bce(fake, real=False)).backward()
                disc_optimizer.step()
    return model.weights()


def trainer_run(spec: JobSpec, data: PreparedData, workdir: Path) -> dict[str, torch.Tensor]:
    """Train with the trainer and return the weights of its final checkpoint."""
    store = MemoryCheckpoints()
    train(spec, workdir=workdir, data=data, checkpoints=store)
    latest = store.load_latest()
    assert latest is not None
    state = ckpt.from_bytes(latest[1])
    return {
        **{f"nets.{k}": v for k, v in state["nets"].items()},
        **{f"objective.{k}": v for k, v in state["objective"].items()},
    }


@pytest.mark.parametrize("method", list(METHODS))
def test_trainer_weights_match_an_independent_reference_loop(
    method: str, dataset: tuple[str, PreparedData], tmp_path: Path
) -> None:
    uri, data = dataset
    spec = job_spec(method, uri)
    initial = ReferenceModel.build(spec, data).weights()
    expected = reference_run(spec, data)
    got = trainer_run(spec, data, tmp_path)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.allclose(got[key], value, rtol=1e-5, atol=1e-5), f"{key} differs"
    # Every module the method adds has trained, so every term is exercised by the comparison.
    for key, value in initial.items():
        if key.startswith("objective.") and value.dtype.is_floating_point:
            assert not torch.allclose(expected[key], value, atol=1e-4), f"{key} never moved"
