"""The methods, one file each, all registered in ``OBJECTIVES`` under their spec key."""

from core.objectives import (
    c2kd,
    crd,
    dml,
    feature_kd,
    logit_kd,
    mfh_kd,
    mi_joint,
    mi_joint_aux,
    mst_distill,
    paper,
    student_only,
    teacher_only,
)
from core.objectives.base import OBJECTIVES, Batch, Forward, Objective

__all__ = [
    "OBJECTIVES",
    "Batch",
    "Forward",
    "Objective",
    "c2kd",
    "crd",
    "dml",
    "feature_kd",
    "logit_kd",
    "mfh_kd",
    "mi_joint",
    "mi_joint_aux",
    "mst_distill",
    "paper",
    "student_only",
    "teacher_only",
]
