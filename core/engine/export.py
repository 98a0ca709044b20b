"""Export of the student alone, and prediction from primary modalities with that export.

``DIR/student/`` holds: ``student.pt2`` (a torch.export program taking raw primary arrays, with the
training-split normalisation baked in), ``weights.pt`` (the state dict), ``model.json`` (spec,
modalities and shapes, task, class names), ``normalization.npz`` and ``metrics.json``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.data.arrays import read_npz
from core.data.prepare import Normaliser
from core.errors import DataError
from core.models.network import MultimodalNet
from core.spec import JobSpec


class InferenceStudent(nn.Module):
    """Raw primary arrays (positional, in ``modalities`` order) -> normalise -> student -> output."""

    def __init__(self, student: MultimodalNet, normaliser: Normaliser) -> None:
        super().__init__()
        self.student = student
        self.modalities = list(student.modalities)
        for index, name in enumerate(self.modalities):
            self.register_buffer(f"mean_{index}", torch.from_numpy(normaliser.mean[name]))
            self.register_buffer(f"std_{index}", torch.from_numpy(normaliser.std[name]))

    def forward(self, *arrays: torch.Tensor) -> torch.Tensor:
        inputs = {
            name: (array - getattr(self, f"mean_{index}")) / getattr(self, f"std_{index}")
            for index, (name, array) in enumerate(zip(self.modalities, arrays, strict=True))
        }
        return self.student(inputs)[1]


def export_student(
    out_dir: Path,
    *,
    spec: JobSpec,
    student: MultimodalNet,
    normaliser: Normaliser,
    shapes: dict[str, tuple[int, ...]],
    class_names: list[str] | None,
    metrics: dict[str, float],
) -> None:
    """Write the student's weights, metadata and an inference-ready torch.export program."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # A copy: Module.to() works in place and would pull the training student off its device.
    module = InferenceStudent(copy.deepcopy(student), normaliser).to("cpu").eval()
    examples = tuple(torch.zeros((3, *shapes[name])) for name in module.modalities)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = tuple({0: batch} for _ in examples)
    program = torch.export.export(module, examples, dynamic_shapes={"arrays": dynamic})
    torch.export.save(program, out_dir / "student.pt2")
    torch.save(student.state_dict(), out_dir / "weights.pt")
    stats = {f"{name}_mean": normaliser.mean[name] for name in module.modalities}
    stats.update({f"{name}_std": normaliser.std[name] for name in module.modalities})
    np.savez(out_dir / "normalization.npz", **stats)  # type: ignore[arg-type]
    meta = {
        "spec": spec.model_dump(mode="json"),
        "task": spec.task,
        "modalities": {name: list(shapes[name]) for name in module.modalities},
        "class_names": class_names,
    }
    (out_dir / "model.json").write_text(json.dumps(meta, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def _outputs(task: str, raw: np.ndarray, class_names: list[str] | None) -> dict[str, np.ndarray]:
    if task == "classification":
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
        result = {"prediction": raw.argmax(axis=1), "scores": scores}
        if class_names:
            result["class_name"] = np.asarray(class_names)[result["prediction"]]
        return result
    if task == "multilabel":
        scores = 1.0 / (1.0 + np.exp(-raw))
        return {"prediction": (scores > 0.5).astype(np.int64), "scores": scores}
    if task == "regression":
        return {"prediction": raw[:, 0] if raw.shape[1] == 1 else raw}
    return {"prediction": raw}  # retrieval: the query embedding


def predict_file(model_dir: Path, data_path: Path, *, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Run the exported student on the primary modalities stored in ``data_path`` (.npz)."""
    meta: dict[str, Any] = json.loads((model_dir / "model.json").read_text())
    program = torch.export.load(model_dir / "student.pt2").module()
    arrays = read_npz(str(data_path), data_path.read_bytes())
    inputs = []
    for name, shape in meta["modalities"].items():
        if name not in arrays:
            raise DataError(
                str(data_path), f"primary modality {name!r} is missing; the student needs {list(meta['modalities'])}"
            )
        values = arrays[name]
        if values.dtype.kind not in "biuf" or tuple(values.shape[1:]) != tuple(shape):
            raise DataError(
                str(data_path),
                f"modality {name!r} must be numeric with per-sample shape {tuple(shape)},"
                f" got {values.shape} {values.dtype}",
            )
        if not np.isfinite(values).all():
            raise DataError(str(data_path), f"modality {name!r} has non-finite values")
        inputs.append(torch.from_numpy(values.astype(np.float32)))
    counts = {len(tensor) for tensor in inputs}
    if len(counts) != 1:
        raise DataError(str(data_path), "primary modalities have different sample counts")
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs[0]), batch_size):
            chunks.append(program(*(tensor[start : start + batch_size] for tensor in inputs)).numpy())
    return _outputs(meta["task"], np.concatenate(chunks), meta.get("class_names"))
