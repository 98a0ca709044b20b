"""The study spec without a server: how a trial's job spec is made from the base, the preset of
method auto, the examples, the Optuna side's sampler and pruner, and the gain over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from studies import search
from studies.gain import gain_over_seeds
from studies.spec import StudySpec, param_keys, trial_spec

ROOT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "name": "kd",
    "dataset": {"name": "mfeat", "primary": ["fou"], "auxiliary": ["kar"]},
    "method": {"name": "logit_kd", "kd_weight": 2.0},
    "train": {"epochs": 3, "seed": 4},
}


def study(**fields: Any) -> StudySpec:
    return StudySpec.model_validate({"name": "s", "base": BASE, **fields})


def test_a_trial_writes_its_values_at_their_paths_and_moves_the_seed() -> None:
    spec = study()
    job = trial_spec(spec.base, {"train.lr": 0.01, "model.dropout": 0.3}, seed_index=2, name="s-t0-s2")
    assert (job.name, job.train.lr, job.model.dropout, job.train.seed) == ("s-t0-s2", 0.01, 0.3, 6)
    assert job.method.model_dump(exclude_unset=True) == {"name": "logit_kd", "kd_weight": 2.0}


def test_another_method_starts_from_its_own_defaults_and_the_same_keeps_the_base_fields() -> None:
    spec = study()
    other = trial_spec(spec.base, {"method.kd_temperature": 2.0, "method.name": "dml"})  # name applies first
    assert other.method.model_dump(exclude_unset=True) == {"name": "dml", "kd_temperature": 2.0}
    same = trial_spec(spec.base, {"method.name": "logit_kd", "method.kd_temperature": 2.0})
    assert same.method.model_dump(exclude_unset=True) == {"name": "logit_kd", "kd_weight": 2.0, "kd_temperature": 2.0}


def test_auto_offers_the_methods_its_task_can_train_each_at_its_defaults_first() -> None:
    spec = study(base={**BASE, "method": {"name": "auto"}})
    methods = spec.effective_space()[0]
    assert methods.path == "method.name" and "teacher_only" not in methods.choices  # type: ignore[union-attr]
    assert len(spec.effective_initial()) == len(methods.choices) == 8  # type: ignore[union-attr]
    space = spec.effective_space()
    keys = dict(zip(param_keys(space), space, strict=True))
    weights = [(key, param.when) for key, param in keys.items() if param.path == "method.kd_weight"]
    assert weights == [
        ("method.kd_weight#1", {"method.name": ["logit_kd"]}),
        ("method.kd_weight#5", {"method.name": ["dml"]}),
    ]
    data = {"uri": "s3://b/d.npz", "primary": ["a"], "auxiliary": ["b"]}
    regression = dict(BASE, method={"name": "auto"}, task="regression", dataset=data)
    space = StudySpec.model_validate({"name": "r", "base": regression}).effective_space()
    assert "c2kd" not in space[0].choices  # type: ignore[union-attr]  # c2kd is classification only


@pytest.mark.parametrize("example", ["studies/mfeat-auto.yaml"])
def test_the_example_study_is_valid(example: str) -> None:
    spec = StudySpec.model_validate(yaml.safe_load((ROOT / "examples" / example).read_text()))
    assert spec.base.method.name == "auto" and spec.metric == "accuracy" and spec.direction == "maximize"


def test_the_example_tune_study_takes_the_distill_spec_as_its_base() -> None:
    body = yaml.safe_load((ROOT / "examples/studies/kd-weights.yaml").read_text())
    base = yaml.safe_load((ROOT / "examples/mfeat-distill.yaml").read_text())
    assert StudySpec.model_validate({**body, "base": base}).trials == 12


def test_an_error_metric_is_minimized() -> None:
    regression = dict(BASE, task="regression", method={"name": "student_only"})
    regression["dataset"] = {"uri": "s3://b/d.npz", "primary": ["a"], "auxiliary": ["b"]}
    spec = StudySpec.model_validate({"name": "r", "base": regression, "space": [], "reference": None})
    assert (spec.metric, spec.direction) == ("mae", "minimize")


def test_the_median_pruner_never_judges_the_warm_up_epochs() -> None:
    spec = study(pruner={"name": "median", "startup_trials": 1, "warmup_epochs": 2})
    optuna_study = optuna.create_study(direction="maximize", pruner=search.pruner_for(spec))
    finished = optuna_study.ask()
    for epoch in (1, 2, 3):
        finished.report(0.9, epoch)
    optuna_study.tell(finished, 0.9)
    lagging = optuna_study.ask()
    verdicts = []
    for epoch in (1, 2, 3):
        lagging.report(0.1, epoch)
        verdicts.append(lagging.should_prune())
    assert verdicts == [False, False, True]  # the student's epochs 1 and 2 are the warm-up


def test_ask_samples_a_conditional_parameter_only_under_its_condition() -> None:
    space = [
        {"path": "method.name", "type": "categorical", "choices": ["logit_kd", "student_only"]},
        {"path": "method.kd_weight", "type": "float", "low": 1, "high": 2, "when": {"method.name": ["logit_kd"]}},
    ]
    spec = study(space=space, initial=[{"method.name": "student_only"}, {"method.name": "logit_kd"}])
    optuna_study = search.load_study(spec, name="c", storage=optuna.storages.InMemoryStorage())
    first, second = search.ask(optuna_study, spec), search.ask(optuna_study, spec)
    assert first == (0, {"method.name": "student_only"})
    assert second[1]["method.name"] == "logit_kd" and 1 <= second[1]["method.kd_weight"] <= 2


def _gain(value: float) -> dict[str, Any]:
    return {
        "reference_method": "student_only",
        "metric": "accuracy",
        "student": 0.8 + value,
        "reference": 0.8,
        "value": value,
        "low": value - 0.05,
        "high": value + 0.05,
        "resamples": 1000,
        "test_samples": 400,
    }


def test_one_seed_keeps_its_interval_over_test_samples() -> None:
    assert gain_over_seeds([_gain(0.02)], resamples=500) == {**_gain(0.02), "over": "test_samples"}


def test_several_seeds_average_and_resample_the_seeds() -> None:
    gain = gain_over_seeds([_gain(0.01), _gain(0.03), _gain(0.05)], resamples=2000)
    assert gain["over"] == "seeds" and gain["seeds"] == 3 and gain["resamples"] == 2000
    assert gain["value"] == pytest.approx(0.03) and gain["student"] == pytest.approx(0.83)
    assert 0.01 - 1e-12 <= gain["low"] < 0.03 < gain["high"] <= 0.05 + 1e-12
    assert gain_over_seeds([_gain(0.01), _gain(0.03), _gain(0.05)], resamples=2000) == gain  # seeded
    same = gain_over_seeds([_gain(0.02), _gain(0.02)], resamples=100)
    assert (same["low"], same["high"]) == pytest.approx((0.02, 0.02))


def test_each_ask_draws_new_values_though_every_advance_loads_the_study_afresh() -> None:
    spec = study(space=[{"path": "train.lr", "type": "float", "low": 1e-4, "high": 1e-2, "log": True}])

    def asked(storage: optuna.storages.BaseStorage) -> list[Any]:
        return [search.ask(search.load_study(spec, name="x", storage=storage), spec)[1]["train.lr"] for _ in range(3)]

    first = asked(optuna.storages.InMemoryStorage())
    assert len(set(first)) == 3
    assert asked(optuna.storages.InMemoryStorage()) == first  # the same study asks the same values


def test_initial_trials_lost_by_a_crash_before_enqueuing_are_enqueued_on_the_next_load() -> None:
    spec = study(
        space=[{"path": "train.lr", "type": "categorical", "choices": [0.1, 0.01, 0.001]}],
        initial=[{"train.lr": 0.1}, {"train.lr": 0.01}],
    )
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(study_name="x", storage=storage, direction="maximize")  # created, then the crash
    first = search.load_study(spec, name="x", storage=storage)
    assert [trial.system_attrs["fixed_params"] for trial in first.get_trials()] == [
        {"train.lr": 0.1},
        {"train.lr": 0.01},
    ]
    again = search.load_study(spec, name="x", storage=storage)
    assert len(again.get_trials()) == 2  # loading again enqueues nothing more


def test_successive_halving_keeps_the_best_third_at_its_first_rung() -> None:
    spec = study(pruner={"name": "successive_halving", "min_epochs": 2, "reduction_factor": 3})
    optuna_study = optuna.create_study(direction="maximize", pruner=search.pruner_for(spec))
    for value in (0.9, 0.8, 0.7):  # three trials reach the rung at epoch 2
        finished = optuna_study.ask()
        finished.report(value, 2)
        optuna_study.tell(finished, value)
    verdicts = {}
    for value in (0.95, 0.75):
        trial = optuna_study.ask()
        trial.report(value, 1)
        before_rung = trial.should_prune()
        trial.report(value, 2)
        verdicts[value] = (before_rung, trial.should_prune())
    assert verdicts == {0.95: (False, False), 0.75: (False, True)}
    assert search.pruner_for(study(pruner={"name": "none"})).prune(optuna_study, optuna_study.trials[0]) is False
