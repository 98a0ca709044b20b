"""Server-sent events as the API sends them (``/v1/jobs/{id}/stream``, ``/logs?follow=true``):
a small parser of the ``text/event-stream`` format and the typed events it yields."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from mmkd_client.models import Event, Job, LogLine, MetricPoint


class StreamEvent(BaseModel):
    """One event of a job's live stream: ``job``, ``metrics``, ``event``, ``log`` or ``end``."""

    kind: str
    id: str | None = None
    data: Any = None

    @property
    def job(self) -> Job | None:
        """The job's state (``job`` events)."""
        return Job.model_validate(self.data) if self.kind == "job" else None

    @property
    def points(self) -> list[MetricPoint]:
        """New metric points (``metrics`` events)."""
        return [MetricPoint.model_validate(p) for p in self.data["items"]] if self.kind == "metrics" else []

    @property
    def lines(self) -> list[LogLine]:
        """New log lines (``log`` events)."""
        return [LogLine.model_validate(line) for line in self.data["items"]] if self.kind == "log" else []

    @property
    def event(self) -> Event | None:
        """A job event (``event`` events)."""
        return Event.model_validate(self.data) if self.kind == "event" else None


def parse_events(lines: Iterator[str]) -> Iterator[StreamEvent]:
    """The events in a stream of text lines (comments and unknown fields skipped, as browsers do)."""
    kind, data, event_id = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield StreamEvent(kind=kind, id=event_id, data=json.loads("\n".join(data)))
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
