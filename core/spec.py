"""The job spec: what a user asks mmkd to train. Pure pydantic, no torch.

The service validates specs with these models at submit time, so a bad spec is a 422 naming the
field, not a failure an hour later on a GPU. Every model forbids unknown fields and is strict:
``epochs: true``, ``epochs: "3"`` and ``epochs: 3.0`` are errors, not 1 or 3 epochs (a float field
takes an integer). Methods are a discriminated union on ``method.name``: a spec may only name
registry keys, never code.

Files and text become specs through :func:`load_spec` and :func:`parse_spec_text` only; every
problem, from a missing file to a failed field, is one :class:`~core.errors.SpecError`. The
cross-field rules are written into the JSON schema (served in ``/openapi.json``) where JSON Schema
can say them, and into the field descriptions where it cannot.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.errors import SpecError
from core.spec_schema import LOGIT_METHODS, MST_MAX_ATTENTION, MST_MAX_REPR, add_job_rules, builtin_name, dataset_rules
from core.spec_yaml import parse_spec_mapping, read_spec_file

TaskKind = Literal["classification", "multilabel", "regression", "retrieval"]
MODALITY_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
RESERVED_KEYS = frozenset({"label", "split", "class_names"})
BUILTIN_DATASETS: dict[str, tuple[str, ...]] = {
    "mfeat": ("fou", "fac", "kar", "pix", "zer", "mor"),
    "basic_motions": ("accelerometer", "gyroscope"),
}
ModalityName = Annotated[str, Field(pattern=MODALITY_NAME, json_schema_extra={"not": {"enum": sorted(RESERVED_KEYS)}})]


class StrictModel(BaseModel):
    """Base for every spec model: unknown fields are an error, types are strict, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        """Infinity and NaN are refused everywhere: JSON and jsonb cannot hold them, and no knob means them."""
        if isinstance(value, float) and not math.isfinite(value):
            raise PydanticCustomError("finite_number", "must be a finite number")
        return value


class DatasetSpec(StrictModel):
    """Where the data comes from and which modalities the student may use.
    Exactly one of id, name and uri is given."""

    model_config = ConfigDict(json_schema_extra=dataset_rules(BUILTIN_DATASETS))

    name: str | None = Field(
        default=None,
        json_schema_extra=builtin_name(BUILTIN_DATASETS),
        description="A built-in dataset: mfeat or basic_motions (classification; primary and auxiliary "
        "name its modalities).",
    )
    uri: str | None = Field(
        default=None,
        max_length=2048,
        description="A generic .npz (a local path or s3://bucket/key), or a folder or prefix of shards ending "
        "in / (.npz shards or one .npy per array, streamed: docs/data.md). On a server: only under its allowed "
        "prefixes.",
    )
    id: int | None = Field(default=None, ge=1, le=2**31 - 1, description="An uploaded dataset (POST /v1/datasets).")
    primary: list[ModalityName] = Field(
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        description="Modalities present at training and inference (the student's input); none of them "
        "also in auxiliary.",
    )
    auxiliary: list[ModalityName] = Field(
        min_length=1,
        json_schema_extra={"uniqueItems": True},
        description="Modalities present at training only; none of them also in primary.",
    )
    retrieval_target: Annotated[str, Field(pattern=MODALITY_NAME)] | None = Field(
        default=None,
        description="Required for task retrieval and only for it: the modality each network retrieves "
        "(e.g. text); not one of primary or auxiliary.",
    )
    label_fraction: float = Field(
        default=1.0, gt=0.0, le=1.0, description="Keep labels for this stratified fraction of train."
    )
    keep_unlabelled: bool = Field(
        default=True, description="Keep train samples without a label for the label-free loss terms."
    )
    val_fraction: float = Field(
        default=0.2, gt=0.0, lt=0.5, description="val_fraction + test_fraction must stay below 0.8."
    )
    test_fraction: float = Field(
        default=0.2, gt=0.0, lt=0.5, description="val_fraction + test_fraction must stay below 0.8."
    )
    split_seed: int = Field(default=0, ge=0, description="Seed of the split when the file has none.")
    val_from_train_fraction: float = Field(
        default=0.1,
        gt=0.0,
        lt=0.5,
        description="When the file's split has train and test but no val: the stratified fraction of the "
        "labelled train samples moved to val, seeded by split_seed (at least one per class that has two or more).",
    )

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if sum(source is not None for source in (self.name, self.uri, self.id)) != 1:
            raise ValueError(
                "give exactly one of dataset.id (an uploaded dataset), dataset.name (a built-in) "
                "or dataset.uri (a .npz)"
            )
        if self.name is not None and self.name not in BUILTIN_DATASETS:
            raise ValueError(f"unknown built-in dataset {self.name!r}; built-ins: {sorted(BUILTIN_DATASETS)}")
        for field in ("primary", "auxiliary"):
            names: list[str] = getattr(self, field)
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"dataset.{field} lists {dupes} more than once")
            reserved = sorted(set(names) & RESERVED_KEYS)
            if reserved:
                raise ValueError(f"dataset.{field}: {reserved} is a reserved key, not a modality")
        both = sorted(set(self.primary) & set(self.auxiliary))
        if both:
            raise ValueError(f"modality {both} is in both dataset.primary and dataset.auxiliary")
        if self.retrieval_target is not None and self.retrieval_target in {*self.primary, *self.auxiliary}:
            raise ValueError("dataset.retrieval_target must not also be a primary or auxiliary modality")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("dataset.val_fraction + dataset.test_fraction must leave >= 20% for training")
        if self.name is not None:
            known = BUILTIN_DATASETS[self.name]
            unknown = sorted(set(self.primary + self.auxiliary) - set(known))
            if unknown:
                raise ValueError(f"dataset {self.name!r} has no modality {unknown}; it has {list(known)}")
        return self


class ModelSpec(StrictModel):
    """Architecture shared by the teacher, the auxiliary model and the student."""

    hidden_dim: int = Field(default=128, ge=4, le=8192, description="Width of each modality encoder.")
    repr_dim: int = Field(default=64, ge=2, le=4096, description="Dimension d of the fused representation z.")
    encoder_layers: int = Field(default=2, ge=1, le=8, description="Layers per modality encoder.")
    sequence_encoder: Literal["conv", "gru"] = Field(default="conv", description="Encoder for (C, L) inputs.")
    fusion: Literal["concat", "sum"] = "concat"
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


class _MethodBase(StrictModel):
    pass


class StudentOnly(_MethodBase):
    """The floor: the three networks trained on their task losses alone, independently."""

    name: Literal["student_only"]


class TeacherOnly(_MethodBase):
    """The ceiling: same independent training; reported for the teacher (needs X at inference)."""

    name: Literal["teacher_only"]


class _FrozenTeacher(_MethodBase):
    teacher_epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="Teacher pre-training epochs (default: train.epochs)."
    )


class LogitKD(_FrozenTeacher):
    """Hinton et al. 2015: KL between temperature-softened logits of a frozen teacher and the student."""

    name: Literal["logit_kd"]
    kd_weight: float = Field(default=1.0, ge=0.0)
    kd_temperature: float = Field(default=4.0, gt=0.0)


class FeatureKD(_FrozenTeacher):
    """FitNets (Romero et al. 2015): regress z_S through a linear regressor onto a frozen z_T."""

    name: Literal["feature_kd"]
    feature_weight: float = Field(
        default=0.1,
        ge=0.0,
        description="Weight of the hint. Default 0.1: chosen on validation in four of six built-in settings; 1.0 "
        "fell far below student_only on BasicMotions (docs/results.md, Safe defaults).",
    )


class _Contrastive(StrictModel):
    temperature: float = Field(default=0.1, gt=0.0, le=10.0, description="InfoNCE temperature tau.")
    proj_dim: int = Field(default=64, ge=2, le=4096, description="Projection dimension k.")
    proj_layers: Literal[1, 2] = Field(default=2, description="Linear (1) or 2-layer MLP (2) heads.")

    @field_validator("proj_layers", mode="before")
    @classmethod
    def _an_int(cls, value: Any) -> Any:
        """A Literal takes ``True`` and ``1.0`` for 1 even in strict mode; a spec may not."""
        if type(value) is not int:
            raise PydanticCustomError("int_type", "Input should be a valid integer")
        return value


class CRD(_FrozenTeacher, _Contrastive):
    """Tian et al. 2020: contrastive distillation (I(T;S) only) from a frozen teacher."""

    name: Literal["crd"]
    alpha: float = Field(
        default=0.1,
        ge=0.0,
        description="Weight of the contrastive term. Default 0.1: chosen on validation in four of six built-in "
        "settings; 1.0 fell below student_only on BasicMotions (docs/results.md, Safe defaults).",
    )
    n_neg: int = Field(
        default=0, ge=0, le=65_536, description="Memory-bank negatives per sample; 0 uses in-batch negatives."
    )
    bank_momentum: float = Field(default=0.5, ge=0.0, lt=1.0)
    kd_weight: float = Field(default=0.0, ge=0.0, description="Optional logit KD companion term.")
    kd_temperature: float = Field(default=4.0, gt=0.0)


class _Joint(_MethodBase, _Contrastive):
    alpha: float = Field(default=0.5, ge=0.0, description="Weight of L_mi(T,S).")
    warmup_epochs: int = Field(
        default=0, ge=0, description="Epochs of task losses only before distillation switches on."
    )
    ramp_epochs: int = Field(default=0, ge=0, description="Linear ramp of alpha/beta/gamma after warm-up.")
    kd_weight: float = Field(default=0.0, ge=0.0, description="Temperature-softened logit KD T->S.")
    kd_temperature: float = Field(default=4.0, gt=0.0)
    teacher_lr_scale: float = Field(
        default=1.0, gt=0.0, le=10.0, description="The teacher's learning rate as a multiple of train.lr (<1: slower)."
    )


class MIJoint(_Joint):
    """Joint training with I(T;S) only: the configuration that exhibits the weak teacher."""

    name: Literal["mi_joint"]
    alpha: float = Field(
        default=0.1,
        ge=0.0,
        description="Weight of L_mi(T,S). Default 0.1: chosen on validation in all six built-in settings; at "
        "0.5 the student fell below student_only on mfeat with 10% labels (docs/results.md, Safe defaults).",
    )


class MIJointAux(_Joint):
    """Joint training with I(T;S) and I(T;A): the ablation without the adversarial term."""

    name: Literal["mi_joint_aux"]
    beta: float = Field(default=0.5, ge=0.0, description="Weight of L_mi(T,A).")


class Paper(_Joint):
    """The full objective: task + alpha I(T;S) + beta I(T;A) + gamma H(T|S) (Chen et al., CVPR 2023)."""

    name: Literal["paper"]
    beta: float = Field(default=0.5, ge=0.0, description="Weight of L_mi(T,A).")
    gamma: float = Field(default=0.1, ge=0.0, description="Weight of L_adv(T|S).")
    noise_dim: int = Field(default=16, ge=0, le=1024, description="Noise input of the generator G.")
    recon_weight: float = Field(default=1.0, ge=0.0, description="Weight of ||G(z_S) - z_T||^2 in L_adv.")
    fool_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="Weight of the generator's fooling term in L_adv; 0 leaves reconstruction alone.",
    )
    disc_lr: float | None = Field(default=None, gt=0.0, description="Discriminator lr (default: train.lr).")


class DML(_MethodBase):
    """Deep mutual learning (Zhang et al., CVPR 2018; stage 1 of MST-Distill): the three networks train
    together, each on its task loss plus temperature-softened KL toward the other two, unlabelled samples included."""

    name: Literal["dml"]
    kd_weight: float = Field(default=1.0, ge=0.0, description="Weight of each network's KL toward the other two.")
    kd_temperature: float = Field(default=4.0, gt=0.0)


class C2KD(_FrozenTeacher):
    """Huo et al., CVPR 2024: a pre-trained teacher that keeps training beside the student, proxy heads on both,
    bidirectional KL between each network and its proxy, and non-target distillation between the proxies on the
    samples whose class rankings agree. Classification only."""

    name: Literal["c2kd"]
    proxy_weight: float = Field(
        default=1.0, ge=0.0, description="Weight of the two KLs between a network and its proxy."
    )
    nt_weight: float = Field(default=1.0, ge=0.0, description="Weight of the non-target KL between the proxies.")
    tau_threshold: float = Field(
        default=0.0,
        ge=-1.0,
        lt=1.0,
        description="A sample's non-target term counts when Kendall's tau of the proxies exceeds it; -1: every sample.",
    )


class MFHKD(_FrozenTeacher):
    """Modality focusing (Xue et al., ICLR 2023): logit KD from a frozen teacher whose representation keeps only
    its modality-general channels (those the primary modalities explain); the others are set to their mean."""

    name: Literal["mfh_kd"]
    kd_weight: float = Field(default=1.0, ge=0.0)
    kd_temperature: float = Field(default=1.0, gt=0.0, description="MFH distils at temperature 1.")
    keep_ratio: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Share of teacher channels kept. Default 0.5: chosen on validation in five of six built-in "
        "settings; MFH's 25% fell below student_only on mfeat with 10% labels (docs/results.md, Safe defaults).",
    )
    channels: Literal["general", "specific", "random"] = Field(
        default="general",
        description="Which channels are kept: the most modality-general, the most modality-specific, or a seeded "
        "random choice (MFH's ablation).",
    )


class MSTDistill(_MethodBase):
    """MST-Distill (ACM MM 2025) in three stages: the three networks co-train with mutual KL; then, all
    frozen, a MaskNet on the teacher's and on the auxiliary model's representation learns to move each
    toward the student (two specialised teachers); then the student distils from the one a gate on its
    logits routes each sample to. Not for retrieval; model.repr_dim at most 512."""

    name: Literal["mst_distill"]
    cotrain_epochs: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Stage 1, co-training epochs (default: a quarter of train.epochs, >= 1; longer co-training "
        "with few labels pulls the teacher down to the others' level).",
    )
    mask_epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="Stage 2, MaskNet epochs (default: a quarter of train.epochs, >= 1)."
    )
    kd_weight: float = Field(default=1.0, ge=0.0, description="Stage 1: each network's weight of KL toward the others.")
    kd_temperature: float = Field(default=4.0, gt=0.0, description="Temperature of every KL of the three stages.")
    mask_heads: int = Field(
        default=3,
        ge=1,
        le=16,
        description="Attention heads of each MaskNet. train.batch_size x model.repr_dim^2 x mask_heads may be at "
        "most 2^28 (the attention weights of one step).",
    )
    kl_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="Stage 3: weight of the KL toward the routed teacher, halved after stage-3 epochs 0, 30, 60, "
        "... (the source's schedule).",
    )
    balance_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="Stage 3: weight of the gate's load balancing, x0.9 after stage-3 epochs 0, 10, 20, ... (the "
        "source's schedule).",
    )
    routing: Literal["top1", "soft"] = Field(
        default="top1",
        description="top1: each sample distils from the teacher the gate ranks first (the source's default; the gate "
        "learns from the balancing term alone). soft: from the gate-weighted mixture of the teachers' logits, the "
        "gate also learning from the KL.",
    )


MethodSpec = Annotated[
    StudentOnly
    | TeacherOnly
    | LogitKD
    | FeatureKD
    | CRD
    | MIJoint
    | MIJointAux
    | Paper
    | DML
    | C2KD
    | MFHKD
    | MSTDistill,
    Field(discriminator="name"),
]

#: The method name a study's base spec may give to search the methods themselves (``studies``).
AUTO_METHOD = "auto"

#: Methods whose objective reads the whole training split at once (``Objective.begin_epoch``): a sharded
#: dataset streams it, so they are refused on one (tests/core/test_shards.py checks the objectives agree).
WHOLE_SPLIT_METHODS = frozenset({"mfh_kd"})
#: The refusals of what a sharded dataset cannot do, alike at submit (the API) and in the trainer.
PROBE_NEEDS_ONE_FILE = "the probe fits on the whole training split at once: give it one .npz"


def method_needs_one_file(method: str) -> str:
    """The refusal of a method that reads the whole training split at once, on a sharded dataset."""
    return (
        f"method {method!r} reads the whole training split at once, which a sharded dataset streams; "
        "use one .npz file, or another method"
    )


METHOD_NAMES = (
    "student_only",
    "teacher_only",
    "logit_kd",
    "feature_kd",
    "crd",
    "mi_joint",
    "mi_joint_aux",
    "paper",
    "dml",
    "c2kd",
    "mfh_kd",
    "mst_distill",
)


class TrainSpec(StrictModel):
    """Optimisation and hardware."""

    epochs: int = Field(default=60, ge=1, le=10_000)
    batch_size: int = Field(default=128, ge=2, le=65_536)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(default=1e-4, ge=0.0)
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="Label smoothing of the classification task loss of all three networks; classification only.",
    )
    select: Literal["best_val", "last"] = Field(
        default="last",
        description="Which weights are evaluated on test and exported: those of the epoch with the student's "
        "best validation primary metric (ties go to the later epoch), or those of the last epoch.",
    )
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    scheduler: Literal["none", "cosine"] = "cosine"
    grad_clip: float | None = Field(default=5.0, gt=0.0, description="Max global grad norm; null disables.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(default=False, description="bfloat16 autocast on CUDA; ignored on CPU.")
    eval_every_epochs: int = Field(default=1, ge=1)
    max_minutes: float | None = Field(
        default=None,
        gt=0.0,
        le=43_200.0,
        description="Wall-clock limit of one attempt in minutes (fractions allowed); past it the worker "
        "fails the job as timed_out, keeping its last checkpoint. null: no limit.",
    )


class CheckpointSpec(StrictModel):
    """When to save resumable state."""

    every_epochs: int | None = Field(default=1, ge=1)
    every_steps: int | None = Field(default=None, ge=1)
    keep_last: int = Field(default=2, ge=1, le=1000)


class ResourcesSpec(StrictModel):
    """What the job trains on: ``nodes`` x ``procs_per_node`` processes (ranks) on CPUs or on GPUs, one GPU
    a process. One process trains alone; several on one node run under torchrun, several nodes under Ray
    Train (``core.parallel`` says how they stay the single-process run with the same global batch).
    Resources are not in the spec hash: a run checkpointed at one world size resumes at another."""

    nodes: int = Field(default=1, ge=1, le=64, description="Hosts; more than 1 runs on the Ray cluster.")
    procs_per_node: int = Field(
        default=1, ge=1, le=64, description="Processes on each host (one GPU each with device cuda)."
    )
    device: Literal["cpu", "cuda"] = Field(
        default="cpu",
        description="What each process needs: cpu (a job may still use a GPU under train.device auto) or cuda.",
    )
    gpus: int | None = Field(
        default=None,
        ge=0,
        le=64,
        deprecated=True,
        description="Deprecated: gpus N > 0 means device cuda and procs_per_node N; 0 means device cpu.",
    )

    @model_validator(mode="after")
    def _migrate_gpus(self) -> ResourcesSpec:
        gpus = self.__dict__["gpus"]  # read without the deprecation warning
        if gpus is None:
            return self
        given = self.model_fields_set
        if gpus > 0 and "procs_per_node" in given and self.procs_per_node != gpus:
            raise ValueError(f"gpus {gpus} (deprecated) and procs_per_node {self.procs_per_node} disagree")
        if "device" in given and self.device != ("cuda" if gpus > 0 else "cpu"):
            raise ValueError(f"gpus {gpus} (deprecated) and device {self.device!r} disagree")
        self.__dict__.update(device="cuda" if gpus > 0 else "cpu", procs_per_node=max(gpus, 1), gpus=None)
        return self

    @property
    def world_size(self) -> int:
        """Processes in all: nodes x procs_per_node."""
        return self.nodes * self.procs_per_node


# (section, field) -> the value under which the field is left out of the spec hash.
class ReferenceSpec(StrictModel):
    """The baseline trained inside the job to measure the student's gain against: the same data, split
    and seed, the spec's model and schedule, the reference method at its defaults."""

    method: Literal["student_only"] = Field(
        default="student_only", description="The reference: the student trained alone on the same data."
    )
    resamples: int = Field(
        default=1000,
        ge=100,
        le=10_000,
        description="Paired bootstrap resamples of the test samples for the gain's 95% interval.",
    )


HASH_NEUTRAL: dict[tuple[str, str], object] = {  # section "" is the top level
    ("", "kind"): "train",
    ("", "reference"): None,
    ("train", "label_smoothing"): 0.0,
    ("train", "select"): "last",
    ("method", "teacher_lr_scale"): 1.0,
    ("method", "fool_weight"): 1.0,
}


class JobSpec(StrictModel):
    """A complete distillation job.

    Cross-field rules: dataset.retrieval_target is required for task retrieval and only for it;
    retrieval takes no logit KD (method logit_kd, or method.kd_weight > 0); a built-in dataset is a
    classification task and names its own modalities; dataset.primary and dataset.auxiliary are
    disjoint and do not hold dataset.retrieval_target; dataset.val_fraction + dataset.test_fraction
    < 0.8. The schema states the first three; the validator checks all of them."""

    model_config = ConfigDict(json_schema_extra=add_job_rules)

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    dataset: DatasetSpec
    task: TaskKind = Field(
        default="classification",
        description="retrieval needs dataset.retrieval_target and no logit KD; a built-in dataset is classification.",
    )
    model: ModelSpec = ModelSpec()
    kind: Literal["train", "probe"] = Field(
        default="train",
        description="train: the method's run. probe: the distillability probe (`mmkd probe`): the teacher alone "
        "for method.teacher_epochs or train.epochs, then the modality-focusing diagnosis; no student is exported "
        "and the result is the probe's figures. Not for retrieval.",
    )
    method: MethodSpec
    reference: ReferenceSpec | None = Field(
        default=None,
        description="Also train the reference (student_only) on the same split and seed after the method, and "
        "report the student's test metric beside the reference's with the paired gain and a 95% bootstrap "
        "interval over the test samples (result.gain). Doubles the training time at most. Not for retrieval or "
        "kind probe.",
    )
    train: TrainSpec = TrainSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    resources: ResourcesSpec = ResourcesSpec()

    @field_validator("method", mode="before")
    @classmethod
    def _auto_is_a_study(cls, value: Any) -> Any:
        """``method: auto`` searches methods, which one job cannot: say where it belongs."""
        if isinstance(value, dict) and value.get("name") == AUTO_METHOD:
            raise PydanticCustomError(
                "auto_is_a_study",
                "method 'auto' is a search over methods: submit it as a study (POST /v1/studies, "
                "`mmkd studies create`, or `mmkd tune` locally)",
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if self.kind == "probe" and self.task == "retrieval":
            raise ValueError("kind 'probe' needs a task with a prediction head; retrieval has none")
        if self.reference is not None and (self.task == "retrieval" or self.kind == "probe"):
            raise ValueError(
                "reference is for training jobs with a per-sample metric; not for task retrieval or kind probe"
            )
        if self.train.device == "cpu" and self.resources.device == "cuda":
            raise ValueError("train.device 'cpu' and resources.device 'cuda' disagree: a GPU would sit idle")
        if self.resources.world_size > 1 and self.train.device not in ("auto", self.resources.device):
            raise ValueError(
                f"train.device {self.train.device!r} and resources.device {self.resources.device!r} disagree: "
                "several processes train on resources.device"
            )
        if self.train.batch_size < 2 * self.resources.world_size:
            raise ValueError(
                f"train.batch_size {self.train.batch_size} is the global batch: at least 2 rows for each of the "
                f"{self.resources.world_size} processes of resources"
            )
        if (self.task == "retrieval") != (self.dataset.retrieval_target is not None):
            raise ValueError("dataset.retrieval_target is required for task 'retrieval' and only for it")
        if self.dataset.name is not None and self.task != "classification":
            raise ValueError(f"built-in dataset {self.dataset.name!r} is a classification task")
        if self.task == "retrieval" and (
            self.method.name in LOGIT_METHODS or getattr(self.method, "kd_weight", 0.0) > 0
        ):
            raise ValueError(
                f"logit distillation (methods {', '.join(sorted(LOGIT_METHODS))}, or method.kd_weight) needs logits; "
                "retrieval has none"
            )
        if self.method.name == "c2kd" and self.task != "classification":
            raise ValueError(f"method c2kd distils non-target classes and needs classification; task is {self.task!r}")
        if self.method.name == "mst_distill" and self.model.repr_dim > MST_MAX_REPR:
            raise ValueError(
                f"method mst_distill masks the representation with attention over its channels and accepts "
                f"model.repr_dim up to {MST_MAX_REPR}; it is {self.model.repr_dim}"
            )
        if isinstance(self.method, MSTDistill):
            attention = self.train.batch_size * self.model.repr_dim**2 * self.method.mask_heads
            if attention > MST_MAX_ATTENTION:
                raise ValueError(
                    f"method mst_distill attends over the representation's channels: train.batch_size x "
                    f"model.repr_dim^2 x method.mask_heads is {attention}, above {MST_MAX_ATTENTION}; lower one"
                )
        if self.task != "classification" and self.train.label_smoothing > 0:
            raise ValueError(f"train.label_smoothing is for classification only; task is {self.task!r}")
        return self

    def spec_hash(self) -> str:
        """SHA-256 of the canonical JSON of the validated spec (defaults filled in).

        A field added after specs were already hashed is left out while it holds the value that
        trains as before it existed (``HASH_NEUTRAL``), so existing specs keep their hash (the
        bench's cache and the API's idempotency compare hashes) and any other value changes it.
        """
        canonical_data = self.model_dump(mode="json")
        canonical_data["resources"] = {"gpus": 0}  # not hashed (see ResourcesSpec); the value old hashes had
        for (section, key), neutral in HASH_NEUTRAL.items():
            holder = canonical_data[section] if section else canonical_data
            if key in holder and holder[key] == neutral:
                del holder[key]
        canonical = json.dumps(canonical_data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: the dotted field path, then what was wrong. A field name that is not a
    plain word (a key the user typed, say with a newline) is quoted and escaped, and cut short."""
    lines = []
    for item in error.errors(include_url=False):
        path = ".".join(_path_part(part) for part in item["loc"]) or "(spec)"
        lines.append(f"{path}: {' '.join(item['msg'].split())}")
    return lines


def _path_part(part: str | int) -> str:
    text = str(part)
    if _PLAIN_KEY.fullmatch(text):
        return text
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")
SpecT = TypeVar("SpecT", bound=BaseModel)
MAX_REPORTED_PROBLEMS = 10


def validate_spec_data(model: type[SpecT], data: Any, source: str, *, what: str = "spec") -> SpecT:
    """Validate parsed spec data as ``model`` (a job spec, a study); every problem is one line of one
    SpecError naming ``source``: ``{source}: invalid {what}: {path}: {problem}; ...``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        if len(problems) > MAX_REPORTED_PROBLEMS:
            more = len(problems) - MAX_REPORTED_PROBLEMS
            problems = [*problems[:MAX_REPORTED_PROBLEMS], f"and {more} more"]
        raise SpecError(source, f"invalid {what}: " + "; ".join(problems)) from None


def parse_spec_text(text: str, source: str) -> JobSpec:
    """Parse and validate a spec's YAML or JSON text; every problem is a one-line SpecError naming ``source``."""
    return validate_spec_data(JobSpec, parse_spec_mapping(text, source), source)


def load_spec(path: str | Path) -> JobSpec:
    """Read a spec from a YAML or JSON file (JSON is YAML) and validate it; any problem is a SpecError."""
    return parse_spec_text(read_spec_file(path), str(path))
