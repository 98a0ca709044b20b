"""mi_joint: joint training with alpha * L_mi(T,S) only (beta = gamma = 0).

Maximising I(T;S) alone is satisfied by a teacher that forgets what only the auxiliary modalities
carry: this is the configuration that exhibits the weak-teacher failure.
"""

from __future__ import annotations

from core.objectives.base import OBJECTIVES
from core.objectives.joint import JointObjective


@OBJECTIVES.register("mi_joint")
class MIJointObjective(JointObjective):
    """Task losses + alpha * InfoNCE(T, S)."""
