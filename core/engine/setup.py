"""Building a run from a spec: seeds, device, networks, method, optimisers and schedule."""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from core import parallel
from core.data.prepare import PreparedData
from core.engine import checkpoint as ckpt
from core.errors import DataError
from core.models.network import Networks, build_networks
from core.objectives import OBJECTIVES
from core.objectives.base import Objective
from core.spec import JobSpec, method_needs_one_file

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """Where the run is: the epoch in progress, batches done in it, optimisation steps done."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0


class CosineWindow:
    """LR factor: cosine from 1 to 0 over epochs [start, start + length), 1 before, 0 after.

    A class, not a lambda, so the schedule is the same object type after a resume.
    """

    def __init__(self, start: int, length: int, enabled: bool) -> None:
        self.start, self.length, self.enabled = start, length, enabled

    def __call__(self, epoch: int) -> float:
        if not self.enabled:
            return 1.0
        progress = min(max(epoch - self.start, 0), self.length) / self.length
        return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Run:
    """Everything one training run holds; ``state_dict`` is what a checkpoint stores."""

    spec: JobSpec
    data: PreparedData
    device: torch.device
    amp: bool
    nets: Networks
    objective: Objective
    main_parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    disc_optimizer: torch.optim.Optimizer | None
    disc_schedule: Callable[[int], float] | None  # D's lr factor by epoch: the method modules' window
    train_inputs: dict[str, torch.Tensor]
    train_labels: torch.Tensor | None
    state: RunState = field(default_factory=RunState)
    resumed_from_step: int | None = None

    def disc_lr(self, epoch: int) -> float:
        """D's learning rate in ``epoch``: ``method.disc_lr`` (default ``train.lr``) on the method modules' window."""
        assert self.disc_schedule is not None
        return (getattr(self.spec.method, "disc_lr", None) or self.spec.train.lr) * self.disc_schedule(epoch)

    def release_training_state(self) -> None:
        """Drop what only training needs (the optimisers' moments, the training tensors on the device), so
        another run can take the device (a job's reference trains after it). The nets, the data and the
        counters stay: the test evaluation and the export need nothing more. No checkpoint after this."""
        self.optimizer.state.clear()
        if self.disc_optimizer is not None:
            self.disc_optimizer.state.clear()
        self.train_inputs = {}
        self.train_labels = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def n_train(self) -> int:
        """Training samples."""
        return len(self.data.train)

    def state_dict(self) -> dict[str, Any]:
        """Models, optimisers, schedule, RNG and data position. Every rank must call it (it gathers each
        rank's RNG, ``rank_rng``: rank 0's is ``rng``); only rank 0 stores what it returns."""
        rngs = parallel.gather_objects(ckpt.capture_rng())
        return {
            "world_size": parallel.world_size(),
            "rank_rng": rngs[1:],
            "draws": self.objective.draws.get_state(),
            "spec_hash": self.spec.spec_hash(),
            "data_sha256": self.data.info["sha256"],
            "nets": self.nets.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "disc_optimizer": None if self.disc_optimizer is None else self.disc_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rngs[0],
            "epoch": self.state.epoch,
            "batch_in_epoch": self.state.batch_in_epoch,
            "step": self.state.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; the RNG last, so nothing after it draws numbers."""
        self.nets.load_state_dict(state["nets"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.disc_optimizer is not None:
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        draws = state.get("draws")
        if draws is not None and draws.numel() == self.objective.draws.get_state().numel():
            self.objective.draws.set_state(draws)
        elif draws is not None:  # written on another kind of device: its generator's state does not fit
            log.warning("checkpoint's batch draws are from another device kind; they restart from the seed")
        self.state = RunState(state["epoch"], state["batch_in_epoch"], state["step"])
        self.resumed_from_step = state["step"]
        # Each rank its own stream; a rank the checkpoint did not have (it was written at a smaller world
        # size) keeps the fresh stream it was seeded with (core.parallel: only dropout draws from it).
        index = parallel.rank()
        if index == 0:
            ckpt.restore_rng(state["rng"])
        elif index <= len(state.get("rank_rng", [])):
            ckpt.restore_rng(state["rank_rng"][index - 1])


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's generators."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def pick_device(choice: str) -> torch.device:
    """``auto`` takes CUDA when present; ``cuda`` without a GPU is an error that says so."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def make_optimizer(spec: JobSpec, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The optimiser named in the spec over named parameter groups."""
    train = spec.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=train.lr, momentum=0.9, weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)


def parameter_groups(nets: Networks, objective: Objective) -> list[dict[str, Any]]:
    """One group per network plus the method's modules (the discriminator excluded: own optimiser)."""
    disc = {id(p) for p in objective.discriminator_parameters()}
    groups: list[dict[str, Any]] = [
        {"name": name, "params": list(net.parameters())} for name, net in nets.named_networks().items()
    ]
    scale = getattr(objective.spec.method, "teacher_lr_scale", 1.0)
    if scale != 1.0:  # a slower (or faster) teacher: its group's own learning rate, under the same schedule
        groups[[group["name"] for group in groups].index("teacher")]["lr"] = objective.spec.train.lr * scale
    groups += [{"name": name, "params": params} for name, params in objective.module_groups().items()]
    everything = [*nets.parameters(), *objective.parameters()]
    grouped = [id(p) for group in groups for p in group["params"]] + list(disc)
    assert sorted(grouped) == sorted(map(id, everything)), "every parameter must sit in exactly one group"
    return [group for group in groups if group["params"]]


def schedule_windows(objective: Objective, groups: list[dict[str, Any]]) -> list[Callable[[int], float]]:
    """Each group's cosine window: the epochs in which that group trains."""
    enabled = objective.spec.train.scheduler == "cosine"
    windows: list[Callable[[int], float]] = []
    for group in groups:
        start, length = objective.window(group["name"])
        windows.append(CosineWindow(start, length, enabled))
    return windows


def build_run(spec: JobSpec, data: PreparedData) -> Run:
    """Seed, then build networks, method, optimisers and the device-resident training tensors."""
    seed_everything(spec.train.seed)
    # Several ranks train where resources put them (a CPU job on a GPU host stays on the CPUs, as its
    # gloo group does); the spec makes train.device agree or leaves it auto.
    device = pick_device(spec.resources.device if parallel.active() else spec.train.device)
    nets = build_networks(
        data.shapes,
        primary=list(spec.dataset.primary),
        auxiliary=list(spec.dataset.auxiliary),
        spec=spec.model,
        output_dim=data.output_dim,
        retrieval_target=spec.dataset.retrieval_target,
    )
    objective = OBJECTIVES.get(spec.method.name)(
        spec, repr_dim=spec.model.repr_dim, n_train=len(data.train), output_dim=data.output_dim
    )
    streamed = data.train.stream is not None
    if streamed and type(objective).begin_epoch is not Objective.begin_epoch:
        raise DataError(str(spec.dataset.uri), method_needs_one_file(spec.method.name))
    nets.to(device)
    objective.to(device)
    objective.draws = torch.Generator(device=device).manual_seed(spec.train.seed)  # draws on the device
    nets = parallel.sync_batch_norm(nets, device)  # type: ignore[assignment]  # the same object, layers replaced
    objective = parallel.sync_batch_norm(objective, device)  # type: ignore[assignment]
    parallel.broadcast_module(nets)
    parallel.broadcast_module(objective)
    if parallel.rank() > 0:  # dropout masks of its own: a stream per rank (rank 0 keeps the seed's)
        torch.manual_seed(spec.train.seed + 1_000_003 * parallel.rank())
    groups = parameter_groups(nets, objective)
    optimizer = make_optimizer(spec, groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_windows(objective, groups))
    disc_parameters = objective.discriminator_parameters()
    disc_optimizer, disc_schedule = None, None
    if disc_parameters:  # D follows the method modules' schedule window
        disc_optimizer = torch.optim.Adam(disc_parameters, betas=(0.5, 0.999))  # lr set at each step
        disc_schedule = CosineWindow(*objective.window("method"), spec.train.scheduler == "cosine")
    labels = data.train.label
    resident = {} if streamed else data.train.modalities  # a sharded dataset's batches are read as they come
    train_inputs = {name: torch.from_numpy(values).to(device) for name, values in resident.items()}
    return Run(
        spec=spec,
        data=data,
        device=device,
        amp=spec.train.amp and device.type == "cuda",
        nets=nets,
        objective=objective,
        main_parameters=[p for group in groups for p in group["params"]],
        optimizer=optimizer,
        scheduler=scheduler,
        disc_optimizer=disc_optimizer,
        disc_schedule=disc_schedule,
        train_inputs=train_inputs,
        train_labels=None if labels is None else torch.from_numpy(labels).to(device),
    )
