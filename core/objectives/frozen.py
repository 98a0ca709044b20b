"""Shared machinery of the frozen-teacher baselines (logit_kd, feature_kd, crd).

Two phases in one run: for ``teacher_epochs`` the teacher and the auxiliary model train on their
task losses; then both are frozen (eval mode, no gradients) and the student trains for
``train.epochs`` with its task loss plus the method's distillation term.
"""

from __future__ import annotations

from core.objectives.base import Objective, Role
from core.spec import C2KD, CRD, MFHKD, FeatureKD, JobSpec, LogitKD


class FrozenTeacherObjective(Objective):
    """Phase 1: teacher + auxiliary train. Phase 2: teacher frozen, student distils from it."""

    method: LogitKD | FeatureKD | CRD | C2KD | MFHKD

    def __init__(self, spec: JobSpec, *, repr_dim: int, n_train: int, output_dim: int | None = None) -> None:
        super().__init__(spec, repr_dim=repr_dim, n_train=n_train, output_dim=output_dim)
        assert isinstance(spec.method, LogitKD | FeatureKD | CRD | C2KD | MFHKD)
        self.method = spec.method
        self.teacher_epochs = spec.method.teacher_epochs or spec.train.epochs

    @property
    def total_epochs(self) -> int:
        """Teacher pre-training plus student distillation."""
        return self.teacher_epochs + self.spec.train.epochs

    def window(self, group: str) -> tuple[int, int]:
        """Teacher and auxiliary model train in phase 1; the student and method modules in phase 2."""
        if group in ("teacher", "auxiliary"):
            return 0, self.teacher_epochs
        return self.teacher_epochs, self.spec.train.epochs

    def distilling(self, epoch: int) -> bool:
        """True in phase 2 (the teacher is frozen)."""
        return epoch >= self.teacher_epochs

    def roles(self, epoch: int) -> dict[str, Role]:
        """Phase 1 trains teacher and auxiliary model; phase 2 trains the student only."""
        if self.distilling(epoch):
            return {"student": "train", "teacher": "frozen", "auxiliary": "idle"}
        return {"student": "idle", "teacher": "train", "auxiliary": "train"}
