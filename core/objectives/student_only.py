"""student_only: the three networks train on their task losses alone; the student is the floor.

No network sees another, so this run also yields the teacher_only ceiling and the auxiliary model.
"""

from __future__ import annotations

from core.objectives.base import OBJECTIVES, Objective


@OBJECTIVES.register("student_only")
class StudentOnlyObjective(Objective):
    """Task losses only."""
