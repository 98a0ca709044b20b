"""One network = one encoder per modality -> fusion -> representation z -> task head.

The teacher, the auxiliary model and the student are all ``MultimodalNet``s over different
modality sets; they share no weights.
"""

from __future__ import annotations

import torch
from torch import nn

from core.spec import ModelSpec


class MLPEncoder(nn.Module):
    """Vectors (N, F) -> (N, hidden)."""

    def __init__(self, in_dim: int, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(spec.encoder_layers):
            layers += [nn.Linear(width, spec.hidden_dim), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = spec.hidden_dim
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvEncoder(nn.Module):
    """Sequences (N, C, L) -> temporal convolutions -> global average pool -> (N, hidden)."""

    def __init__(self, channels: int, spec: ModelSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = channels
        for _ in range(spec.encoder_layers):
            layers += [nn.Conv1d(width, spec.hidden_dim, kernel_size=5, padding=2), nn.ReLU()]
            width = spec.hidden_dim
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.body(x).mean(dim=2))


class GRUEncoder(nn.Module):
    """Sequences (N, C, L) -> GRU over time -> last hidden state (N, hidden)."""

    def __init__(self, channels: int, spec: ModelSpec) -> None:
        super().__init__()
        self.gru = nn.GRU(channels, spec.hidden_dim, num_layers=spec.encoder_layers, batch_first=True)
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.gru(x.transpose(1, 2))
        return self.dropout(hidden[-1])


def make_encoder(shape: tuple[int, ...], spec: ModelSpec) -> nn.Module:
    """Pick the encoder by the modality's per-sample shape: (F,) vectors, (C, L) sequences."""
    if len(shape) == 1:
        return MLPEncoder(shape[0], spec)
    if spec.sequence_encoder == "gru":
        return GRUEncoder(shape[0], spec)
    return ConvEncoder(shape[0], spec)


class MultimodalNet(nn.Module):
    """Encoders for ``modalities`` -> fusion -> z (``repr_dim``) -> head (``output_dim``)."""

    def __init__(
        self,
        shapes: dict[str, tuple[int, ...]],
        spec: ModelSpec,
        output_dim: int,
        target: tuple[str, tuple[int, ...]] | None = None,
    ) -> None:
        super().__init__()
        self.modalities = list(shapes)
        # Retrieval: the head embeds z, and a target-side encoder embeds the retrieved modality.
        self.target_name = None if target is None else target[0]
        self.target_encoder = None
        if target is not None:
            self.target_encoder = nn.Sequential(make_encoder(target[1], spec), nn.Linear(spec.hidden_dim, output_dim))
        self.encoders = nn.ModuleDict({name: make_encoder(shape, spec) for name, shape in shapes.items()})
        self.fusion = spec.fusion
        self.fuse: nn.Module
        if spec.fusion == "concat":
            self.fuse = nn.Linear(spec.hidden_dim * len(shapes), spec.repr_dim)
        else:
            self.fuse = nn.ModuleDict({name: nn.Linear(spec.hidden_dim, spec.repr_dim) for name in shapes})
        self.activation = nn.Sequential(nn.ReLU(), nn.Dropout(spec.dropout))
        self.head = nn.Linear(spec.repr_dim, output_dim)

    def represent(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused representation z."""
        encoded = {name: self.encoders[name](inputs[name]) for name in self.modalities}
        if isinstance(self.fuse, nn.ModuleDict):
            fused = torch.stack([self.fuse[name](encoded[name]) for name in self.modalities]).sum(0)
        else:
            fused = self.fuse(torch.cat([encoded[name] for name in self.modalities], dim=1))
        return self.activation(fused)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, head output) for a batch given as {modality: tensor}."""
        z = self.represent(inputs)
        return z, self.head(z)

    def embed_target(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Retrieval only: the embedding of the retrieved modality."""
        assert self.target_encoder is not None and self.target_name is not None
        return self.target_encoder(inputs[self.target_name])


class Networks(nn.Module):
    """The three jointly trained networks. Only ``student`` is exported."""

    def __init__(self, student: MultimodalNet, teacher: MultimodalNet, auxiliary: MultimodalNet) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.auxiliary = auxiliary

    def named_networks(self) -> dict[str, MultimodalNet]:
        """{"student": ..., "teacher": ..., "auxiliary": ...}."""
        return {"student": self.student, "teacher": self.teacher, "auxiliary": self.auxiliary}


def build_networks(
    shapes: dict[str, tuple[int, ...]],
    *,
    primary: list[str],
    auxiliary: list[str],
    spec: ModelSpec,
    output_dim: int,
    retrieval_target: str | None = None,
) -> Networks:
    """Student on P, teacher on P+X, auxiliary model on X (each with its own target encoder)."""
    target = None if retrieval_target is None else (retrieval_target, shapes[retrieval_target])
    out = spec.repr_dim if target is not None else output_dim

    def net(names: list[str]) -> MultimodalNet:
        return MultimodalNet({name: shapes[name] for name in names}, spec, out, target)

    return Networks(student=net(primary), teacher=net(primary + auxiliary), auxiliary=net(auxiliary))
