"""teacher_only: the same independent training as student_only, reported for the teacher.

The teacher needs the auxiliary modalities at inference; its result is the ceiling and the
reference for the weak-teacher claim.
"""

from __future__ import annotations

from core.objectives.base import OBJECTIVES, Objective


@OBJECTIVES.register("teacher_only")
class TeacherOnlyObjective(Objective):
    """Task losses only."""
