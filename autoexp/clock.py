"""The times of the state: UTC, ISO 8601 to the second (``2026-12-02T06:55:24Z``), as strings in
state.json and as epoch seconds or datetimes where they are compared."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime(FORMAT)


@lru_cache(maxsize=4096)  # a big sweep's tasks share their times (one submission): strptime is slow
def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.strptime(text, FORMAT).replace(tzinfo=dt.timezone.utc)


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime(FORMAT)


def epoch(text: str | None) -> float | None:
    parsed = parse_time(text)
    return parsed.timestamp() if parsed else None
