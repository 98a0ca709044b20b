"""The decision, in the worker's main process, whether a delivered train message starts a child.

With ``worker_max_tasks_per_child=1`` every message handed to the prefork pool spends a fresh
child process (fork, imports, torch) even when the job turns out to be cancelled and the child's
claim does nothing: hundreds of cancelled jobs' messages once delayed real work by minutes. So the
request asks the database first (one small query, :func:`jobs.limits.start_verdict`) and

- starts a child when the job is queued and its owner is under the running limit;
- acknowledges the message without starting a child when the claim could not succeed (cancelled,
  finished or already running, no attempts left, no such job);
- holds the job back when its owner is at ``MMKD_MAX_RUNNING_PER_OWNER``: it stays queued and is
  published again after ``MMKD_RUNNING_LIMIT_DELAY_SECONDS`` (``jobs.lifecycle.hold_back``), and this
  message is acknowledged.

If the check itself fails (database unreachable), the message goes to a child as before and the
child's claim decides. The claim in the child stays the one compare-and-set that starts a job.

How it hooks into Celery: the worker builds its request class with
``celery.worker.request.create_request_cls(Task.Request, ...)``, which overrides
``execute_using_pool`` and calls ``self.revoked()`` before handing the message to the pool; a true
answer makes it raise ``TaskRevokedError``, which the worker catches to release its slot without
dispatching. So the check lives in ``revoked()`` and, like Celery's own revoke, marks the request
ready and acknowledges the message itself.
"""

from __future__ import annotations

import logging
from functools import lru_cache

from celery.worker.request import Request
from celery.worker.state import task_ready
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import unpooled_engine
from jobs.lifecycle import hold_back
from jobs.limits import Verdict, start_verdict
from jobs.publish import publisher
from worker.config import get_worker_settings

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _sessions(url: str) -> sessionmaker[Session]:
    # No pool: the main process forks children, and an open pooled connection would be inherited.
    return sessionmaker(bind=unpooled_engine(url), expire_on_commit=False)


def verdict_for(job_id: int) -> Verdict:
    """Start, skip or hold back ``job_id``; acts on a hold (publishes the job again later)."""
    settings = get_worker_settings()
    sessions = _sessions(settings.resolved_database_url)
    with sessions() as session:
        verdict, why = start_verdict(session, job_id=job_id, max_running=settings.max_running_per_owner)
        if verdict == Verdict.HOLD:
            delay = settings.running_limit_delay_seconds
            hold_back(session, job_id=job_id, publish=publisher(settings), delay_seconds=delay, reason=why)
            log.info("job %s held back: %s; offered again in %ss, no child started", job_id, why, delay)
        elif verdict == Verdict.SKIP:
            log.info("job %s %s: skipped without starting a child", job_id, why)
    return verdict


class TrainRequest(Request):
    """The train task's request: checks the job in the main process before a child is spent on it."""

    def revoked(self) -> bool:
        """Celery's revoke check, plus ours: True means "acknowledged here, do not dispatch"."""
        if super().revoked():
            return True
        try:
            verdict = verdict_for(int(self.args[0]))
        except Exception:  # the check is an optimisation: when it fails, the child's claim decides
            log.warning("start check for task %s failed; handing it to a child", self.id, exc_info=True)
            return False
        if verdict == Verdict.START:
            return False
        task_ready(self)
        self.acknowledge()
        self._already_revoked = True  # later revoked() calls answer True without asking again
        return True
