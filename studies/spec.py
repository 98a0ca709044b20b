"""The study spec: a base job spec, a search space over its fields, the objective, the budget and the
pruner. Torch-free and Optuna-free, so the API refuses a bad study at submit time (a 422 naming the
field) and ``mmkd tune`` reads the same file.

A trial's job spec is the base with the trial's values written at their dotted paths
(:func:`trial_spec`); every parameter's bounds and choices are tried against the base when the
study is validated, so a study never samples a spec the trainer would refuse.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from core.metrics import LOWER_IS_BETTER, PRIMARY_METRIC, TASK_METRICS
from core.spec import AUTO_METHOD, JobSpec, MethodSpec, ReferenceSpec, StrictModel, describe_validation_error

#: The spec sections a parameter may change; the data, the task and the seeds are the study's own.
SEARCHABLE_ROOTS = ("method", "model", "train")
FIXED_PATHS = frozenset({"train.seed", "train.device", "train.max_minutes", "train.eval_every_epochs"})
MAX_PARAMS = 16
MAX_CHOICES = 32
#: The most job specs a study's check builds per parameter (its values under its conditions' values).
MAX_CORNERS = 256
Scalar = str | int | float | bool


class SpaceError(ValueError):
    """A study rule broken at ``loc`` (a field path as a tuple); the spec's validator turns it into a
    validation error at that path."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


class AutoMethod(StrictModel):
    """``method: {name: auto}``: search the registered methods and their main weights (a preset space)."""

    name: Literal["auto"]


class BaseJobSpec(JobSpec):
    """A study's base job spec: a job spec whose method may also be ``auto``."""

    method: Annotated[AutoMethod | MethodSpec, Field(discriminator="name")]  # type: ignore[assignment]

    @field_validator("method", mode="before")
    @classmethod
    def _auto_is_a_study(cls, value: Any) -> Any:
        """Here ``auto`` is welcome: this spec is a study's."""
        return value


class _Param(StrictModel):
    path: str = Field(
        min_length=3, max_length=100, pattern=r"^[a-z_]+(\.[a-z_0-9]+)+$", description="Dotted spec field."
    )
    when: dict[str, Annotated[list[Scalar], Field(min_length=1, max_length=MAX_CHOICES)]] | None = Field(
        default=None,
        max_length=4,
        description="Sample this parameter only in trials where earlier categorical parameters (by path) took "
        "one of these values; e.g. {method.name: [logit_kd]}. At most 4 conditions of unique values.",
    )

    @field_validator("when")
    @classmethod
    def _unique(cls, when: dict[str, list[Scalar]] | None) -> dict[str, list[Scalar]] | None:
        for path, values in (when or {}).items():
            if len(set(map(repr, values))) != len(values):
                raise ValueError(f"when.{path}: values must be unique")
        return when


class FloatParam(_Param):
    """A float in ``[low, high]``, sampled on a log scale with ``log``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False


class IntParam(_Param):
    """An integer in ``[low, high]`` by ``step`` (or on a log scale with ``log``)."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False


class CategoricalParam(_Param):
    """One of ``choices``."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, max_length=MAX_CHOICES)


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


MetricName = Literal["accuracy", "macro_f1", "mean_ap", "f1", "mae", "pearson_r", "r@1", "r@5", "r@10", "median_rank"]


class Objective(StrictModel):
    """What a trial is judged by: a validation metric of the student at the job's selected epoch."""

    metric: MetricName | None = Field(
        default=None, description="Default: the task's primary metric; one of the task's metrics (TASK_METRICS)."
    )


class MedianPruner(StrictModel):
    """Stop a trial whose validation value after an epoch is worse than the median of earlier trials'."""

    name: Literal["median"]
    startup_trials: int = Field(default=4, ge=0, le=1000, description="Trials that are never pruned.")
    warmup_epochs: int = Field(
        default=2, ge=0, le=10_000, description="The student's first epochs of each trial, never judged."
    )


class SuccessiveHalvingPruner(StrictModel):
    """Asynchronous successive halving: at rungs of min_epochs x reduction_factor^k epochs, keep the top
    1/reduction_factor of the trials that reached the rung."""

    name: Literal["successive_halving"]
    min_epochs: int = Field(default=2, ge=1, le=10_000)
    reduction_factor: int = Field(default=3, ge=2, le=100)


class NoPruner(StrictModel):
    """Every trial trains to the end."""

    name: Literal["none"]


PrunerSpec = Annotated[MedianPruner | SuccessiveHalvingPruner | NoPruner, Field(discriminator="name")]


class SamplerSpec(StrictModel):
    """TPE (Optuna's ``TPESampler``): ``startup_trials`` random trials, then the tree-structured Parzen
    estimator; running trials count as their worst case (constant liar) so parallel asks spread out."""

    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    startup_trials: int = Field(default=8, ge=0, le=1000)


def _study_rules(schema: dict[str, Any]) -> None:
    """StudySpec's cross-field rules JSON Schema can state (a generated client and the contract fuzzer
    read them): the objective's metric is one of the base task's; a study's base trains, asks no
    reference itself, and with method auto brings no space; retrieval takes no reference."""
    others = [task for task in TASK_METRICS if task != "classification"]
    rules: list[dict[str, Any]] = []
    for task, metrics in TASK_METRICS.items():
        condition: dict[str, Any]
        if task == "classification":  # also when base.task is left out
            condition = {"not": {"required": ["task"], "properties": {"task": {"enum": others}}}}
        else:
            condition = {"required": ["task"], "properties": {"task": {"const": task}}}
        allowed = {"properties": {"objective": {"properties": {"metric": {"enum": [None, *metrics]}}}}}
        rules.append({"if": {"properties": {"base": condition}}, "then": allowed})
    rules.append({"properties": {"base": {"properties": {"kind": {"const": "train"}, "reference": {"type": "null"}}}}})
    auto = {"properties": {"base": {"properties": {"method": {"properties": {"name": {"const": AUTO_METHOD}}}}}}}
    rules.append({"if": auto, "then": {"properties": {"space": {"maxItems": 0}, "initial": {"maxItems": 0}}}})
    retrieval = {"properties": {"base": {"required": ["task"], "properties": {"task": {"const": "retrieval"}}}}}
    rules.append({"if": retrieval, "then": {"properties": {"reference": {"type": "null"}}}})
    schema["allOf"] = rules


class StudySpec(StrictModel):
    """A search over job specs; each trial is a job per seed, the winner is trained again as the finalists.

    Beyond the schema, a study is refused when a value its space can sample makes an invalid job spec
    (every bound and choice is tried against the base), or when a ``when`` names no earlier
    categorical parameter."""

    model_config = ConfigDict(json_schema_extra=_study_rules)

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    base: BaseJobSpec
    space: list[Param] = Field(default_factory=list, max_length=MAX_PARAMS)
    initial: list[dict[str, Scalar]] = Field(
        default_factory=list,
        max_length=MAX_CHOICES,
        description="Trials to run first (Optuna's enqueue_trial), each a value per space path; paths it "
        "leaves out are sampled.",
    )
    objective: Objective = Objective()
    trials: int = Field(default=24, ge=1, le=500, description="The budget: trials the study asks for.")
    parallelism: int = Field(default=2, ge=1, le=32, description="Trials running at once.")
    seeds: int = Field(
        default=1,
        ge=1,
        le=10,
        description="Seeds per trial (base.train.seed, +1, ...): one job each; the trial's value is their mean.",
    )
    pruner: PrunerSpec = Field(
        default_factory=lambda: MedianPruner(name="median"), description="Default: the median pruner at its defaults."
    )
    sampler: SamplerSpec = SamplerSpec()
    reference: ReferenceSpec | None = Field(
        default_factory=ReferenceSpec,
        description="Default {method: student_only, resamples: 1000}. The winner is trained again on every seed "
        "with this reference, for the study's gain over "
        "training alone and its 95% interval; null: the finalists train without it.",
    )

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> StudySpec:
        """The cross-field rules, each refusal at the field it is about (a 422 names ``space.2.when``). A
        stored spec (``stored_spec``) was checked when it was created: its space is not tried again."""
        try:
            if self.base.kind != "train":
                raise SpaceError(("base", "kind"), "must be 'train': a study searches trained students")
            if self.base.reference is not None:
                raise SpaceError(("base", "reference"), "the study trains its winner's reference (field reference)")
            if self.reference is not None and self.base.task == "retrieval":
                raise SpaceError(("reference",), "not for task retrieval (no per-sample metric); set it to null")
            metrics = TASK_METRICS[self.base.task]
            if self.objective.metric is not None and self.objective.metric not in metrics:
                raise SpaceError(("objective", "metric"), f"must be one of {', '.join(metrics)} for {self.base.task}")
            if self.base.method.name == AUTO_METHOD and (self.space or self.initial):
                raise SpaceError(("space",), "space and initial must be empty with base.method auto: it has its own")
            if not (info.context or {}).get(_STORED):
                check_space(self.base, self.effective_space(), self.effective_initial())
        except SpaceError as error:
            detail = InitErrorDetails(
                type=PydanticCustomError("study_rule", "{message}", {"message": error.message}),
                loc=error.loc,
                input=None,
            )
            raise ValidationError.from_exception_data(type(self).__name__, [detail]) from None
        return self

    @property
    def metric(self) -> str:
        """The objective's metric."""
        return self.objective.metric or PRIMARY_METRIC[self.base.task]

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """Which way is better for the objective."""
        return "minimize" if self.metric in LOWER_IS_BETTER else "maximize"

    def effective_space(self) -> list[FloatParam | IntParam | CategoricalParam]:
        """The searched parameters: the spec's, or the preset with ``method: auto``."""
        return auto_space(self.base) if self.base.method.name == AUTO_METHOD else list(self.space)

    def effective_initial(self) -> list[dict[str, Scalar]]:
        """The first trials: the spec's, or with ``method: auto`` each method at its defaults."""
        if self.base.method.name != AUTO_METHOD:
            return list(self.initial)
        space = auto_space(self.base)
        initial: list[dict[str, Scalar]] = []
        for name in next(p for p in space if isinstance(p, CategoricalParam)).choices:
            method = trial_spec(self.base, {"method.name": name}).method
            weights = {f"method.{field}": getattr(method, field) for field, *_ in AUTO_WEIGHTS[str(name)]}
            initial.append({"method.name": name, **weights})
        return initial


_STORED = "stored"


def stored_spec(data: dict[str, Any]) -> StudySpec:
    """A study's spec as stored at its creation: parsed again, without trying its space once more (every
    advance, each trial job and the reaper's passes read it; the check ran when the study was made)."""
    return StudySpec.model_validate(data, context={_STORED: True})


#: ``method: auto``'s candidates and their main weights (the ranges docs/results.md's tuning spanned).
AUTO_WEIGHTS: dict[str, list[tuple[str, float, float, bool]]] = {
    "student_only": [],
    "logit_kd": [("kd_weight", 0.25, 8.0, True), ("kd_temperature", 1.0, 8.0, True)],
    "mfh_kd": [("keep_ratio", 0.1, 0.9, False), ("kd_temperature", 1.0, 8.0, True)],
    "dml": [("kd_weight", 0.25, 4.0, True), ("kd_temperature", 1.0, 8.0, True)],
    "crd": [("alpha", 0.05, 2.0, True)],
    "feature_kd": [("feature_weight", 0.01, 5.0, True)],
    "c2kd": [("nt_weight", 0.25, 8.0, True)],
    "mst_distill": [("kl_weight", 0.5, 8.0, True)],
}


def param_keys(space: Sequence[FloatParam | IntParam | CategoricalParam]) -> list[str]:
    """Each parameter's name in the Optuna study: its path, or for a conditional one its path and its
    position (the same field may be searched over other ranges under other conditions); short and
    bounded whatever the conditions hold."""
    return [f"{param.path}#{index}" if param.when else param.path for index, param in enumerate(space)]


def auto_space(base: BaseJobSpec) -> list[FloatParam | IntParam | CategoricalParam]:
    """The preset space of ``method: auto``: the candidate methods this base can train, then each one's
    main weights, sampled only in that method's trials."""
    usable = [name for name in AUTO_WEIGHTS if _valid(base, {"method.name": name}) is None]
    space: list[FloatParam | IntParam | CategoricalParam] = [
        CategoricalParam(type="categorical", path="method.name", choices=list(usable))
    ]
    for name in usable:
        for field, low, high, log in AUTO_WEIGHTS[name]:
            when: dict[str, list[Scalar]] = {"method.name": [name]}
            space.append(FloatParam(type="float", path=f"method.{field}", low=low, high=high, log=log, when=when))
    return space


def trial_spec(
    base: BaseJobSpec,
    params: dict[str, Scalar],
    *,
    seed_index: int = 0,
    name: str | None = None,
    reference: ReferenceSpec | None = None,
) -> JobSpec:
    """The job spec of one trial and seed: the base with ``params`` written at their paths, the seed
    moved by ``seed_index``, and the job's ``name`` and ``reference`` when given. Raises pydantic's
    ValidationError."""
    data = _with_params(base, params, seed_index)
    if name is not None:
        data["name"] = name
    if reference is not None:
        data["reference"] = reference.model_dump(mode="json")
    return JobSpec.model_validate(data)


def _with_params(base: BaseJobSpec, params: dict[str, Scalar], seed_index: int) -> dict[str, Any]:
    data = base.model_dump(mode="json", exclude_unset=True)
    ordered = sorted(params.items(), key=lambda item: item[0] != "method.name")  # the method's fields follow it
    for path, value in ordered:
        if path == "method.name" and value != data["method"]["name"]:
            data["method"] = {"name": value}
        else:
            holder = data
            *parents, leaf = path.split(".")
            for part in parents:
                holder = holder.setdefault(part, {})
            holder[leaf] = value
    train = data.setdefault("train", {})
    train["seed"] = base.train.seed + seed_index
    return data


def _valid(base: BaseJobSpec, params: dict[str, Scalar]) -> str | None:
    """None when the base with ``params`` is a valid job spec; else the first problem."""
    try:
        trial_spec(base, params)
    except ValidationError as exc:
        return describe_validation_error(exc)[0]
    return None


def check_space(
    base: BaseJobSpec, space: list[FloatParam | IntParam | CategoricalParam], initial: list[dict[str, Scalar]]
) -> None:
    """Refuse a space that could sample an invalid job spec: a path outside method, model and train (or
    the study's own fields), bounds the job spec refuses, a ``when`` on no earlier categorical, a
    method field searched across methods without a ``when``, or an initial trial outside the space."""
    earlier: dict[str, CategoricalParam] = {}
    for index, param in enumerate(space):
        where: tuple[str | int, ...] = ("space", index)
        parts = param.path.split(".")
        if len(parts) != 2 or parts[0] not in SEARCHABLE_ROOTS or param.path in FIXED_PATHS:
            raise SpaceError(
                (*where, "path"),
                f"{param.path!r} cannot be searched (only a field of method, model or train, as section.field; "
                f"not {', '.join(sorted(FIXED_PATHS))})",
            )
        root = parts[0]
        for other in space[:index]:
            if other.path == param.path and not _exclusive(other, param):
                raise SpaceError(
                    (*where, "path"),
                    f"{param.path} is searched twice; each must have a when that the other's excludes",
                )
        if isinstance(param, FloatParam | IntParam) and (param.low > param.high or (param.log and param.low <= 0)):
            raise SpaceError(where, "needs low <= high, and low > 0 with log")
        for path, values in (param.when or {}).items():
            parent = earlier.get(path)
            if parent is None or not set(values) <= set(parent.choices):
                raise SpaceError((*where, "when"), f"{path!r} must be an earlier categorical parameter, its choices")
        if param.path == "method.name" and (not isinstance(param, CategoricalParam) or "teacher_only" in param.choices):
            raise SpaceError(where, "method.name is categorical, over methods that train a student (no teacher_only)")
        method_searched = "method.name" in earlier and "method.name" not in (param.when or {})
        if root == "method" and param.path != "method.name" and method_searched:
            raise SpaceError(where, f"{param.path} depends on the method; give it when: {{method.name: [...]}}")
        if _corner_count(param) > MAX_CORNERS:  # counted before any is built: a hostile space costs nothing
            raise SpaceError(where, f"more than {MAX_CORNERS} combinations of its values and its conditions' values")
        for params in _corners(param, earlier):
            problem = _valid(base, params)
            if problem is not None:
                raise SpaceError(where, f"{param.path} = {params[param.path]!r} makes an invalid job spec: {problem}")
        if isinstance(param, CategoricalParam):
            earlier[param.path] = param
    for index, given in enumerate(initial):
        for path, value in given.items():
            active = active_param(space, given, path)
            if active is None or not _inside(active, value):
                raise SpaceError(("initial", index, path), "not a value of the space (under its conditions)")
        problem = _valid(base, given)
        if problem is not None:
            raise SpaceError(("initial", index), f"makes an invalid job spec: {problem}")


def _exclusive(first: _Param, second: _Param) -> bool:
    """Whether no trial can meet both parameters' conditions: one condition path they share, with no
    value in common."""
    shared = set(first.when or {}) & set(second.when or {})
    return any(
        not set(map(repr, (first.when or {})[path])) & set(map(repr, (second.when or {})[path])) for path in shared
    )


def active_param(
    space: list[FloatParam | IntParam | CategoricalParam], values: dict[str, Scalar], path: str
) -> FloatParam | IntParam | CategoricalParam | None:
    """The parameter of ``space`` at ``path`` whose conditions ``values`` meet, if any."""
    for param in space:
        if param.path == path and all(values.get(cond) in allowed for cond, allowed in (param.when or {}).items()):
            return param
    return None


def _corner_count(param: FloatParam | IntParam | CategoricalParam) -> int:
    count = len(param.choices) if isinstance(param, CategoricalParam) else 2
    for allowed in (param.when or {}).values():
        count *= len(set(allowed))
        if count > MAX_CORNERS:
            break
    return count


def _corners(
    param: FloatParam | IntParam | CategoricalParam, earlier: dict[str, CategoricalParam]
) -> list[dict[str, Scalar]]:
    """The parameter's extreme values (or every choice), each under every combination of its
    conditions' values, as ``{path: value}`` in the order they apply."""
    values: list[Scalar] = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
    conditions = list((param.when or {}).items())
    combos = itertools.product(*(list(dict.fromkeys(allowed)) for _, allowed in conditions)) if conditions else [()]
    return [
        {**{path: value for (path, _), value in zip(conditions, combo, strict=True)}, param.path: value}
        for combo in combos
        for value in values
    ]


def _inside(param: FloatParam | IntParam | CategoricalParam, value: Scalar) -> bool:
    if isinstance(param, CategoricalParam):
        return value in param.choices
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(param, IntParam) and not float(value).is_integer():
        return False
    return param.low <= value <= param.high
