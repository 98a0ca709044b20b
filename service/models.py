"""Every ORM model, imported so ``Base.metadata`` is complete (for Alembic and tests)."""

from service.jobs.models import Artifact, Job, JobEvent, MetricPoint
from service.keys.models import ApiKey, Owner
from service.orm import Base

__all__ = ["ApiKey", "Artifact", "Base", "Job", "JobEvent", "MetricPoint", "Owner"]
