"""Applying accounting records: every attempt brought up to what the scheduler says, each step of
a run's state logged once (STATE_CHANGE), a Slurm requeue as a new attempt of the same run."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from .. import clock, model
from ..jobstates import Phase, phase
from ..model import Attempt, Run, State
from ..scheduler import JobRecord
from .work import Work

SINCE_MARGIN = 600  # s: accounting is asked from the experiment's creation minus this (clock skew)
VANISH_GRACE = 60  # s: a task missing from accounting this long was cancelled while pending


def since(st: State) -> dt.datetime:
    """From when accounting is asked about the experiment's jobs."""
    created = clock.parse_time(st.get("created")) or dt.datetime.now(dt.timezone.utc)
    return created - dt.timedelta(seconds=SINCE_MARGIN)


class Records(Work):
    """Part of a poll: the records of one scheduler query applied to the runs' attempts."""

    def apply(self, records: list[JobRecord], asked_at: float) -> None:
        """Bring every attempt up to what accounting says (allocations in submission order)."""
        explicit: dict[str, list[JobRecord]] = defaultdict(list)
        collapsed: dict[str, JobRecord] = {}
        arrays_seen: set[str] = set()
        for record in records:
            if record.array_job:
                arrays_seen.add(record.array_job)
            if record.collapsed:
                collapsed[record.job_id] = record
            else:
                explicit[record.job_id].append(record)
        for allocations in explicit.values():
            allocations.sort(key=lambda r: r.submitted or "~")  # stable: sacct lists them in order
        self.result.records = len(records)
        model.query_of(self.st)["asked"] = asked_at
        sidecar = self.st.get("sidecar") or {}
        if explicit.get(str(sidecar.get("job_id"))):
            sidecar["state"] = explicit[str(sidecar["job_id"])][-1].state
        for name, run in self.st["runs"].items():
            if run["attempts"]:
                self._apply_run(name, run, explicit, collapsed, arrays_seen)

    def _apply_run(self, name: str, run: Run, explicit: dict[str, list[JobRecord]],
                   collapsed: dict[str, JobRecord], arrays_seen: set[str]) -> None:
        attempts = run["attempts"]
        logged_from = len(attempts) - 1  # earlier attempts change silently (they are not the run's state)
        current = attempts[-1]
        have = sum(1 for a in attempts if a["job_id"] == current["job_id"])
        for record in explicit.get(current["job_id"], [])[have:]:  # Slurm requeued it: a new allocation
            attempts.append(model.requeued_attempt(attempts[-1], record.submitted))
        new = len(attempts) - (logged_from + 1)
        shown = run["state"]
        seen: dict[str, int] = defaultdict(int)
        for k, attempt in enumerate(attempts):
            job_id = attempt["job_id"]
            allocations = explicit.get(job_id) or ([collapsed[job_id]] if job_id in collapsed else [])
            nth = seen[job_id]
            seen[job_id] += 1
            steps: list[str] = []
            if nth < len(allocations):
                attempt.pop("missing_since", None)
                steps = self._update(attempt, allocations[nth])
            elif not allocations and nth == 0:
                steps = self._missing(attempt, job_id.split("_")[0] in arrays_seen)
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
        if attempt.get("ended_seen") or not array_known:
            attempt.pop("missing_since", None)
            return []
        since = attempt.setdefault("missing_since", self.when)
        if self.now - (clock.epoch(since) or self.now) < max(VANISH_GRACE, 3 * self.settings.interval):
            return []
        ghost = JobRecord(job_id=attempt["job_id"], state="CANCELLED", completed=self.when,
                          reason="(no longer in the queue or in accounting)")
        return self._update(attempt, ghost)

