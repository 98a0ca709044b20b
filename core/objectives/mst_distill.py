"""mst_distill: MST-Distill, a routed mixture of specialised teachers (Li et al., ACM MM 2025; code:
Gray-OREO/MST-Distill, ``main-MST-Distill.py`` and ``KD_methods/MST.py``).

Three stages in one run, counted in epochs:

1. **Co-training** (``cotrain_epochs``, default a quarter of ``train.epochs``): teacher, auxiliary
   model and student train together, each on its task loss plus the temperature-softened KL toward
   each of the other two, summed (the source's ``loss_t = CE + KL(s -> t) + KL(a -> t)``;
   ``kd_weight`` scales each KL), the targets detached as in ``dml`` (deep mutual learning), which
   averages the two KLs; the source does not detach.
   Longer co-training with few labels pulls the teacher down to the others' level (mfeat 10%-keep:
   0.94 to 0.88 validation accuracy over 40 epochs), hence the short default.
2. **Specialised teachers** (``mask_epochs``, default a quarter of ``train.epochs``): the three
   networks frozen, a MaskNet on the teacher's representation z and one on the auxiliary model's
   learn a per-sample channel mask in (0, 1) such that the masked network's output moves toward the
   student's: ``T^2 KL(softmax(z_S/T) || softmax(head(z * mask)/T))``, the student's logits the
   target. Gradients reach each mask through the frozen head and no further.
3. **Routed distillation** (``train.epochs``): the masked networks are the experts. A gate on the
   student's logits (Linear C -> 2C -> Linear 2C -> 2, softmax, as the source's GateNet, without an
   activation between) routes each sample, and the student minimises
   ``CE + w_kl KL_T(z_S <- z_routed) + w_lb KL(uniform || mean over the batch of the gate)``, with
   w_kl halved after stage-3 epochs 0, 30, 60, ... and w_lb x0.9 after epochs 0, 10, 20, ... (the
   source's schedule). ``routing: top1`` distils from the expert the gate ranks first (the source;
   the gate learns from the balancing term alone); ``routing: soft`` from the gate-weighted mixture
   of the experts' logits, and then the KL trains the gate too, through weights read from the
   student detached so that the student cannot move its own target (our choice: the source's
   weighted variant detaches the mixture, which leaves its gate the balancing term alone as well).

The source's load balancing is ``KLDivLoss(reduction="batchmean")`` on the 1-D vector of mean gate
probabilities, which divides the KL by the number of experts; kept. The gate reads the student's
logits without a detach, so the balancing term reaches the student too, as in the source.

Where the source is silent or does not fit our networks (docs/method.md): our networks have one
fused layer of moderate width, z, so the masks sit on z of the teacher and of the auxiliary model
(two experts; the source masks two layers of each for four: the other layer here would be the
modality encoders' concatenated outputs, thousands of channels, and the MaskNet's attention over
them does not fit a CPU step); the masks of the last stage-2 epoch are kept (the source keeps those
of the best validation KL); the student's optimiser state carries from stage 1 into stage 3 (the
source starts a new Adam), and its learning-rate window is stage 3 (constant before it). Unlabelled
samples take part in every KL and in the balancing term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from core import parallel
from core.models.network import MultimodalNet, Networks
from core.objectives.base import OBJECTIVES, Batch, Forward, Objective, Role
from core.objectives.dml import mutual_terms
from core.objectives.losses import hinton_kd
from core.spec import JobSpec, MSTDistill

#: The networks a MaskNet specialises, in the gate's order.
EXPERTS = ("teacher", "auxiliary")


class MaskNet(nn.Module):
    """The source's MaskNet_1d: each of the C channels becomes a token of ``hidden`` values (one linear
    map of the whole vector), the tokens attend to each other, and a linear score per token through a
    sigmoid is that channel's mask. ``hidden`` is C // (2 heads) * heads, as in the source."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.channels = channels
        self.hidden = max(channels // (2 * heads) * heads, heads)
        self.embed = nn.Linear(channels, self.hidden * channels)
        self.attention = nn.MultiheadAttention(self.hidden, heads, batch_first=True)
        self.score = nn.Linear(self.hidden, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) features -> (N, C) mask in (0, 1)."""
        tokens = self.embed(features).reshape(features.shape[0], self.channels, self.hidden)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return torch.sigmoid(self.score(attended).squeeze(-1))


def frozen_head(net: MultimodalNet, z: torch.Tensor) -> torch.Tensor:
    """``net.head(z)`` with the head's weights detached: gradients reach ``z`` (a mask), never the network."""
    params = {name: value.detach() for name, value in net.head.named_parameters()}
    return functional_call(net.head, params, (z,))


def balance(gate: torch.Tensor) -> torch.Tensor:
    """The source's load balancing: KL(uniform || batch-mean gate probabilities) divided by the number
    of experts (``KLDivLoss(reduction="batchmean")`` on a 1-D input)."""
    mean = gate.mean(dim=0)
    uniform = torch.full_like(mean, 1.0 / mean.shape[0])
    # A gate saturated on one expert over a whole batch underflows to 0: finite, not log(0).
    return (uniform * (uniform.log() - mean.clamp_min(1e-12).log())).sum() / mean.shape[0]


@OBJECTIVES.register("mst_distill")
class MSTDistillObjective(Objective):
    """Stage 1: the three co-train. Stage 2: MaskNets specialise the frozen teacher and auxiliary model.
    Stage 3: the student distils from the expert its gate routes each sample to."""

    method: MSTDistill

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        assert isinstance(spec.method, MSTDistill) and output_dim is not None, "the gate reads the student's logits"
        self.method = spec.method
        self.cotrain_epochs = spec.method.cotrain_epochs or max(1, spec.train.epochs // 4)
        self.mask_epochs = spec.method.mask_epochs or max(1, spec.train.epochs // 4)
        self.masks = nn.ModuleDict({name: MaskNet(repr_dim, spec.method.mask_heads) for name in EXPERTS})
        self.gate = nn.Sequential(nn.Linear(output_dim, 2 * output_dim), nn.Linear(2 * output_dim, len(EXPERTS)))

    @property
    def total_epochs(self) -> int:
        """Co-training, then the masks, then the routed distillation."""
        return self.cotrain_epochs + self.mask_epochs + self.spec.train.epochs

    def stage(self, epoch: int) -> int:
        """1, 2 or 3."""
        if epoch < self.cotrain_epochs:
            return 1
        return 2 if epoch < self.cotrain_epochs + self.mask_epochs else 3

    def module_groups(self) -> dict[str, list[nn.Parameter]]:
        """The MaskNets train in stage 2 and the gate in stage 3: a learning-rate window each."""
        return {"masks": list(self.masks.parameters()), "gate": list(self.gate.parameters())}

    def window(self, group: str) -> tuple[int, int]:
        """Teacher and auxiliary model: stage 1. Masks: stage 2. Student and gate: stage 3 (the student
        trains in stage 1 at the full rate before its window)."""
        routed = self.cotrain_epochs + self.mask_epochs
        if group in EXPERTS:
            return 0, self.cotrain_epochs
        if group == "masks":
            return self.cotrain_epochs, self.mask_epochs
        return routed, self.spec.train.epochs

    def roles(self, epoch: int) -> dict[str, Role]:
        """Stage 1 trains all three; stage 2 runs only the student, frozen (its logits are the masks'
        target); stage 3 trains the student. The experts' masked forwards are the method's own."""
        stage = self.stage(epoch)
        if stage == 1:
            return {name: "train" for name in ("student", "teacher", "auxiliary")}
        return {"student": "frozen" if stage == 2 else "train", "teacher": "idle", "auxiliary": "idle"}

    def experts(self, nets: Networks, batch: Batch) -> dict[str, torch.Tensor]:
        """Each expert's output on its masked representation; gradients reach the masks only."""
        outputs = {}
        for name in EXPERTS:
            net = nets.named_networks()[name]
            net.eval()
            with torch.no_grad():
                z = net.represent(batch.inputs)
            outputs[name] = frozen_head(net, z * self.masks[name](z))
        return outputs

    def distill_terms(self, nets: Networks, batch: Batch, fwd: Forward, epoch: int) -> dict[str, torch.Tensor]:
        """Stage 1: ``mutual_{network}``. Stage 2: ``mask_{expert}``. Stage 3: ``routed_kl`` and ``balance``."""
        method, temperature = self.method, self.method.kd_temperature
        stage = self.stage(epoch)
        if stage == 1:  # the source sums the KLs toward the other two; mutual_terms averages them
            return mutual_terms(self.task, fwd.out, 2 * method.kd_weight, temperature)
        student = fwd.out["student"]
        if stage == 2:
            return {
                f"mask_{name}": hinton_kd(self.task, output, student, temperature)
                for name, output in self.experts(nets, batch).items()
            }
        with torch.no_grad():
            stacked = torch.stack(list(self.experts(nets, batch).values()), dim=1)  # (N, experts, C)
        gate = F.softmax(self.gate(student), dim=1)
        if method.routing == "top1":
            chosen = gate.argmax(dim=1)
            kl = hinton_kd(self.task, student, stacked[torch.arange(len(chosen)), chosen], temperature)
        else:  # the mixture's weights read the student detached: the student must not move its own target
            weights = F.softmax(self.gate(student.detach()), dim=1)
            mixture = (weights.unsqueeze(2) * stacked).sum(dim=1)
            kl = hinton_kd(self.task, student, mixture, temperature, detach=False)
        routed_epoch = epoch - self.cotrain_epochs - self.mask_epochs
        kl_weight = method.kl_weight * 0.5 ** ((routed_epoch + 29) // 30)
        balance_weight = method.balance_weight * 0.9 ** ((routed_epoch + 9) // 10)
        # The batch-mean gate is over the global batch (every rank's rows): KL is not linear in it.
        return {"routed_kl": kl_weight * kl, "balance": balance_weight * balance(parallel.gather(gate))}
