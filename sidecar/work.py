"""One poll's work on the locked state, shared by the parts that do it (records, logs, policy)."""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import model, report
from ..jobstates import FAILED, Phase, phase
from ..clock import iso
from ..model import Attempt, Run, State
from ..scheduler import Scheduler
from .settings import Settings

Key = tuple[Any, ...]  # an accounting record as far as a poll cares (records.key)


@dataclass
class Watch:
    """The next query's targets, and what a poll must see unchanged to skip the state."""

    ids: list[str]
    since: dt.datetime
    stamp: tuple[int, int, int] | None = None  # state.json (inode, size, mtime) as the poll wrote (or first read) it
    answer: frozenset[Key] | None = None  # the applied answer, without elapsed times
    logs: dict[str, int | None] = field(default_factory=dict)  # log still read -> its size then
    due: float = 0.0  # epoch: a full poll by then, whatever the answer
    quiet: int = 0  # polls since the last full one that found nothing new
    state: State | None = None  # the state as written at ``stamp``: the next full poll starts from it

    def kept(self) -> tuple[tuple[int, int, int], State] | None:
        """(stamp, state) for :func:`autoexp.statefile.locked`, handed over once: the poll that
        takes it changes it, and only its finished write makes it the file's again."""
        state, self.state = self.state, None
        return (self.stamp, state) if self.stamp is not None and state is not None else None


@dataclass
class PollResult:
    """What one poll did, for the sidecar's own log and for ``status --refresh``."""

    done: bool = False
    queried: bool = False
    query_error: str | None = None
    failures: int = 0  # consecutive failed queries so far
    records: int = 0
    query_s: float = 0.0  # wall time of the scheduler query
    work_s: float = 0.0  # wall time of autoexp's own work (read, apply, scan, write)
    changes: int = 0
    events: int = 0
    retried: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    quiet: bool = False  # nothing new: state.json left alone, only the heartbeat renewed
    targets: Watch | None = None  # the next query's targets, and what this poll saw (the loop keeps it)


class Work:
    """The locked state, the scheduler, the settings and what this poll found so far."""

    def __init__(self, exp_dir: Path, st: State, sched: Scheduler, settings: Settings, result: PollResult):
        self.exp_dir, self.st, self.sched, self.settings, self.result = exp_dir, st, sched, settings, result
        self.now = time.time()
        self.when = iso(self.now)
        self.requests: dict[str, tuple[str, str]] = {}  # run -> (action, event) from its log
        self.scripts = {a["job_id"]: exp_dir / a["script"] for a in st.get("arrays", [])}

    def state_change(self, name: str, run: Run, attempt: Attempt, previous: str, current: str) -> None:
        """Log one step of a run's state (STATE_CHANGE), with what matters for it."""
        self.result.changes += 1
        ended = phase(current) == Phase.ENDED
        problem = current in FAILED
        started, completed, elapsed_s = attempt.get("started"), attempt.get("completed"), attempt.get("elapsed_s")
        model.log(
            self.st, "STATE_CHANGE", name, self.when, Previous=previous, Current=current,
            Job_ID=attempt["job_id"], Attempt=attempt["attempt"] if attempt["attempt"] > 1 else None,
            Started=report.human_time(started) if current == "RUNNING" and started else None,
            Completed=report.human_time(completed) if ended and completed else None,
            Elapsed=report.human_duration(elapsed_s) if ended and elapsed_s is not None else None,
            Exit_code=attempt.get("exit_code") if problem else None,
            Reason=attempt.get("reason") if ended else None,
            Log=os.path.relpath(attempt["log"], self.exp_dir) if problem and attempt["log"] else None)

