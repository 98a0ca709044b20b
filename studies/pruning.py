"""A trial's job and its pruner: after each validation the job reports the objective's value to its
Optuna trial (the step is the epoch) and asks the study's pruner whether to go on. Used by the
worker's tracker; the pruner compares against the values the study's other trials reported.

With several seeds per trial, the first seed's job reports and is judged (one series per trial, as
the pruners compare); when it is pruned, the trial's other seeds are cancelled by the study's next
advance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from migrations.study_storage import study_storage_url
from studies import search
from studies.spec import StudySpec, stored_spec

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


class TrialPruning:
    """Reports one trial job's validation values and answers whether its pruner stops it."""

    def __init__(
        self, *, spec: StudySpec, study: optuna.Study, storage: optuna.storages.BaseStorage, trial_number: int
    ) -> None:
        import optuna

        self.study = study
        study_id = storage.get_study_id_from_name(study.study_name)
        self.storage, self.trial_id = storage, storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self.trial = optuna.trial.Trial(self.study, self.trial_id)
        self.series = f"student/{spec.metric}"
        self.pruner = spec.pruner.name

    def check(self, *, epoch: int, metrics: Mapping[str, float]) -> str | None:
        """Report ``metrics``' objective for ``epoch``; the reason when the pruner stops the trial, else
        None. A trial that is no longer running (its study was cancelled) or a storage error never
        prunes: the job goes on and its end is settled by the study."""
        value = metrics.get(self.series)
        if value is None:
            return None
        try:
            current = self.storage.get_trial(self.trial_id)
            if current.state.name != "RUNNING":
                return None
            if epoch not in current.intermediate_values:
                self.trial.report(value, step=epoch)
            if self.trial.should_prune():
                return f"pruned by the study's {self.pruner} pruner after epoch {epoch}: val {self.series} {value:.4g}"
        except Exception as exc:  # the study storage is down: train on, the trial is judged at its end
            log.warning("trial pruning unavailable at epoch %s: %s", epoch, exc)
        return None


def trial_pruning(
    *, study_spec: dict[str, Any], optuna_name: str, trial_number: int, seed: int, database_url: str
) -> TrialPruning | None:
    """The pruning of a trial's job, or None: when the study prunes nothing, for every seed of a trial
    but its first (the first seed's job reports and is judged; a pruned trial's other seeds are
    cancelled by the study), and when the study storage cannot be read (the job trains on unpruned,
    and is judged at its end)."""
    spec = stored_spec(study_spec)
    if spec.pruner.name == "none" or seed != spec.base.train.seed:
        return None
    try:
        storage = search.open_storage(study_storage_url(database_url))
        study = search.find_study(spec, name=optuna_name, storage=storage)
        if study is None:
            return None
        return TrialPruning(spec=spec, study=study, storage=storage, trial_number=trial_number)
    except Exception as exc:
        log.warning("trial %s: its pruner is unavailable, training without: %s", trial_number, exc)
        return None
