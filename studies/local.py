"""``mmkd tune``: a study in this process, for users without a server. The same study spec, sampler,
pruner and result as the service's (``studies.search``, ``studies.outcome``); the trials train one
after another with the local trainer, and Optuna's storage is a SQLite file in the output folder
(``optuna.db``: open it with optuna-dashboard). Each trial's seed gets a folder with its
``metrics.jsonl`` and ``summary.json``; the finalists' folders hold the exported students.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from core.errors import MmkdError, Pruned
from core.spec import JobSpec, describe_validation_error
from core.tracking import NullTracker
from studies import search
from studies.outcome import study_result, trial_objective
from studies.pruning import TrialPruning
from studies.spec import StudySpec, trial_spec

if TYPE_CHECKING:
    from core.tracking import Tracker


class PruningTracker(NullTracker):
    """Reports each validation of a trial's run to its pruner; raises :class:`Pruned` at the next step
    once the pruner stops the trial (as the worker's tracker does)."""

    def __init__(self, pruning: TrialPruning) -> None:
        self.pruning = pruning
        self.reason: str | None = None

    def on_epoch(
        self, *, epoch: int, step: int, metrics: Mapping[str, float], student_epoch: int | None = None
    ) -> None:
        """Ask the pruner after each epoch the student trained in."""
        if student_epoch is not None and self.reason is None:
            self.reason = self.pruning.check(epoch=student_epoch, metrics=metrics)

    def should_stop(self) -> bool:
        """Raise once pruned."""
        if self.reason is not None:
            raise Pruned(self.reason)
        return False


#: Trains one job spec in a folder with a tracker (``core.engine.trainer.train``, injected by the CLI
#: with its progress display); returns the run's summary.
TrainRun = Callable[[JobSpec, Path, "Tracker"], dict[str, Any]]


def tune(spec: StudySpec, *, out: Path, train_run: TrainRun, echo: Callable[[str], None]) -> dict[str, Any]:
    """Run the study to its end in ``out`` (which must not exist) and return its result (also written
    to ``out/study.json``). Raises MmkdError when no trial completed."""
    import optuna
    from optuna.trial import TrialState

    out.mkdir(parents=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'optuna.db'}")
    study = search.load_study(spec, name=spec.name, storage=storage)
    for _ in range(spec.trials):
        number, values = search.ask(study, spec)
        pruning = TrialPruning(spec=spec, study=study, storage=storage, trial_number=number)
        try:  # every seed's spec first: values that make no valid job fail the trial, as on the service
            specs = [
                trial_spec(spec.base, values, seed_index=index, name=f"{spec.name}-t{number}-s{index}")
                for index in range(spec.seeds)
            ]
        except ValidationError as exc:
            study.tell(number, state=TrialState.FAIL)
            echo(f"trial {number} {values}: failed: {describe_validation_error(exc)[0]}")
            continue
        try:  # the first seed reports to the pruner and is judged, as on the service
            results = [
                train_run(
                    job_spec,
                    out / f"trial-{number}-s{index}",
                    PruningTracker(pruning) if spec.pruner.name != "none" and index == 0 else NullTracker(),
                )
                for index, job_spec in enumerate(specs)
            ]
        except Pruned as exc:
            study.tell(number, state=TrialState.PRUNED)
            echo(f"trial {number} {values}: {exc}")
            continue
        except MmkdError as exc:
            study.tell(number, state=TrialState.FAIL)
            echo(f"trial {number} {values}: failed: {exc}")
            continue
        value = sum(trial_objective(result, spec.metric) for result in results) / len(results)
        study.tell(number, value)
        echo(f"trial {number} {values}: validation {spec.metric} {value:.4f}")

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise MmkdError(f"no trial completed ({search.state_counts(study)})")
    best = study.best_trial
    values = search.trial_values(spec, best)
    method = values.get("method.name", spec.base.method.name)
    reference = spec.reference if method != "student_only" else None
    finalists = []
    for index in range(spec.seeds):
        job_spec = trial_spec(
            spec.base, values, seed_index=index, name=f"{spec.name}-final-s{index}", reference=reference
        )
        finalists.append((None, train_run(job_spec, out / f"final-s{index}", NullTracker())))
    result = study_result(
        spec,
        winner=best.number,
        validation=search.complete_value(best),
        values=values,
        finalists=finalists,
        trials=search.state_counts(study),
    )
    (out / "study.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
