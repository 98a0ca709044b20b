"""The Optuna side of a study: its sampler and pruner from the spec, the study in the study storage,
asking a trial's values and reading its trials back. The only module with Optuna's objects in its
signatures; the service and the worker call it with plain values.
"""

from __future__ import annotations

import logging
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING

from studies.spec import CategoricalParam, FloatParam, IntParam, Scalar, StudySpec, active_param, param_keys

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)
#: The user attribute an ask sets once every value of its trial is stored: a running trial without it
#: was interrupted mid-ask and its values are incomplete.
SAMPLED = "mmkd_sampled"


@lru_cache(maxsize=4)
def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study storage at ``url`` (``migrations.study_storage``), one engine per process; the tables
    must exist (``mmkd db upgrade``)."""
    import optuna

    return optuna.storages.RDBStorage(
        url, engine_kwargs={"pool_pre_ping": True}, skip_table_creation=True, skip_compatibility_check=True
    )


def sampler_for(spec: StudySpec, *, asked: int = 0) -> optuna.samplers.BaseSampler:
    """TPE over the (conditional) space: ``startup_trials`` random trials first, with the constant liar
    so that parallel trials do not all land on the same point. Seeded by the spec's seed plus the
    number of trials already asked: each ask builds its sampler afresh (a study is advanced by many
    processes), so the seed must move with the study for every ask to draw new values, and the same
    study asks the same values whoever asks them."""
    import optuna

    with warnings.catch_warnings():  # group (conditional spaces) is "experimental" since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=spec.sampler.seed + asked,
            n_startup_trials=spec.sampler.startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )


def pruner_for(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The spec's pruner, fed by the validation value each trial's job reports after each epoch."""
    import optuna

    pruner = spec.pruner
    if pruner.name == "median":  # steps are the student's epochs from 1: the warm-up's are 1..warmup_epochs
        warmup_steps = pruner.warmup_epochs + 1
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=warmup_steps)
    if pruner.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_epochs, reduction_factor=pruner.reduction_factor
        )
    return optuna.pruners.NopPruner()


def find_study(spec: StudySpec, *, name: str, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    """The Optuna study ``name`` if it exists (reading creates nothing)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the service logs what it does itself
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler_for(spec), pruner=pruner_for(spec))
    except KeyError:
        return None


def load_study(spec: StudySpec, *, name: str, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """The Optuna study ``name``, created with the spec's direction on first use; while it has no trial
    its initial trials are enqueued (so a crash between creating and enqueuing is mended by the next
    load; ``skip_if_exists`` keeps a partial enqueue from doubling). Loading it again is harmless."""
    import optuna

    study = find_study(spec, name=name, storage=storage) or optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler_for(spec),
        pruner=pruner_for(spec),
        direction=spec.direction,
        load_if_exists=True,
    )
    initial = spec.effective_initial()
    if initial and len(study.get_trials(deepcopy=False)) < len(initial):
        space = spec.effective_space()
        for values in initial:
            study.enqueue_trial(_keyed(space, values), skip_if_exists=True)
    return study


def _keyed(space: list[FloatParam | IntParam | CategoricalParam], values: dict[str, Scalar]) -> dict[str, Scalar]:
    """Path-keyed values as the Optuna study names its parameters."""
    keys = dict(zip(map(id, space), param_keys(space), strict=True))
    keyed = {}
    for path, value in values.items():
        param = active_param(space, values, path)
        assert param is not None  # the spec checked every initial value
        keyed[keys[id(param)]] = value
    return keyed


def ask(study: optuna.Study, spec: StudySpec) -> tuple[int, dict[str, Scalar]]:
    """Start a trial (an enqueued one first) and sample its values: ``(number, {path: value})``. A
    parameter whose condition the trial's earlier values do not meet is not sampled."""
    study.sampler = sampler_for(spec, asked=len(study.get_trials(deepcopy=False)))
    trial = study.ask()
    try:
        return trial.number, _sample(trial, spec)
    except BaseException:  # a storage error mid-ask: the trial's values are partial, it cannot train
        from optuna.trial import TrialState

        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        raise


def _sample(trial: optuna.trial.Trial, spec: StudySpec) -> dict[str, Scalar]:
    values: dict[str, Scalar] = {}
    space = spec.effective_space()
    for key, param in zip(param_keys(space), space, strict=True):
        if not all(values.get(path) in allowed for path, allowed in (param.when or {}).items()):
            continue
        if isinstance(param, CategoricalParam):
            values[param.path] = _choice(trial.suggest_categorical(key, param.choices))
        elif isinstance(param, IntParam):
            step = 1 if param.log else param.step
            values[param.path] = trial.suggest_int(key, param.low, param.high, step=step, log=param.log)
        else:
            values[param.path] = trial.suggest_float(key, param.low, param.high, log=param.log)
    trial.set_user_attr(SAMPLED, True)
    return values


def _choice(value: object) -> Scalar:
    """A categorical value as the space gave it (Optuna types it loosely)."""
    assert isinstance(value, str | int | float | bool)
    return value


def trial_values(spec: StudySpec, trial: optuna.trial.FrozenTrial) -> dict[str, Scalar]:
    """A started trial's values by spec path, in the space's order."""
    space = spec.effective_space()
    by_key = dict(zip(param_keys(space), (param.path for param in space), strict=True))
    return {by_key[key]: value for key, value in trial.params.items() if key in by_key}


def state_counts(study: optuna.Study) -> dict[str, int]:
    """The study's trials by state (``complete``, ``pruned``, ``fail``...)."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        state = trial.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
    return counts


def complete_value(trial: optuna.trial.FrozenTrial) -> float:
    """A complete trial's objective (Optuna types it optional: other states have none)."""
    assert trial.value is not None
    return float(trial.value)
