"""A poll that learns nothing new writes nothing: what the sidecar keeps between polls to know it.

After each poll that applied its answer (a full poll), the loop keeps a :class:`.work.Watch`: what the
next query asks (the arrays with a watched task, since when), that answer without its elapsed
times, the size of every log still read, state.json's identity as this poll wrote it, and when a
rule that counts time (a stall, a requeue's grace, a task missing from accounting) could next fire,
or an ended task's array may leave the query.
The next poll asks the scheduler exactly as a full one would; if the answer, the logs and the
state file are all as they were and nothing is due, it renews only the heartbeat file
(:func:`autoexp.statefile.beat`) and leaves state.json, the summary and events.log alone. Anything
else, or :data:`FULL_EVERY` without a full poll, makes it a full poll, which reads, applies and
writes as always.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from .. import statefile
from ..clock import epoch, iso
from ..model import State
from ..scheduler import JobRecord
from .policy import REQUEUE_GRACE
from .records import REQUEUE_STATES, WINDOW_MARGIN, key
from .settings import Settings
from .work import Key, Watch

FULL_EVERY = 600  # s: a full poll (state.json written) at least this often, even if nothing changed


def unchanged(watch: Watch, exp_dir: Path, records: Sequence[JobRecord], now: float) -> bool:
    """Nothing to apply: the same answer, no log grown, state.json as written, nothing due."""
    return watch.stamp is not None and watch.answer is not None and now < watch.due \
        and statefile.stamp(exp_dir) == watch.stamp \
        and fingerprint(within(records, watch.ids, watch.since)) == watch.answer \
        and all(size_of(path) == size for path, size in watch.logs.items())


def fingerprint(records: Sequence[JobRecord]) -> frozenset[Key]:
    """An answer as far as it matters (:func:`.records.key`)."""
    return frozenset(map(key, records))


def within(records: Sequence[JobRecord], ids: Sequence[str], since: dt.datetime) -> list[JobRecord]:
    """The records a query of ``ids`` from ``since`` lists: a poll whose window moved past a task's
    end does not take the task's absence for news. (sacct already answers so; this also holds
    for a scheduler that ignores the window.)"""
    start, asked = iso(since.timestamp()), set(ids)
    return [r for r in records if (r.array_job or r.job_id) in asked and (r.completed is None or r.completed >= start)]


def size_of(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def logs_read(st: State, settings: Settings) -> dict[str, int | None]:
    """The logs a poll still reads (and the size each had when last read)."""
    if not settings.any_rules():
        return {}
    return {c["path"]: c.get("size") for run in st["runs"].values()
            if (c := run.get("log_cursor")) is not None and not c.get("final")}


def due(st: State, settings: Settings, now: float) -> float:
    """When a rule that counts time may next fire: a full poll must look by then."""
    if st.get("intents") or st.get("done"):
        return now
    when = now + FULL_EVERY
    horizon = iso(now - max(WINDOW_MARGIN, REQUEUE_GRACE) - 1)  # an end seen before then is settled
    for run in st["runs"].values():
        for attempt in run["attempts"]:
            if attempt.get("missing_since"):
                return now
        if not run["attempts"]:
            continue
        current = run["attempts"][-1]
        if (ended := current.get("ended_seen")) and ended >= horizon:
            seen = epoch(ended) or now
            if seen + WINDOW_MARGIN > now:
                when = min(when, seen + WINDOW_MARGIN + 1)  # its array may then leave the query
            if current["state"] in REQUEUE_STATES:
                when = min(when, seen + REQUEUE_GRACE + 1)
        if current["state"] == "RUNNING" and (cursor := run.get("log_cursor")) and not cursor.get("stalled") \
                and (stall := settings.of(run).stall_after):
            when = min(when, (epoch(cursor.get("grown")) or now) + stall)
    return when
