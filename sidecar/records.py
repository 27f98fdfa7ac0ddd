"""Applying accounting records: every attempt brought up to what the scheduler says, each step of
a run's state logged once (STATE_CHANGE), a Slurm requeue as a new attempt of the same run.

A poll asks only about what can still change (:func:`watched`): the arrays with a task not yet
seen ended, from shortly before the last applied query (:func:`window`). Accounting lists a job in
that window if it had not ended by its start, so an allocation that ended earlier is left out: the
records of one task are the latest of its allocations, matched to its attempts by submission time.
A watched task the answer leaves out (accounting was late, or the sidecar was down) widens the
next window to the task's submission, so nothing that ended unseen is ever skipped."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from .. import clock, model
from ..arrayspec import holds
from ..jobstates import ENDED, Phase, phase
from ..model import Attempt, Run, State
from ..scheduler import JobRecord
from .work import Key, Work

SINCE_MARGIN = 600  # s: accounting is asked from the experiment's creation minus this (clock skew)
VANISH_GRACE = 60  # s: a task missing from accounting this long was cancelled while pending
WINDOW_MARGIN = 60  # s: a poll asks from the last applied query minus this (clock skew; a later end widens it)
REQUEUE_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "REQUEUED"})  # Slurm may bring these back
REQUEUE_WATCH = 600  # s: how long an attempt in one of them is still asked about (policy waits 300 s)


def since(st: State) -> dt.datetime:
    """From when accounting is asked about the experiment's jobs."""
    created = clock.parse_time(st.get("created")) or dt.datetime.now(dt.timezone.utc)
    return created - dt.timedelta(seconds=SINCE_MARGIN)


def watched(attempt: Attempt, now: float, latest: bool = True) -> bool:
    """Whether accounting can still tell something new about this attempt (Slurm may requeue
    only a run's ``latest`` one)."""
    if attempt["state"] not in ENDED or not attempt.get("ended_seen") or attempt.get("missing_since"):
        return True
    ended = now - (clock.epoch(attempt["ended_seen"]) or now)  # accounting settles an end (exit code) late
    return ended < WINDOW_MARGIN or (latest and attempt["state"] in REQUEUE_STATES and ended < REQUEUE_WATCH)


def window(st: State, now: float) -> tuple[list[str], dt.datetime]:
    """What the next query asks about: the arrays with a watched attempt (and the sidecar job), from
    the last applied query minus :data:`WINDOW_MARGIN`, or from the submission of an attempt the
    last answer left out, never before :func:`since`."""
    arrays: set[str] = set()
    start = model.query_of(st).get("asked")
    begin = start - WINDOW_MARGIN if start else None
    for run in st["runs"].values():
        attempts = run["attempts"]
        last = len(attempts) - 1
        for k, attempt in enumerate(attempts):
            array = attempt["job_id"].partition("_")[0]
            if attempt.get("missing_since"):  # watched, and the window reaches back to its submission
                arrays.add(array)
                if begin is not None:
                    begin = min(begin, (clock.epoch(attempt.get("submitted")) or 0) - WINDOW_MARGIN)
            elif array not in arrays and watched(attempt, now, k == last):
                arrays.add(array)
    ids = [a["job_id"] for a in st.get("arrays", []) if a["job_id"] in arrays]
    sidecar_id = (st.get("sidecar") or {}).get("job_id")
    if sidecar_id and str(sidecar_id).isdigit():
        ids.append(str(sidecar_id))
    full = since(st)
    if begin is None:
        return ids, full
    return ids, max(full, dt.datetime.fromtimestamp(begin, dt.timezone.utc))


class Records(Work):
    """Part of a poll: the records of one scheduler query applied to the runs' attempts."""

    def apply(self, records: list[JobRecord], asked_at: float, asked_from: dt.datetime | None = None,
              applied: frozenset[Key] | None = None) -> None:
        """Bring every attempt up to what accounting says (allocations in submission order);
        ``asked_from``: the query's window began then (None: with the experiment); ``applied``:
        the :func:`key` of every record this process applied last time, which need not be again."""
        self.asked_from = asked_from.timestamp() if asked_from else None
        answer = Answer(records, applied)
        self.result.records = len(records)
        model.query_of(self.st)["asked"] = asked_at
        sidecar = self.st.get("sidecar") or {}
        if answer.explicit.get(str(sidecar.get("job_id"))):
            sidecar["state"] = answer.explicit[str(sidecar["job_id"])][-1].state
        for name, run in self.st["runs"].items():  # only runs with news, or a watched attempt not listed
            for attempt in run["attempts"]:
                listed, news = answer.look(attempt["job_id"])
                if news or (not listed and watched(attempt, self.now)):
                    self._apply_run(name, run, answer)
                    break

    def _apply_run(self, name: str, run: Run, answer: Answer) -> None:
        attempts = run["attempts"]
        logged_from = len(attempts) - 1  # earlier attempts change silently (they are not the run's state)
        current = attempts[-1]
        first = {job_id: first_listed([a for a in attempts if a["job_id"] == job_id], answer.explicit.get(job_id, []))
                 for job_id in {a["job_id"] for a in attempts}}
        have = sum(1 for a in attempts if a["job_id"] == current["job_id"]) - first[current["job_id"]]
        for record in answer.explicit.get(current["job_id"], [])[have:]:  # Slurm requeued it: a new allocation
            attempts.append(model.requeued_attempt(attempts[-1], record.submitted))
        new = len(attempts) - (logged_from + 1)
        shown = run["state"]
        seen: dict[str, int] = defaultdict(int)
        for k, attempt in enumerate(attempts):
            job_id = attempt["job_id"]
            allocations = answer.allocations(job_id)
            nth = seen[job_id] - first[job_id]
            seen[job_id] += 1
            steps: list[str] = []
            if 0 <= nth < len(allocations):
                attempt.pop("missing_since", None)
                steps = self._update(attempt, allocations[nth])
            elif not allocations and nth == 0:
                steps = self._missing(attempt, job_id.split("_")[0] in answer.arrays)
            if k >= len(attempts) - new:
                steps.insert(0, "PENDING")  # a new allocation begins by waiting
            if k >= logged_from:
                for step in steps:
                    if step != shown:
                        self.state_change(name, run, attempt, shown, step)
                        shown = step
        model.show_latest(run)

    def _update(self, attempt: Attempt, record: JobRecord) -> list[str]:
        """Apply one allocation record; the states the run went through (RUNNING if skipped)."""
        old, new = attempt["state"], record.state
        if phase(new) < phase(old):
            return []  # accounting lags behind what we know already (our own cancel, say)
        steps: list[str] = []
        if new != old:
            if phase(old) == Phase.WAITING and phase(new) == Phase.ENDED and record.started:
                steps.append("RUNNING")
            steps.append(new)
        attempt.update({"state": new, "submitted": record.submitted or attempt.get("submitted"),
                        "started": record.started or attempt.get("started"),
                        "completed": record.completed if phase(new) == Phase.ENDED else None,
                        "elapsed_s": record.elapsed_s, "exit_code": record.exit_code,
                        "nodes": record.nodes or attempt.get("nodes")})
        if record.reason:
            attempt["reason"] = record.reason
        if phase(new) == Phase.ENDED:
            attempt.setdefault("ended_seen", self.when)
        return steps

    def _missing(self, attempt: Attempt, array_known: bool) -> list[str]:
        """A task accounting no longer lists: scancel of a pending task leaves no row at all."""
        if attempt.get("ended_seen"):
            attempt.pop("missing_since", None)
            return []
        began = clock.epoch(attempt.get("submitted"))
        covered = self.asked_from is None or (began is not None and self.asked_from <= began - WINDOW_MARGIN)
        if covered and not array_known:
            attempt.pop("missing_since", None)
            return []
        since = attempt.setdefault("missing_since", self.when)  # the next window reaches back to it
        if not covered:
            return []
        if self.now - (clock.epoch(since) or self.now) < max(VANISH_GRACE, 3 * self.settings.interval):
            return []
        ghost = JobRecord(job_id=attempt["job_id"], state="CANCELLED", completed=self.when,
                          reason="(no longer in the queue or in accounting)")
        return self._update(attempt, ghost)



def key(record: JobRecord) -> Key:
    """A record as far as it matters: a running task's elapsed time grows at every query."""
    if record.collapsed:
        return record.array_job, record.state, record.reason, record.tasks
    return (record.job_id, record.raw_id, record.state, record.reason, record.submitted, record.started,
            record.completed, record.exit_code, record.nodes)


class Answer:
    """One query's records by task: a task's rows of its own (one per allocation, in submission
    order), or the collapsed row of waiting tasks that lists it (one record for all of them).

    With ``applied`` (the keys of the last answer this process applied), a task is news if a row
    of its own changed, or if it waits in a collapsed row and did not wait so last time: a row
    that only shrank as tasks started brings no news for the tasks still in it."""

    def __init__(self, records: list[JobRecord], applied: frozenset[Key] | None):
        self.explicit: dict[str, list[JobRecord]] = defaultdict(list)
        self.arrays: set[str] = set()  # arrays with any record
        # array -> its collapsed rows, each with the tasks that waited so in the applied answer
        self.rows: dict[str, list[tuple[JobRecord, list[tuple[range, ...]]]]] = defaultdict(list)
        waited: dict[Key, list[tuple[range, ...]]] = defaultdict(list)  # (array, state, reason) -> tasks
        for old in applied or ():
            if len(old) == 4:  # a collapsed row's (see key)
                waited[old[:3]].append(old[3])
        for record in records:
            if record.array_job:
                self.arrays.add(record.array_job)
            if record.collapsed:
                row_key = key(record)
                before = [record.tasks] if applied is not None and row_key in applied else waited.get(row_key[:3], [])
                self.rows[str(record.array_job)].append((record, before))
            else:
                self.explicit[record.job_id].append(record)
        for allocations in self.explicit.values():
            allocations.sort(key=lambda r: r.submitted or "~")  # stable: sacct lists them in order
        self.fresh = None if applied is None else \
            {r.job_id for r in records if not r.collapsed and key(r) not in applied}

    def row(self, job_id: str) -> tuple[JobRecord | None, bool]:
        """The collapsed row listing this task, if any, and whether that is news."""
        array, _, task = job_id.partition("_")
        rows = self.rows.get(array)
        if rows and task.isdigit():
            number = int(task)
            for row, before in rows:
                if row.lists(number):
                    return row, not any(holds(tasks, number) for tasks in before)
        return None, False

    def allocations(self, job_id: str) -> list[JobRecord]:
        if job_id in self.explicit:
            return self.explicit[job_id]
        row, _ = self.row(job_id)
        return [row] if row else []

    def look(self, job_id: str) -> tuple[bool, bool]:
        """(listed, news) for one task."""
        own = job_id in self.explicit
        if own and (self.fresh is None or job_id in self.fresh):
            return True, True
        row, news = self.row(job_id)
        return own or row is not None, news


def first_listed(same: list[Attempt], listed: list[JobRecord]) -> int:
    """Which of a task's attempts (``same``, one per allocation) the first listed allocation is:
    a narrow window leaves out allocations that ended before it. By submission time; one newer
    than every attempt seen ended is a requeue; else the first (a full answer)."""
    if not listed or not listed[0].submitted or not same:
        return 0
    submitted = listed[0].submitted
    for j in range(len(same) - 1, -1, -1):
        if same[j].get("submitted") == submitted:
            return j
    if all(a.get("ended_seen") and (a.get("submitted") or "") < submitted for a in same):
        return len(same)
    return 0
