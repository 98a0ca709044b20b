"""Live job streams as server-sent events: one poller per job per API process (a :class:`JobFeed`),
shared by every reader of that job, fanning out what the job gained.

A reader first catches up on its own, from its ``Last-Event-ID`` (or from the start), in bounded
reads, then takes the feed's broadcasts, skipping what it already sent: no gap and no duplicate.
The feed reads in threads of its own on an engine of its own, so open dashboards never take the
request handlers' threads or connections, and stops when its last reader leaves. A reader that
falls behind (its queue full) is dropped; its client reconnects with ``Last-Event-ID`` and catches
up. Events (docs/api.md, *Live stream*): ``job`` (the job, as ``GET /v1/jobs/{id}`` shows it, on
connect and on every change), ``metrics``, ``event``, ``log``, and ``end`` once the job finished
and everything was sent. Each carries ``id: <point>.<event>.<line>``, the last ids sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.sse import format_sse_event
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from jobs import queries
from jobs.errors import InvalidRequestError, LimitExceededError
from jobs.models import Job
from jobs.queries import Changes, Marks
from service.jobs.schemas import EventOut, JobOut, LogLineOut, MetricPointOut

log = logging.getLogger(__name__)

#: Items of each kind per read (and per ``metrics``/``log`` event).
READ_LIMIT = 2000
#: A reader's queue holds this many broadcasts; a reader further behind is dropped (it reconnects).
QUEUE_SIZE = 64
#: A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_SECONDS = 15.0
#: A reader waiting for news asks this often whether its client is still there (the server only
#: notices a closed connection when it writes to it).
DISCONNECT_CHECK_SECONDS = 1.0
#: After a job finishes, the feed reads once more this much later: the worker flushes the attempt's
#: last log lines just after it records the outcome.
END_GRACE_SECONDS = 1.5
MARKS = re.compile(r"^([0-9]{1,18})\.([0-9]{1,18})\.([0-9]{1,18})$")  # 18 digits: within a 64-bit id


def parse_last_event_id(value: str | None) -> Marks:
    """The marks a ``Last-Event-ID`` names; anything but ``<digits>.<digits>.<digits>`` is a 422."""
    if value is None or value == "":
        return Marks()
    found = MARKS.match(value)
    if found is None:
        message = "must be the id of an event of this stream (<point>.<event>.<line>, decimal digits)"
        raise InvalidRequestError([{"path": "header.Last-Event-ID", "message": message}])
    return Marks(*(int(part) for part in found.groups()))


def mark_id(marks: Marks) -> str:
    """The SSE ``id`` for ``marks``."""
    return f"{marks.point}.{marks.event}.{marks.line}"


def change_events(changes: Changes, seen: Marks, *, lines_only: bool) -> tuple[list[bytes], Marks]:
    """SSE messages for what in ``changes`` is newer than ``seen``; returns them and the new marks."""
    messages: list[bytes] = []
    marks = seen
    points = [MetricPointOut.of(p).model_dump(mode="json") for p in changes.points if p.id > seen.point]
    if points and not lines_only:
        marks = Marks(max(p.id for p in changes.points), marks.event, marks.line)
        messages.append(_message("metrics", {"items": points}, marks))
    for event in changes.events:
        if event.id > seen.event and not lines_only:
            marks = Marks(marks.point, event.id, marks.line)
            messages.append(_message("event", EventOut.of(event).model_dump(mode="json"), marks))
    lines = [LogLineOut.of(line).model_dump(mode="json") for line in changes.lines if line.id > seen.line]
    if lines:
        marks = Marks(marks.point, marks.event, max(line.id for line in changes.lines))
        messages.append(_message("log", {"items": lines}, marks))
    return messages, marks


def _changes(session: Session, *, job_id: int, marks: Marks, lines_only: bool) -> Changes:
    return queries.changes_after(session, job_id=job_id, marks=marks, limit=READ_LIMIT, lines_only=lines_only)


def _message(kind: str, data: Any, marks: Marks) -> bytes:
    return format_sse_event(data_str=json.dumps(data, separators=(",", ":")), event=kind, id=mark_id(marks))


@dataclass
class Broadcast:
    """One poll's news: what the job gained after ``before``, and the job itself when it changed.

    Its messages are encoded once and shared by every reader that stands at ``before`` (all of them
    but one that has just caught up past it), so twenty readers cost one encoding, not twenty."""

    changes: Changes | None
    job: Job | None
    finished: bool
    before: Marks = field(default_factory=Marks)
    _encoded: dict[tuple[str, bool], tuple[list[bytes], Marks]] = field(default_factory=dict)

    def messages_for(self, seen: Marks, *, owner: str, lines_only: bool) -> tuple[list[bytes], Marks]:
        """The SSE messages a reader at ``seen`` sends for this news, and its marks after them."""
        if seen != self.before:
            return self._encode(seen, owner=owner, lines_only=lines_only)
        key = (owner, lines_only)
        if key not in self._encoded:
            self._encoded[key] = self._encode(seen, owner=owner, lines_only=lines_only)
        return self._encoded[key]

    def _encode(self, seen: Marks, *, owner: str, lines_only: bool) -> tuple[list[bytes], Marks]:
        assert self.changes is not None
        messages, marks = change_events(self.changes, seen, lines_only=lines_only)
        if self.job is not None and not lines_only:
            messages.insert(0, _message("job", JobOut.of_job(self.job, owner=owner).model_dump(mode="json"), marks))
        return messages, marks


@dataclass
class JobFeed:
    """The one poller of a job in this process, and the queues of its readers."""

    job_id: int
    readers: set[asyncio.Queue[Broadcast]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    #: Set once the feed knows where the job stands: readers catch up only after it, so nothing
    #: written between the two reads is missed.
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class StreamHub:
    """The feeds of this API process, the per-owner connection counts, and the engine they read on."""

    def __init__(self, engine: Engine, *, poll_seconds: float, max_per_owner: int) -> None:
        self.sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self.engine = engine
        self.poll_seconds = poll_seconds
        self.max_per_owner = max_per_owner
        self.feeds: dict[int, JobFeed] = {}
        self.open_by_owner: dict[int, int] = {}
        self.limiter = anyio.CapacityLimiter(2)  # the feeds' reads, never the handlers' threads

    async def read(self, work: Callable[[Session], Any]) -> Any:
        """Run ``work`` with a session in one of the hub's own threads."""

        def run() -> Any:
            with self.sessions() as session:
                return work(session)

        return await anyio.to_thread.run_sync(run, limiter=self.limiter)

    def reserve(self, owner_id: int) -> Callable[[], None]:
        """Count one more open stream of ``owner_id`` (a 429 past the limit); returns its idempotent release."""
        if self.open_by_owner.get(owner_id, 0) >= self.max_per_owner:
            detail = f"{self.max_per_owner} streams are open for this owner (MMKD_MAX_STREAMS_PER_OWNER); close one"
            raise LimitExceededError(detail, retry_after_seconds=5)
        self.open_by_owner[owner_id] = self.open_by_owner.get(owner_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_by_owner[owner_id] -= 1

        return release

    async def subscribe(self, job_id: int) -> asyncio.Queue[Broadcast]:
        """A queue of the job's broadcasts, once the job's feed (started if need be) knows its marks."""
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = self.feeds[job_id] = JobFeed(job_id)
        queue: asyncio.Queue[Broadcast] = asyncio.Queue(QUEUE_SIZE)
        feed.readers.add(queue)
        if feed.task is None:
            feed.task = asyncio.create_task(self._poll(feed))
        await feed.ready.wait()
        return queue

    def unsubscribe(self, job_id: int, queue: asyncio.Queue[Broadcast]) -> None:
        """Forget the reader; the last one out stops the feed."""
        feed = self.feeds.get(job_id)
        if feed is None:
            return
        feed.readers.discard(queue)
        if not feed.readers:
            del self.feeds[job_id]
            if feed.task is not None:
                feed.task.cancel()

    async def _poll(self, feed: JobFeed) -> None:
        """Read the job's news until it ends. If reading fails (the database went away) or the job
        is gone, the readers are told to close: their clients reconnect and a fresh feed starts."""
        ended = False
        try:
            ended = await self._follow(feed)
        except Exception:
            log.exception("job %s: the live feed failed; its streams close and their clients reconnect", feed.job_id)
        finally:
            feed.ready.set()
            if not ended:
                self._send(feed, Broadcast(None, None, finished=False))
                if self.feeds.get(feed.job_id) is feed:
                    del self.feeds[feed.job_id]

    async def _follow(self, feed: JobFeed) -> bool:
        marks: Marks = await self.read(lambda session: queries.latest_marks(session, job_id=feed.job_id))
        feed.ready.set()
        updated_at = None
        while feed.readers:
            await asyncio.sleep(self.poll_seconds)
            job = await self.read(lambda session: session.scalar(select(Job).where(Job.id == feed.job_id)))
            if job is None:
                return False
            if job.status.terminal:  # everything the attempt wrote, its last log lines included
                await asyncio.sleep(END_GRACE_SECONDS)
            changed, updated_at = job.updated_at != updated_at, job.updated_at
            more = True
            while more:  # bounded reads until the job's news are all out
                changes: Changes = await self.read(partial(_changes, job_id=feed.job_id, marks=marks, lines_only=False))
                news = Broadcast(changes, job if changed else None, job.status.terminal and not changes.more, marks)
                marks, more = changes.marks, changes.more
                self._send(feed, news)
                changed = False
            if job.status.terminal:
                return True
        return True

    def _send(self, feed: JobFeed, news: Broadcast) -> None:
        for queue in list(feed.readers):
            try:
                queue.put_nowait(news)
            except asyncio.QueueFull:  # too far behind: dropped; its client reconnects and catches up
                feed.readers.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(Broadcast(None, None, finished=False))  # the reader's cue to close


def hub_of(app: FastAPI) -> StreamHub:
    """The app's stream hub."""
    hub: StreamHub = app.state.stream_hub
    return hub


async def job_events(
    app: FastAPI,
    *,
    job_id: int,
    owner: str,
    marks: Marks,
    disconnected: Callable[[], Awaitable[bool]],
    lines_only: bool = False,
) -> AsyncIterator[bytes]:
    """The SSE messages of one reader of ``job_id``: the job, its catch-up from ``marks``, then live news."""
    hub = hub_of(app)
    queue = await hub.subscribe(job_id)
    try:
        job: Job | None = await hub.read(lambda session: session.get(Job, job_id))
        if job is None:  # gone since the route found it: nothing to stream
            return
        if not lines_only:
            yield _message("job", JobOut.of_job(job, owner=owner).model_dump(mode="json"), marks)
        finished = job.status.terminal
        while True:  # catch up in bounded reads
            changes = await hub.read(partial(_changes, job_id=job_id, marks=marks, lines_only=lines_only))
            messages, marks = change_events(changes, marks, lines_only=lines_only)
            for message in messages:
                yield message
            if not changes.more:
                break
        quiet_since = time.monotonic()
        while not finished:
            try:
                news = await asyncio.wait_for(queue.get(), DISCONNECT_CHECK_SECONDS)
            except TimeoutError:
                if await disconnected():  # noticed now, not at the next write: its slot comes back
                    return
                if time.monotonic() - quiet_since >= KEEPALIVE_SECONDS:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
                continue
            if news.changes is None:  # told to close: it fell behind, or the feed stopped; its client reconnects
                return
            messages, marks = news.messages_for(marks, owner=owner, lines_only=lines_only)
            for message in messages:
                yield message
            finished = news.finished
        ended: Job | None = await hub.read(lambda session: session.get(Job, job_id))
        if ended is not None:
            yield _message("end", {"status": ended.status.value}, marks)
    finally:
        hub.unsubscribe(job_id, queue)


async def reserved(events: AsyncIterator[bytes], release: Callable[[], None]) -> AsyncIterator[bytes]:
    """``events``, holding one of the owner's stream slots until it ends, fails or is dropped unstarted."""
    try:
        async for message in events:
            yield message
    finally:
        release()


def open_stream(
    request: Request, *, job_id: int, owner_id: int, owner: str, last_event_id: str | None, lines_only: bool = False
) -> AsyncIterator[bytes]:
    """Check the ``Last-Event-ID`` and the owner's stream limit now (422, 429), then the stream's body."""
    marks = parse_last_event_id(last_event_id)
    release = hub_of(request.app).reserve(owner_id)
    events = job_events(
        request.app,
        job_id=job_id,
        owner=owner,
        marks=marks,
        disconnected=request.is_disconnected,
        lines_only=lines_only,
    )
    body = reserved(events, release)
    weakref.finalize(body, release)  # a response never sent still gives its slot back
    return body
