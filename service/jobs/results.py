"""A succeeded job's ``result``: the worker's ``summary.json`` (``core.engine.trainer.finish``), typed per
task. Each of the three networks (student, teacher, auxiliary) is scored on the test split with the
task's metrics (``core.engine.evaluation``), and again on the validation split under ``validation``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.spec import METHOD_NAMES

MethodName = Literal[METHOD_NAMES]  # type: ignore[valid-type]


class ClassificationMetrics(BaseModel):
    """Classification: accuracy and macro-F1."""

    accuracy: float
    macro_f1: float


class MultilabelMetrics(BaseModel):
    """Multilabel: mean average precision over the labels that occur, and micro-F1 at logit 0."""

    mean_ap: float
    f1: float


class RegressionMetrics(BaseModel):
    """Regression: mean absolute error and Pearson r averaged over target columns."""

    mae: float
    pearson_r: float


class RetrievalMetrics(BaseModel):
    """Retrieval: recall at 1/5/10 and the median rank of the right gallery item (1 = best)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    r_at_1: float = Field(alias="r@1")
    r_at_5: float = Field(alias="r@5")
    r_at_10: float = Field(alias="r@10")
    median_rank: float


class ClassificationNetworks(BaseModel):
    """Each network's classification metrics."""

    student: ClassificationMetrics
    teacher: ClassificationMetrics
    auxiliary: ClassificationMetrics


class MultilabelNetworks(BaseModel):
    """Each network's multilabel metrics."""

    student: MultilabelMetrics
    teacher: MultilabelMetrics
    auxiliary: MultilabelMetrics


class RegressionNetworks(BaseModel):
    """Each network's regression metrics."""

    student: RegressionMetrics
    teacher: RegressionMetrics
    auxiliary: RegressionMetrics


class RetrievalNetworks(BaseModel):
    """Each network's retrieval metrics."""

    student: RetrievalMetrics
    teacher: RetrievalMetrics
    auxiliary: RetrievalMetrics


class SplitSizes(BaseModel):
    """Samples per split."""

    train: int = Field(ge=0)
    val: int = Field(ge=0)
    test: int = Field(ge=0)


class ShardsInfo(BaseModel):
    """How a sharded dataset (a folder or prefix, streamed) was read."""

    layout: Literal["npz", "npy"] = Field(description="`.npz` shards, or one `.npy` file per array.")
    files: int = Field(ge=1, description="Files read (shards, or the arrays' `.npy` files).")
    blocks: int = Field(ge=1, description="Blocks of rows read at a time (a shard, or a range of every `.npy`).")


class DataInfo(BaseModel):
    """The data the job trained on."""

    source: str = Field(description="Where the data was read from (a built-in, a URI or `dataset:N`).")
    sha256: str = Field(
        description="SHA-256 of the file as read; of a sharded dataset, of its files' names and SHA-256s."
    )
    split: str = Field(description="How the samples were split, in words.")
    sizes: SplitSizes
    train_labelled: int = Field(ge=0, description="Train samples that kept a label (`label_fraction`).")
    shards: ShardsInfo | None = Field(
        default=None,
        exclude_if=lambda value: value is None,  # a one-file dataset's result reads as it always has
        description="Only for a sharded dataset (a folder or prefix, streamed): how it was read.",
    )


class RunWarning(BaseModel):
    """A warning raised during training (`core.engine.health`), with the numbers behind it."""

    kind: Literal["weak_teacher", "student_regressed"] = Field(
        description="weak_teacher: the teacher's validation metric fell clearly below its own best after the "
        "distillation terms started; student_regressed: the student's fell below its own earlier level while "
        "it distilled."
    )
    message: str = Field(description="The warning in one line.")
    network: str = Field(description="The network watched: teacher or student.")
    metric: str = Field(description="The task's primary validation metric.")
    best: float = Field(description="The network's best validation value before the warning.")
    best_epoch: int = Field(ge=1)
    value: float = Field(description="The validation value when the warning fired.")
    epoch: int = Field(ge=1)
    threshold: float = Field(ge=0.0, description="How far from the best a value had to be to count.")


class Gain(BaseModel):
    """The student against the reference trained in the same job (`reference` in the spec)."""

    reference_method: Literal["student_only"] = Field(description="The reference, trained on the same split and seed.")
    metric: str = Field(description="The task's primary test metric.")
    student: float = Field(description="The student's test value.")
    reference: float = Field(description="The reference's test value.")
    value: float = Field(
        description="The gain: student minus reference, or reference minus student for an error such as mae; "
        "positive is better."
    )
    low: float = Field(description="Lower end of the gain's 95% paired bootstrap interval over the test samples.")
    high: float = Field(description="Upper end of that interval.")
    resamples: int = Field(
        ge=0, description="Bootstrap resamples that counted (multilabel: those with a positive label)."
    )
    test_samples: int = Field(ge=1)


class _Result(BaseModel):
    """What every task's result holds besides the metrics."""

    name: str = Field(description="The spec's name.")
    method: MethodName
    dataset: str = Field(description="The built-in's name, the URI, or `dataset N` for an upload.")
    seed: int
    spec_hash: str
    data: DataInfo
    epochs: int = Field(ge=0)
    steps: int = Field(ge=0)
    selected_epoch: int | None = Field(
        default=None,
        ge=1,
        description="The epoch whose weights were tested and exported (`train.select`); absent in results "
        "written before selection existed.",
    )
    resumed_from_step: int | None = Field(description="The checkpoint step the last attempt resumed from.")
    seconds: float = Field(ge=0.0, description="Wall-clock seconds of the last attempt.")
    world_size: int = Field(
        default=1, ge=1, description="Processes that trained it (`resources`); 1 in results written before."
    )
    launcher: Literal["single", "torchrun", "ray"] = Field(
        default="single", description="What started them: one process, torchrun on one host, or Ray Train."
    )
    warnings: list[RunWarning] = Field(
        default_factory=list,
        description="Warnings raised during training, each once; empty in results written before warnings existed.",
    )
    gain: Gain | None = Field(default=None, description="Present when the spec asked for a `reference`.")


class ClassificationResult(_Result):
    """A classification job's test metrics per network (`student`, `teacher`, `auxiliary`)."""

    task: Literal["classification"]
    student: ClassificationMetrics
    teacher: ClassificationMetrics
    auxiliary: ClassificationMetrics
    validation: ClassificationNetworks


class MultilabelResult(_Result):
    """A multilabel job's test metrics per network."""

    task: Literal["multilabel"]
    student: MultilabelMetrics
    teacher: MultilabelMetrics
    auxiliary: MultilabelMetrics
    validation: MultilabelNetworks


class RegressionResult(_Result):
    """A regression job's test metrics per network."""

    task: Literal["regression"]
    student: RegressionMetrics
    teacher: RegressionMetrics
    auxiliary: RegressionMetrics
    validation: RegressionNetworks


class RetrievalResult(_Result):
    """A retrieval job's test metrics per network."""

    task: Literal["retrieval"]
    student: RetrievalMetrics
    teacher: RetrievalMetrics
    auxiliary: RetrievalMetrics
    validation: RetrievalNetworks


JobResult = Annotated[
    ClassificationResult | MultilabelResult | RegressionResult | RetrievalResult,
    Field(discriminator="task"),
]


class ProbeSet(BaseModel):
    """The probe's figures for one set of primary modalities (all of them, or one)."""

    modalities: list[str]
    general_share: float = Field(ge=0.0, le=1.0, description="Share of teacher channels with R^2 >= 0.5.")
    decisive_general_share: float | None = Field(
        ge=0.0, le=1.0, description="The same, weighted by each channel's decisiveness; classification only."
    )
    weighted_r2: float = Field(ge=0.0, le=1.0, description="Decisiveness-weighted mean R^2 (plain mean without).")


class ProbeResult(BaseModel):
    """A `kind: probe` job's result: the distillability probe (docs/method.md), no student."""

    kind: Literal["probe"]
    name: str
    task: Literal["classification", "multilabel", "regression"]
    dataset: str
    seed: int
    spec_hash: str
    data: DataInfo
    steps: int = Field(ge=0)
    primary: list[str]
    auxiliary: list[str]
    teacher_epochs: int = Field(ge=1)
    teacher_val: dict[str, float] = Field(description="The teacher's validation primary metric after its training.")
    student_val: dict[str, float] = Field(description="The student's, trained alone beside it.")
    reachable_val: dict[str, float] = Field(
        description="The teacher's with its representation predicted from its own primary encoders: what a student "
        "imitating it could reach."
    )
    room: float = Field(description="reachable_val minus student_val, in the metric's better direction.")
    channels: int = Field(ge=1, description="Width of the teacher's representation.")
    sets: dict[str, ProbeSet] = Field(description="`all primary` (with two or more) and each primary modality.")
    weighted_r2: float = Field(ge=0.0, le=1.0, description="The probe's one number, for all primary modalities.")
    verdict: str = Field(description="What it predicts about distillation, in words.")
    seconds: float = Field(ge=0.0)


#: A classification result as the worker writes it (the OpenAPI example; tests reuse it).
RESULT_EXAMPLE: dict[str, Any] = {
    "name": "mfeat-paper",
    "method": "paper",
    "dataset": "mfeat",
    "task": "classification",
    "seed": 7,
    "spec_hash": "0" * 64,
    "student": {"accuracy": 0.91, "macro_f1": 0.9},
    "teacher": {"accuracy": 0.97, "macro_f1": 0.97},
    "auxiliary": {"accuracy": 0.95, "macro_f1": 0.95},
    "validation": {
        "student": {"accuracy": 0.9, "macro_f1": 0.89},
        "teacher": {"accuracy": 0.96, "macro_f1": 0.96},
        "auxiliary": {"accuracy": 0.94, "macro_f1": 0.94},
    },
    "data": {
        "source": "mfeat",
        "sha256": "0" * 64,
        "split": "stratified",
        "sizes": {"train": 1200, "val": 400, "test": 400},
        "train_labelled": 1200,
    },
    "epochs": 2,
    "steps": 20,
    "selected_epoch": 2,
    "resumed_from_step": None,
    "seconds": 12.5,
    "world_size": 1,
    "launcher": "single",
    "warnings": [],
    "gain": {
        "reference_method": "student_only",
        "metric": "accuracy",
        "student": 0.9125,
        "reference": 0.885,
        "value": 0.0275,
        "low": 0.005,
        "high": 0.05,
        "resamples": 1000,
        "test_samples": 400,
    },
}
