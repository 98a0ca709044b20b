"""Export of the student alone, and prediction from primary modalities with that export.

``DIR/student/`` holds: ``student.pt2`` (a torch.export program taking raw primary arrays, with the
training-split normalisation baked in), ``weights.pt`` (the state dict), ``model.json`` (spec,
modalities and shapes, task, class names), ``normalization.npz`` and ``metrics.json``. The folder
is written beside its place and renamed into it: it is complete or absent.

``predict_file`` checks the folder and the data: every way either can be wrong is one ``DataError``
naming the file, and accepted input never yields a NaN score. The program is screened so that
loading it runs no pickled code (core/engine/program_archive.py), but its graph still names the
functions it calls: a model folder must come from a trusted source.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from core.data.arrays import MAX_ARRAYS, MAX_CLASSES, read_npz, refuse_oversize
from core.data.checks import checked_modality, rows_with
from core.data.prepare import Normaliser
from core.engine.program_archive import refuse_pickled_payloads
from core.errors import DataError
from core.files import atomic_folder
from core.models.network import MultimodalNet
from core.spec import MODALITY_NAME, JobSpec, TaskKind

MAX_MODEL_JSON_BYTES = 8 * 1024**2  # a spec and up to MAX_CLASSES class names fit many times over


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
    """Write the student's weights, metadata and an inference-ready torch.export program.

    Into a temporary folder beside ``out_dir``, renamed into place at the end: a failure at any
    point leaves no export without its ``model.json``.
    """
    with atomic_folder(out_dir) as work:  # an earlier attempt's complete export is replaced
        # A copy: Module.to() works in place and would pull the training student off its device.
        module = InferenceStudent(copy.deepcopy(student), normaliser).to("cpu").eval()
        examples = tuple(torch.zeros((3, *shapes[name])) for name in module.modalities)
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        dynamic = tuple({0: batch} for _ in examples)
        program = torch.export.export(module, examples, dynamic_shapes={"arrays": dynamic})
        torch.export.save(program, work / "student.pt2")
        torch.save(student.state_dict(), work / "weights.pt")
        stats = {f"{name}_mean": normaliser.mean[name] for name in module.modalities}
        stats.update({f"{name}_std": normaliser.std[name] for name in module.modalities})
        np.savez(work / "normalization.npz", **stats)  # type: ignore[arg-type]
        meta = {
            "spec": spec.model_dump(mode="json"),
            "task": spec.task,
            "modalities": {name: list(shapes[name]) for name in module.modalities},
            "class_names": class_names,
        }
        (work / "model.json").write_text(json.dumps(meta, indent=2))
        (work / "metrics.json").write_text(json.dumps(metrics, indent=2))


class ModelCard(BaseModel):
    """What ``predict`` reads from ``model.json``; the other fields (the spec) are kept for people."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    task: TaskKind
    modalities: dict[
        Annotated[str, Field(pattern=MODALITY_NAME)],
        Annotated[list[Annotated[int, Field(ge=1, le=2**31 - 1)]], Field(min_length=1, max_length=2)],
    ] = Field(min_length=1, max_length=MAX_ARRAYS)
    class_names: list[Annotated[str, Field(max_length=1000)]] | None = Field(default=None, max_length=MAX_CLASSES)


def read_model_card(model_dir: Path) -> ModelCard:
    """``model_dir/model.json``, checked: a DataError naming the folder or the file otherwise."""
    path = model_dir / "model.json"
    if not path.is_file():
        raise DataError(str(model_dir), "not an exported student (no model.json)")
    try:
        size = path.stat().st_size
        refuse_oversize(str(path), size, MAX_MODEL_JSON_BYTES)
        return ModelCard.model_validate_json(path.read_bytes())
    except OSError as exc:
        raise DataError(str(path), f"cannot be read ({exc.strerror or exc})") from exc
    except ValidationError as exc:
        problems = [
            f"{'.'.join(map(str, item['loc'])) or 'the file'}: {item['msg']}" for item in exc.errors(include_url=False)
        ]
        raise DataError(str(path), "not a student's model.json: " + "; ".join(problems[:3])) from exc


def load_program(model_dir: Path) -> Callable[..., object]:
    """The exported program in ``model_dir/student.pt2``; a DataError naming it when it cannot be loaded."""
    path = model_dir / "student.pt2"
    if not path.is_file():
        raise DataError(str(path), "no such file: the student's exported program is missing")
    refuse_pickled_payloads(path)  # torch.export.load would unpickle some entries with weights_only=False
    torch_export_log = logging.getLogger("torch.export")  # it logs a damaged file's traceback as a warning
    level = torch_export_log.level
    torch_export_log.setLevel(logging.ERROR)
    try:
        return torch.export.load(path).module()
    except Exception as exc:  # a damaged archive fails in the zip, pickle or schema layers alike
        raise DataError(str(path), f"not a loadable torch.export program ({type(exc).__name__})") from exc
    finally:
        torch_export_log.setLevel(level)


def read_primary(data_path: Path, card: ModelCard, *, max_bytes: int | None) -> list[np.ndarray]:
    """The primary modalities in ``data_path`` as float32, in the card's order, all checked; the
    file's other arrays are ignored."""
    source = str(data_path)
    if not data_path.is_file():
        raise DataError(source, "no such file")
    try:
        refuse_oversize(source, data_path.stat().st_size, max_bytes)
        arrays = read_npz(source, data_path, max_array_bytes=max_bytes)
    except OSError as exc:
        raise DataError(source, f"cannot be read ({exc.strerror or exc})") from exc
    wanted = list(card.modalities)
    missing = [name for name in wanted if name not in arrays]
    if missing:  # other arrays (auxiliary modalities, label, split) are ignored: a dataset file will do
        names, present = ", ".join(map(repr, missing)), sorted(name[:80] for name in arrays)[:20]
        raise DataError(
            source, f"primary modality {names} is missing; the student needs {wanted}, the file has {present}"
        )
    inputs = [checked_modality(source, name, arrays[name], shape=tuple(card.modalities[name])) for name in wanted]
    counts = {name: len(values) for name, values in zip(wanted, inputs, strict=True)}
    if len(set(counts.values())) != 1:
        raise DataError(source, f"primary modalities have different sample counts: {counts}")
    if not inputs[0].shape[0]:
        raise DataError(source, "holds 0 samples; there is nothing to predict")
    return inputs


def run_program(
    program: Callable[..., object], inputs: list[np.ndarray], *, source: str, program_path: Path, batch_size: int
) -> np.ndarray:
    """The program's raw (N, K) outputs, batch by batch; DataError when it refuses the inputs or
    answers with anything but finite numbers."""
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs[0]), batch_size):
            batch = [torch.from_numpy(values[start : start + batch_size]) for values in inputs]
            try:
                output = program(*batch)
            except Exception as exc:  # a program that disagrees with model.json fails its guards
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise DataError(str(program_path), f"does not take the inputs model.json describes ({first})") from exc
            if (
                not isinstance(output, torch.Tensor)
                or output.ndim != 2
                or output.shape[0] != len(batch[0])
                or not output.shape[1]
            ):
                raise DataError(str(program_path), "does not return one row of outputs per sample")
            chunk = output.float().numpy()
            bad = rows_with(~np.isfinite(chunk))
            if bad:
                raise DataError(
                    source,
                    f"the student's outputs are not finite for {bad} samples (inputs far outside"
                    " the training data's range?)",
                )
            chunks.append(chunk)
    return np.concatenate(chunks)


def _outputs(task: str, raw: np.ndarray, class_names: list[str] | None) -> dict[str, np.ndarray]:
    if task == "classification":
        shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
        result = {"prediction": raw.argmax(axis=1), "scores": scores}
        if class_names:
            result["class_name"] = np.asarray(class_names)[result["prediction"]]
        return result
    if task == "multilabel":
        scores = np.exp(-np.logaddexp(0.0, -raw))  # the logistic function without overflow
        return {"prediction": (scores > 0.5).astype(np.int64), "scores": scores}
    if task == "regression":
        return {"prediction": raw[:, 0] if raw.shape[1] == 1 else raw}
    return {"prediction": raw}  # retrieval: the query embedding


def predict_file(
    model_dir: Path, data_path: Path, *, batch_size: int = 4096, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Run the exported student in ``model_dir`` on the primary modalities stored in ``data_path`` (.npz),
    ``batch_size`` samples at a time; a data file over ``max_bytes`` (compressed or not) is refused."""
    card = read_model_card(model_dir)
    inputs = read_primary(data_path, card, max_bytes=max_bytes)
    program = load_program(model_dir)
    raw = run_program(
        program, inputs, source=str(data_path), program_path=model_dir / "student.pt2", batch_size=batch_size
    )
    if card.task == "classification" and card.class_names and len(card.class_names) != raw.shape[1]:
        raise DataError(
            str(model_dir / "model.json"),
            f"class_names has {len(card.class_names)} names; the program scores {raw.shape[1]} classes",
        )
    return _outputs(card.task, raw, card.class_names)
