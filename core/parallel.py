"""The process group a run trains in: what every rank of a distributed run must agree on.

A launcher (``torchrun`` through :mod:`core.engine.launch`, or Ray Train) starts one process per
rank and initialises torch.distributed's default process group before the trainer runs; a run that
was launched alone has no group, and every function here is then the single-process identity. So
the trainer and the methods are written once, for any world size W.

How a distributed run stays the single-process run with the same global batch:

- **Data.** ``train.batch_size`` is the global batch. Every rank draws the same epoch order (seeded by
  seed and epoch) and takes its contiguous 1/W of each batch (:func:`local`); an epoch's last batch is
  cut to a multiple of W, so every rank always holds the same number of rows.
- **Gradients.** Each rank's loss is the mean over its rows; averaging the gradients over ranks
  (:func:`average_gradients`, one all-reduce over one flat buffer per step) gives the gradient of the
  mean over the global batch. A masked mean (the task loss over labelled rows only) divides by the
  count over every rank (:func:`total`).
- **Negatives.** Contrastive terms compare each local anchor with the embeddings of every rank
  (:func:`gather`, an all-gather that keeps the gradient: its backward sums each rank's part), so the
  loss is the single-process one over the global batch.
- **Random draws of a batch** (the paper's generator noise, CRD's sampled negatives) are drawn for the
  global batch from a generator every rank holds in the same state, and sliced (:func:`local`).
  Dropout draws from each rank's own stream: masks differ from a single-process run's.
- **Agreement.** Reported losses are the mean over ranks (:func:`mean`), and a non-finite one stops
  every rank at the same step; a cancel seen by rank 0 stops every rank (:func:`any_rank`).

Why not ``DistributedDataParallel``: DDP's contract is one wrapped module, one forward and one backward
per step. A run here has three networks whose roles change by epoch (trained, frozen, idle), method
modules that the loss calls directly, a retrieval target encoder outside ``forward``, and a second
backward for the paper's discriminator; wrapping each in DDP would need unused-parameter search and
ignore lists for every method. The arithmetic DDP does, averaging gradients, is one all-reduce here,
run after the backward rather than overlapped with it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

#: How a run was started, as recorded in its summary: alone, by torchrun, or by Ray Train.
LAUNCHERS = ("single", "torchrun", "ray")


def active() -> bool:
    """Whether this process is one rank of an initialised process group of more than one."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of ranks (1 without a group)."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank (0 without a group)."""
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0: the one that reports, checkpoints and exports."""
    return rank() == 0


def launcher() -> str:
    """What started this process: ``ray`` under Ray Train, ``torchrun`` under torch's elastic agent."""
    if os.environ.get("MMKD_LAUNCHER") in LAUNCHERS:
        return os.environ["MMKD_LAUNCHER"]
    return "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "single"


def even_length(length: int) -> int:
    """``length`` cut down to a multiple of the world size (an epoch's last batch)."""
    return length - length % world_size()


def local(values: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous 1/W of a global batch's rows (``values`` is cut evenly: see :func:`even_length`)."""
    size = world_size()
    if size == 1:
        return values
    assert len(values) % size == 0, f"{len(values)} rows do not split evenly over {size} ranks"
    return values.chunk(size)[rank()]


def gather(values: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``values`` in rank order (the global batch's), keeping the gradient: the
    backward hands each rank the sum over ranks of the gradient on its rows. torch's synchronous
    autograd all-gather (``torch.distributed.nn``), not its functional successor, whose result completes
    later: with that one a restarted rank once died of heap corruption (the cause was not proven)."""
    if not active():
        return values
    with warnings.catch_warnings():  # deprecated in favour of the functional collectives (above)
        warnings.simplefilter("ignore", FutureWarning)
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(values.contiguous()))


@torch.no_grad()
def gather_uneven(values: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``values`` in rank order when ranks hold different counts (an evaluation
    shard); no gradient."""
    if not active():
        return values
    counts = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([len(values)], device=values.device))
    longest = int(max(count.item() for count in counts))
    padded = values.new_zeros((longest, *values.shape[1:]))
    padded[: len(values)] = values
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(count.item())] for part, count in zip(parts, counts, strict=True)])


def shard_range(length: int) -> tuple[int, int]:
    """This rank's contiguous ``[start, stop)`` of ``length`` rows (an evaluated split's shard)."""
    size, index = world_size(), rank()
    per_rank = -(-length // size)
    return min(index * per_rank, length), min((index + 1) * per_rank, length)


def total(values: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of a count (no gradient): the denominator of a mean over the global batch."""
    if not active():
        return values
    summed = values.detach().clone()
    dist.all_reduce(summed)
    return summed


def mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks (no gradient): the reported losses, the running statistics."""
    if not active():
        return values
    return total(values) / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (a cancel seen by rank 0)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks: one all-reduce of one flat buffer. Every rank
    runs the same roles, so the same parameters have a gradient (None stays None: a frozen network)."""
    if not active():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    for grad, part in zip(grads, flat.split([grad.numel() for grad in grads]), strict=True):
        grad.copy_(part.view_as(grad))


@torch.no_grad()
def average_running_statistics(modules: Iterable[nn.Module]) -> None:
    """Make BatchNorm's running mean and variance the mean over ranks (where BatchNorm is not synced:
    torch's SyncBatchNorm runs on GPUs only), so every rank evaluates and exports the same statistics."""
    if not active():
        return
    for module in modules:
        for layer in module.modules():
            if not isinstance(layer, nn.modules.batchnorm._BatchNorm) or isinstance(layer, nn.SyncBatchNorm):
                continue
            for statistic in (layer.running_mean, layer.running_var):
                if isinstance(statistic, torch.Tensor):
                    statistic.copy_(mean(statistic))


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """On GPUs with more than one rank, BatchNorm over the global batch (torch's SyncBatchNorm)."""
    if active() and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


@torch.no_grad()
def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (they start equal by seed; this makes it so)."""
    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` (picklable: the checkpoint it read) on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: object) -> list[object]:
    """Every rank's ``value`` (picklable, small: RNG states), in rank order, on every rank."""
    if not active():
        return [value]
    found: list[object] = [None] * world_size()
    dist.all_gather_object(found, value)
    return found


def init_from_environment(device: str) -> None:
    """Join the process group a launcher describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``...): NCCL with this rank's GPU (``LOCAL_RANK``) on ``cuda``, gloo on the CPU.
    Nothing happens when the environment names no group, or a group of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def end_rank(code: int) -> NoReturn:
    """End a launcher's rank process with ``code`` once it has left the group: logs and streams flushed,
    then ``os._exit``. A normal interpreter exit runs the C++ destructors of the collectives' threads,
    which can abort the process (``terminate called without an active exception``, seen once a killed
    rank had been restarted) after its work was done, and the launcher then fails the whole run."""
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def leave() -> None:
    """Leave the process group at the end of a rank's run."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
