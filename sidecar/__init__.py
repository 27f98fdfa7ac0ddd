"""The sidecar (``autoexp.sidecar``): a small job on a compute node that keeps an experiment's state
true, through any fault.

One poll (:func:`poll`; :func:`reconcile` is the same without a lease, for ``status --refresh``):

1. one scheduler query (``sacct``) covering every array of the experiment and its sidecar job,
   made without the state lock, since it may take seconds;
2. under the lock: the records are applied to the runs' attempts (STATE_CHANGE entries), each
   started run's log is read from where the last poll stopped (LOG_EVENT entries, metrics, stalls),
   the configured actions are taken (cancel, retry as one new array), a STATUS_CHECK entry is
   added, the sidecar's lease is renewed, and the experiment is finished once every run is over;
3. the lock is released: state.json, experiment_summary.md and events.log are written together.

What a poll learns is written in the same atomic state write as the log offsets that produced it,
so a sidecar killed at any instant (scancel, kill -9, a lost node) and started again rebuilds the
truth from the scheduler's accounting and the saved offsets: no transition missed, no event twice.

Only the holder of the lease may apply a poll. The lease is ``state["sidecar"]``: the holder's job
id and a heartbeat renewed every poll. A sidecar finds it is not the holder under the same lock
that would let it write, so two never apply polls at once; a holder whose job ended, or whose
heartbeat is older than three intervals, is dead and its lease is taken over. Before its own time
limit the sidecar submits its successor (``--dependency=afterany`` on itself, so the two never run
at once), hands it the lease and exits. In ``chain`` mode (``sidecar.mode``) each job polls once
and submits the next one to begin an interval later.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .. import actions, history, report, scheduler as schedmod, state as statefile
from ..config import Config, parse_duration, slurm_time_seconds
from ..errors import AutoexpError
from ..scheduler import TERMINAL, JobRecord, Scheduler
from . import logwatch

SINCE_MARGIN = 600  # s: accounting is asked from the experiment's creation minus this (clock skew)
STALE_MIN = 10  # s: a heartbeat younger than max(3 intervals, this) means the holder is alive
REQUEUE_GRACE = 300  # s: how long a NODE_FAIL the scheduler should requeue waits for its new allocation
VANISH_GRACE = 60  # s: a task missing from accounting this long was cancelled while pending
BACKOFF_MAX = 600  # s: longest pause between two scheduler queries after failures
QUERY_TIMEOUT = (20, 120)  # s: a query is hung after 10 intervals, within these bounds
EVENT_CAP = 100  # matches of one event recorded per attempt; later ones are counted only
PENDING_LIKE = frozenset({"PLANNED", "PENDING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
# An allocation that ended; REQUEUED ends it too, but then the run goes on in a new allocation.
ENDED = TERMINAL | {"REQUEUED"}


def rank(state: str) -> int:
    """0 waiting, 1 running, 2 ended: an allocation's state never goes down this scale."""
    if state in PENDING_LIKE:
        return 0
    return 2 if state in ENDED else 1


def stale_after(interval: float) -> float:
    return max(3 * interval, STALE_MIN)


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(iso: str | None) -> float | None:
    parsed = statefile.parse_time(iso) if iso else None
    return parsed.timestamp() if parsed else None


@dataclass
class Settings:
    """What the sidecar needs from the experiment's resolved config.yaml."""

    interval: float = 60.0
    rules: logwatch.Rules = field(default_factory=logwatch.Rules)
    stall_after: float | None = None
    stall_action: str = "log"
    retry_max: int = 0
    retry_on: frozenset = frozenset()
    mode: str = "job"
    handover: float = 300.0
    time_limit: float | None = None  # sidecar.time in seconds
    mail: bool = False

    @classmethod
    def load(cls, exp_dir: Path) -> "Settings":
        data = Config.from_experiment(Path(exp_dir)).data
        monitor = data.get("monitor") or {}
        sidecar = data.get("sidecar") or {}
        retries = monitor.get("retries") or {}
        limit = str(sidecar.get("time") or "")
        return cls(
            interval=float(monitor.get("interval") or 60),
            rules=logwatch.Rules.from_monitor(monitor),
            stall_after=parse_duration(monitor["stall_after"]) if monitor.get("stall_after") else None,
            stall_action=monitor.get("stall_action") or "log",
            retry_max=int(retries.get("max") or 0),
            retry_on=frozenset(s.upper() for s in retries.get("on") or []),
            mode=sidecar.get("mode") or "job",
            handover=parse_duration(sidecar.get("handover") or "5m"),
            time_limit=slurm_time_seconds(limit),
            mail=bool((data.get("notify") or {}).get("mail")),
        )


# --------------------------------------------------------------------------- the lease

def identity() -> str:
    """This sidecar's name in the lease: its job id, or host:pid when run by hand outside a job."""
    return os.environ.get("SLURM_JOB_ID") or f"{socket.gethostname()}:{os.getpid()}"


def holds(st: dict, me: str) -> bool:
    sidecar = st.get("sidecar") or {}
    return sidecar.get("job_id") == me and not sidecar.get("stopped")


def alive(st: dict, sched: Scheduler | None = None, now: float | None = None) -> bool:
    """Whether the experiment's recorded sidecar is polling or about to (submitted, pending).

    Dead: it stopped by itself, its job ended (asked to ``sched`` when given), its process is gone
    from this very host, or its heartbeat (its submission, before it started) is older than
    three intervals.
    """
    sidecar = st.get("sidecar") or {}
    job_id = sidecar.get("job_id")
    if not job_id or sidecar.get("stopped"):
        return False
    if sched is not None and str(job_id).isdigit():
        try:
            records = [r for r in sched.query([job_id], _since(st)) if r.job_id == job_id]
        except AutoexpError:
            records = []
        if records:
            latest = records[-1].state
            if latest in TERMINAL:
                return False
            if rank(latest) == 0:
                return True
    if sidecar.get("host") == socket.gethostname() and sidecar.get("pid") and sidecar.get("heartbeat"):
        if not _process_exists(int(sidecar["pid"])):
            return False
    beat = _epoch(sidecar.get("heartbeat") or sidecar.get("submitted"))
    interval = float(sidecar.get("interval") or 60)
    return beat is not None and (now or time.time()) - beat < stale_after(interval)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseLost(Exception):
    """Another sidecar holds the lease: this one must stop without writing anything."""


def _acquire(exp_dir: Path, sched: Scheduler, me: str, settings: Settings, quiet: bool) -> bool:
    """Take the lease if it is ours (we were submitted for it) or its holder is dead."""
    with statefile.locked(exp_dir) as st:
        sidecar = st.get("sidecar") or {}
        holder = sidecar.get("job_id")
        if st.get("done"):
            print(f"autoexp sidecar {me}: the experiment is done; nothing to watch", flush=True)
            return False
        if holder != me and alive(st, sched):
            print(f"autoexp sidecar {me}: sidecar {holder} holds the lease; exiting", flush=True)
            return False
        previous = {} if holder == me else {"previous": holder}
        st["sidecar"] = {**(sidecar if holder == me else {}), "job_id": me, **previous,
                         "host": socket.gethostname(), "pid": os.getpid(), "started": statefile.now(),
                         "heartbeat": statefile.now(), "interval": settings.interval,
                         "mode": settings.mode}
        st["sidecar"].pop("stopped", None)
        if not quiet:
            statefile.log(st, "SIDECAR_START", f"job {me}", Host=socket.gethostname(),
                          Took_over_from=None if holder in (None, me) else f"job {holder} (not alive)",
                          Interval=f"{settings.interval:g}s")
    return True


def _release(exp_dir: Path, me: str, reason: str | None) -> None:
    """Mark the lease free (``reason`` None: silently, as after a single poll)."""
    with statefile.locked(exp_dir) as st:
        if not holds(st, me):
            return
        st["sidecar"]["stopped"] = statefile.now()
        if reason:
            statefile.log(st, "SIDECAR_STOP", f"job {me}", Reason=reason)


# --------------------------------------------------------------------------- one poll

@dataclass
class PollResult:
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
    targets: tuple | None = None  # (job ids, since) for the next query, from the state as written


def reconcile(exp_dir: Path, sched: Scheduler | None = None) -> PollResult:
    """One poll's work without the loop or the lease (``autoexp status --refresh``)."""
    exp_dir = Path(exp_dir)
    return poll(exp_dir, sched or _scheduler(exp_dir), Settings.load(exp_dir))


def poll(exp_dir: Path, sched: Scheduler, settings: Settings, lease: str | None = None,
         query: bool = True, targets: tuple | None = None) -> PollResult:
    """Query once, then apply everything under the lock; with ``lease``, only if we hold it.

    ``targets`` (the previous poll's) saves reading the whole state before the query; an array
    submitted since by someone else is then queried from the next poll on.
    """
    exp_dir = Path(exp_dir)
    result = PollResult()
    started = time.monotonic()
    ids, since = targets or _targets(statefile.read(exp_dir))
    records: list[JobRecord] | None = None
    asked_at = time.time()
    if query and ids:
        before = time.monotonic()
        try:
            records = sched.query(ids, since)
        except AutoexpError as err:
            result.query_error = str(err)
        result.query_s = time.monotonic() - before
        result.queried = True
    with statefile.locked(exp_dir) as st:
        if lease is not None and not holds(st, lease):
            raise LeaseLost((st.get("sidecar") or {}).get("job_id"))
        work = _Poll(exp_dir, st, sched, settings, result)
        if records is not None and asked_at >= (st.get("query") or {}).get("asked", 0):
            work.apply(records, asked_at)
        work.note_query()
        work.scan_logs()
        work.act()
        work.status_check()
        if lease is not None:
            st["sidecar"]["heartbeat"] = work.when
        work.finish()
        result.targets = _targets(st)
    result.work_s = time.monotonic() - started - result.query_s
    return result


def _targets(st: dict) -> tuple[list[str], dt.datetime]:
    """What one query asks about: every array of the experiment and its sidecar job, since when."""
    ids = [a["job_id"] for a in st.get("arrays", [])]
    sidecar_id = (st.get("sidecar") or {}).get("job_id")
    if sidecar_id and str(sidecar_id).isdigit():
        ids.append(str(sidecar_id))
    return ids, _since(st)


def _since(st: dict) -> dt.datetime:
    created = statefile.parse_time(st.get("created")) or dt.datetime.now(dt.timezone.utc)
    return created - dt.timedelta(seconds=SINCE_MARGIN)


def _scheduler(exp_dir: Path) -> Scheduler:
    st = statefile.read(exp_dir)
    return schedmod.get(st.get("scheduler", "slurm"), exp_dir)


class _Poll:
    """One poll's work on the locked state: records, logs, actions, bookkeeping."""

    def __init__(self, exp_dir: Path, st: dict, sched: Scheduler, settings: Settings, result: PollResult):
        self.exp_dir, self.st, self.sched, self.settings, self.result = exp_dir, st, sched, settings, result
        self.now = time.time()
        self.when = _iso(self.now)
        self.requests: dict[str, tuple[str, str]] = {}  # run -> (action, event) from its log
        self.scripts = {a["job_id"]: exp_dir / a["script"] for a in st.get("arrays", [])}

    # ----------------------------------------------------------------- records

    def apply(self, records: list[JobRecord], asked_at: float) -> None:
        """Bring every attempt up to what accounting says (allocations in submission order)."""
        explicit: dict[str, list[JobRecord]] = defaultdict(list)
        collapsed: dict[str, JobRecord] = {}
        arrays_seen = set()
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
        self.st.setdefault("query", {})["asked"] = asked_at
        sidecar = self.st.get("sidecar") or {}
        if explicit.get(str(sidecar.get("job_id"))):
            sidecar["state"] = explicit[str(sidecar["job_id"])][-1].state
        for name, run in self.st["runs"].items():
            if run["attempts"]:
                self._apply_run(name, run, explicit, collapsed, arrays_seen)

    def _apply_run(self, name: str, run: dict, explicit: dict, collapsed: dict, arrays_seen: set) -> None:
        attempts = run["attempts"]
        logged_from = len(attempts) - 1  # earlier attempts change silently (they are not the run's state)
        current = attempts[-1]
        have = sum(1 for a in attempts if a["job_id"] == current["job_id"])
        for record in explicit.get(current["job_id"], [])[have:]:  # Slurm requeued it: a new allocation
            attempts.append(self._requeued(attempts[-1], record))
        new = len(attempts) - (logged_from + 1)
        shown = run["state"]
        seen: dict[str, int] = defaultdict(int)
        for k, attempt in enumerate(attempts):
            job_id = attempt["job_id"]
            allocations = explicit.get(job_id) or ([collapsed[job_id]] if job_id in collapsed else [])
            nth = seen[job_id]
            seen[job_id] += 1
            if nth < len(allocations):
                attempt.pop("missing_since", None)
                steps = self._update(attempt, allocations[nth])
            elif not allocations and nth == 0:
                steps = self._missing(attempt, job_id.split("_")[0] in arrays_seen)
            else:
                steps = []
            if k >= len(attempts) - new:
                steps.insert(0, "PENDING")  # a new allocation begins by waiting
            if k >= logged_from:
                for step in steps:
                    if step != shown:
                        self._state_change(name, run, attempt, shown, step)
                        shown = step
        latest = attempts[-1]
        run.update(state=latest["state"], job_id=latest["job_id"], submitted=latest.get("submitted"),
                   started=latest.get("started"), completed=latest.get("completed"),
                   elapsed_s=latest.get("elapsed_s"), exit_code=latest.get("exit_code"),
                   nodes=latest.get("nodes"))

    def _requeued(self, previous: dict, record: JobRecord) -> dict:
        return {"attempt": previous["attempt"] + 1, "job_id": previous["job_id"], "state": "PENDING",
                "submitted": record.submitted, "started": None, "completed": None, "elapsed_s": None,
                "exit_code": None, "nodes": None, "log": previous.get("log"), "requeued": True}

    def _update(self, attempt: dict, record: JobRecord) -> list[str]:
        """Apply one allocation record; the states the run went through (RUNNING if skipped)."""
        old, new = attempt["state"], record.state
        if rank(new) < rank(old):
            return []  # accounting lags behind what we know already (our own cancel, say)
        steps = []
        if new != old:
            if rank(old) == 0 and rank(new) == 2 and record.started:
                steps.append("RUNNING")
            steps.append(new)
        attempt.update(state=new, submitted=record.submitted or attempt.get("submitted"),
                       started=record.started or attempt.get("started"),
                       completed=record.completed if rank(new) == 2 else None,
                       elapsed_s=record.elapsed_s, exit_code=record.exit_code,
                       nodes=record.nodes or attempt.get("nodes"))
        if record.reason:
            attempt["reason"] = record.reason
        if rank(new) == 2:
            attempt.setdefault("ended_seen", self.when)
        return steps

    def _missing(self, attempt: dict, array_known: bool) -> list[str]:
        """A task accounting no longer lists: scancel of a pending task leaves no row at all."""
        if attempt.get("ended_seen") or not array_known:
            attempt.pop("missing_since", None)
            return []
        since = attempt.setdefault("missing_since", self.when)
        if self.now - _epoch(since) < max(VANISH_GRACE, 3 * self.settings.interval):
            return []
        ghost = JobRecord(job_id=attempt["job_id"], state="CANCELLED", completed=self.when,
                          reason="(no longer in the queue or in accounting)")
        return self._update(attempt, ghost)

    def _state_change(self, name: str, run: dict, attempt: dict, previous: str, current: str) -> None:
        self.result.changes += 1
        ended = rank(current) == 2
        problem = current in report.PROBLEM_STATES and current != "CANCELLED"
        statefile.log(
            self.st, "STATE_CHANGE", name, self.when, Previous=previous, Current=current,
            Job_ID=attempt["job_id"], Attempt=attempt["attempt"] if attempt["attempt"] > 1 else None,
            Started=report.human_time(attempt.get("started")) if current == "RUNNING" and attempt.get("started") else None,
            Completed=report.human_time(attempt.get("completed")) if ended and attempt.get("completed") else None,
            Elapsed=report.human_duration(attempt.get("elapsed_s")) if ended and attempt.get("elapsed_s") is not None else None,
            Exit_code=attempt.get("exit_code") if problem else None,
            Reason=attempt.get("reason") if ended else None,
            Log=os.path.relpath(attempt["log"], self.exp_dir) if problem and attempt.get("log") else None)

    def note_query(self) -> None:
        """Record a failed or recovered scheduler query in the state and the event log."""
        query = self.st.setdefault("query", {})
        result = self.result
        if result.query_error:
            query["failures"] = query.get("failures", 0) + 1
            query.setdefault("failing_since", self.when)
            query["error"] = result.query_error
            statefile.log(self.st, "SCHEDULER_ERROR", self.sched.name, self.when, Error=result.query_error,
                          Failures=query["failures"],
                          Next_try=f"in {report.human_duration(backoff(self.settings.interval, query['failures']))}")
        elif result.queried and query.get("failures"):
            statefile.log(self.st, "SCHEDULER_OK", self.sched.name, self.when,
                          Result=f"answering again after {query['failures']} failed queries since "
                                 f"{report.human_time(query.get('failing_since'))}")
            for key in ("failures", "failing_since", "error"):
                query.pop(key, None)
        result.failures = query.get("failures", 0)

    # ----------------------------------------------------------------- logs

    def scan_logs(self) -> None:
        if not (self.settings.rules or self.settings.stall_after):
            return
        for name, run in self.st["runs"].items():
            if run["attempts"]:
                self._scan_run(name, run)

    def _scan_run(self, name: str, run: dict) -> None:
        current = run["attempts"][-1]
        cursor = run.get("log_cursor")
        if cursor is not None and cursor.get("attempt") != current["attempt"] and not cursor.get("final"):
            self._read(name, run, cursor, final=True)  # the previous attempt's last lines
            _close(cursor)
        if not current.get("log") or (rank(current["state"]) == 0 and not current.get("started")):
            return
        if cursor is None or cursor.get("attempt") != current["attempt"]:
            same_file = cursor is not None and cursor.get("path") == current["log"]  # a Slurm requeue appends
            cursor = dict(cursor) if same_file else logwatch.new_cursor(current["log"])
            cursor.update(attempt=current["attempt"], final=False, stalled=False, grown=self.when, counts={},
                          metric_n={})
            run["log_cursor"] = cursor
        if cursor.get("final"):
            return
        over = rank(current["state"]) == 2
        self._read(name, run, cursor, final=over)
        if over:
            _close(cursor)
        elif self.settings.stall_after and rank(current["state"]) == 1 and not cursor.get("stalled"):
            silent = self.now - (_epoch(cursor.get("grown")) or self.now)
            if silent >= self.settings.stall_after:
                cursor["stalled"] = True
                self._event(name, run, cursor, "stalled", {"silent_for": report.human_duration(silent)},
                            self.settings.stall_action)

    def _read(self, name: str, run: dict, cursor: dict, final: bool) -> None:
        if not self.settings.rules:
            if logwatch.log_size(cursor["path"]) != cursor.get("size"):  # stall watch only: no reading
                cursor.update(size=logwatch.log_size(cursor["path"]), grown=self.when, stalled=False)
            return
        recorder = history.Recorder(self.exp_dir, name, cursor["attempt"])
        found = logwatch.scan(cursor, self.settings.rules, final=final, sink=recorder)
        recorder.save()  # before the state that holds the cursor: see autoexp/history.py
        if found.grew:
            cursor.update(grown=self.when, stalled=False)
        if found.restarted:
            statefile.log(self.st, "LOG_RESET", name, self.when, Log=os.path.relpath(cursor["path"], self.exp_dir),
                          Reason=f"the log was {found.restarted}; reading it again from the start")
        run.setdefault("metrics", {}).update(found.metrics)
        for match in found.events:
            self._event(name, run, cursor, match.rule.name, match.groups, match.rule.action)

    def _event(self, name: str, run: dict, cursor: dict, event: str, groups: dict, action: str) -> None:
        counts = cursor.setdefault("counts", {})
        counts[event] = counts.get(event, 0) + 1
        if counts[event] > EVENT_CAP:
            return
        self.result.events += 1
        attempt = cursor["attempt"]
        run["events"].append({"name": event, "time": self.when, "groups": groups, "attempt": attempt})
        statefile.log(self.st, "LOG_EVENT", name, self.when, Event=event,
                      Groups=", ".join(f"{k}={v}" for k, v in groups.items()) or None,
                      Attempt=attempt if attempt > 1 else None,
                      Action=action if action != "log" else None,
                      Note=f"{EVENT_CAP} matches of {event} recorded; later ones are not"
                      if counts[event] == EVENT_CAP else None)
        if action in ("cancel", "retry") and attempt == run["attempts"][-1]["attempt"]:
            self.requests.setdefault(name, (action, event))

    # ----------------------------------------------------------------- actions

    def act(self) -> None:
        """Cancel and retry what the logs and the states call for: all retries as one submission."""
        runs = self.st["runs"]
        cancel = [n for n, (action, _) in self.requests.items()
                  if action == "cancel" and rank(runs[n]["attempts"][-1]["state"]) < 2]
        if cancel:
            self._cancel(cancel)
        retry: dict[str, str] = {}
        for name, (action, event) in self.requests.items():
            if action == "retry":
                self._want_retry(name, f"event {event}", retry)
        for name, run in runs.items():
            current = run["attempts"][-1] if run["attempts"] else None
            if current and current["state"] in self.settings.retry_on and not current.get("cancelled") \
                    and self._settled(current):
                self._want_retry(name, f"state {current['state']}", retry)
        if retry:
            self._retry(retry)

    def _cancel(self, names: list[str]) -> None:
        reasons = {n: f"event {self.requests[n][1]}" for n in names}
        for reason in sorted(set(reasons.values())):
            group = [n for n in names if reasons[n] == reason]
            previous = {n: self.st["runs"][n]["state"] for n in group}
            try:
                actions.cancel_runs(self.st, self.sched, group, reason)
            except AutoexpError as err:
                statefile.log(self.st, "CANCEL_FAILED", ", ".join(group), self.when, Error=str(err))
                continue
            for name in group:
                run = self.st["runs"][name]
                self._state_change(name, run, run["attempts"][-1], previous[name], "CANCELLED")
            self.result.cancelled += group

    def _want_retry(self, name: str, reason: str, retry: dict) -> None:
        run = self.st["runs"][name]
        current = run["attempts"][-1]
        if current.get("retry") or name in retry:
            return
        used = len(run["attempts"]) - 1
        if used >= self.settings.retry_max:
            current["retry"] = "none left"
            statefile.log(self.st, "RETRY_SKIPPED", name, self.when, Reason=reason,
                          Result=f"no retry left: {used} of {self.settings.retry_max} used "
                                 "(monitor.retries.max)")
            return
        retry[name] = reason

    def _settled(self, attempt: dict) -> bool:
        """An attempt the scheduler reported ended (our own cancel is not enough: the task may have
        finished first) and will not bring back by itself (or has not, long enough)."""
        if rank(attempt["state"]) < 2 or attempt["state"] == "REQUEUED" or not attempt.get("ended_seen"):
            return False
        script = self.scripts.get(attempt["job_id"].split("_")[0])
        if script is None or not self.sched.will_requeue(attempt["state"], script):
            return True
        return self.now - _epoch(attempt["ended_seen"]) >= REQUEUE_GRACE

    def _retry(self, retry: dict[str, str]) -> None:
        runs = self.st["runs"]
        active = [runs[n]["attempts"][-1]["job_id"] for n in retry if rank(runs[n]["attempts"][-1]["state"]) < 2]
        reason = ", ".join(sorted(set(retry.values())))
        try:
            if active:
                self.sched.cancel(active)
            actions.submit_runs(self.exp_dir, self.st, self.sched, sorted(retry), reason)
        except AutoexpError as err:
            statefile.log(self.st, "RETRY_FAILED", ", ".join(sorted(retry)), self.when, Error=str(err),
                          Result="will try again next poll")
            return
        for name in retry:
            for attempt in runs[name]["attempts"][:-1]:
                attempt.setdefault("retry", retry[name])
        self.result.retried += sorted(retry)

    # ----------------------------------------------------------------- bookkeeping

    def status_check(self) -> None:
        statefile.recount(self.st)
        counts = self.st["counts"]
        result = f"{len(self.st['runs'])} runs - " + ", ".join(f"{n} {s}" for s, n in counts.items())
        if self.result.query_error:
            result += f" (as last known: {self.sched.name} query failed)"
        elif not self.result.queried:
            result += " (scheduler not asked this poll)"
        statefile.log(self.st, "STATUS_CHECK", f"Polling {self.sched.name.capitalize()}", self.when, Result=result)

    def over(self) -> bool:
        for run in self.st["runs"].values():
            if not run["attempts"]:
                return False
            current = run["attempts"][-1]
            if not self._settled(current):
                return False
            if current["state"] in self.settings.retry_on and not current.get("retry") \
                    and not current.get("cancelled"):
                return False
        return True

    def finish(self) -> None:
        """Mark the experiment done once every run is over; only a submission (retry) undoes it,
        and a done set by someone else (``autoexp cancel``) stops the sidecar too."""
        if not self.st.get("done") and self.over():
            runs = self.st["runs"].values()
            counts = ", ".join(f"{n} {s}" for s, n in self.st["counts"].items())
            first = min((_epoch(a.get("submitted")) or self.now for r in runs for a in r["attempts"]),
                        default=self.now)
            last = max((_epoch(r.get("completed")) or self.now for r in runs), default=self.now)
            statefile.log(self.st, "ALL_COMPLETE", "Monitoring finished", self.when,
                          Summary=f"{len(self.st['runs'])} runs - {counts}",
                          Total_time=report.human_duration(last - first),
                          Next="see experiment_summary.md for each run; events.log for what happened")
            self.st["done"] = True
        self.result.done = bool(self.st.get("done"))


def _close(cursor: dict) -> None:
    """An attempt's log is read to its end: keep only where (a Slurm requeue appends after it)."""
    for key in ("dev", "ino", "tail", "grown", "stalled", "counts"):
        cursor.pop(key, None)
    cursor["final"] = True


def backoff(interval: float, failures: int) -> float:
    """Seconds to wait before asking a failing scheduler again."""
    return min(interval * 2 ** max(failures - 1, 0), max(BACKOFF_MAX, interval))


# --------------------------------------------------------------------------- the job

class _Stop:
    """SIGTERM/SIGINT/SIGUSR1 set a flag the loop checks between polls (never mid-write)."""

    def __init__(self):
        self.event = threading.Event()
        self.signal: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name
        self.event.set()


def run(exp_dir: Path, once: bool = False) -> int:
    """What the sidecar job runs: poll every interval until every run is over (one poll with
    ``once``, or per job in chain mode); exit 0 when done, handed over, or not the lease holder."""
    exp_dir = Path(exp_dir).absolute()
    settings = Settings.load(exp_dir)
    sched = _scheduler(exp_dir)
    sched.query_timeout = min(max(10 * settings.interval, QUERY_TIMEOUT[0]), QUERY_TIMEOUT[1])
    me = identity()
    chain = settings.mode == "chain" and sched.name == "slurm"  # the local backend has no --begin
    single = once or chain
    if not _acquire(exp_dir, sched, me, settings, quiet=single):
        return 0
    stop = _Stop()
    deadline = None if single else _deadline(sched, me, settings)
    next_query = 0.0
    targets = None
    while True:
        began = time.monotonic()
        try:
            result = poll(exp_dir, sched, settings, lease=me, query=time.monotonic() >= next_query,
                          targets=targets)
        except LeaseLost as lost:
            print(f"autoexp sidecar {me}: job {lost} took the lease over; exiting", flush=True)
            return 0
        except Exception as err:  # never crash: note it, wait, try again
            if not (exp_dir / statefile.STATE).exists():  # the experiment was deleted: nothing to keep
                print(f"autoexp sidecar {me}: {exp_dir / statefile.STATE} is gone; exiting", flush=True)
                return 1
            traceback.print_exc()
            _note_error(exp_dir, me, err)
            result = PollResult()
        targets = result.targets
        _print(me, result)
        if result.query_error:
            next_query = time.monotonic() + backoff(settings.interval, result.failures)
        if result.done:
            _release(exp_dir, me, "all runs finished")
            return 0
        if stop.event.is_set():
            _release(exp_dir, me, f"stopped by {stop.signal}")
            return 0
        if single:
            break
        if deadline is not None and time.time() + settings.interval >= deadline:
            if _hand_over(exp_dir, sched, me, settings, "handover"):
                return 0
        if stop.event.wait(max(0.0, settings.interval - (time.monotonic() - began))):
            _release(exp_dir, me, f"stopped by {stop.signal}")
            return 0
    if chain:
        return 0 if _hand_over(exp_dir, sched, me, settings, "chain") else 1
    _release(exp_dir, me, None)
    return 0


def _deadline(sched: Scheduler, me: str, settings: Settings) -> float | None:
    """When to hand over: ``sidecar.handover`` before the job's end (at most a quarter of its time)."""
    if not me.isdigit():
        return None  # run by hand, outside any job: no time limit
    start = time.time()
    try:
        end = sched.end_time(me)
    except AutoexpError:
        end = None
    end_s = end.timestamp() if end else (start + settings.time_limit if settings.time_limit else None)
    if end_s is None:
        return None
    return end_s - min(settings.handover, 0.25 * max(end_s - start, 0))


def _hand_over(exp_dir: Path, sched: Scheduler, me: str, settings: Settings, reason: str) -> bool:
    """Submit the successor, give it the lease, and stop polling. False if it could not be submitted."""
    options = [f"--dependency=afterany:{me}"] if me.isdigit() else []
    if reason == "chain":
        options.append(f"--begin=now+{max(1, round(settings.interval))}")
    with statefile.locked(exp_dir) as st:
        if not holds(st, me):
            return True
        try:
            job = actions.submit_sidecar(exp_dir, st, sched, options=tuple(options), reason=reason,
                                         log=reason != "chain")
        except AutoexpError as err:
            statefile.log(st, "SIDECAR_ERROR", f"job {me}", Error=f"cannot submit the next sidecar: {err}",
                          Result="still polling; will try again" if reason != "chain" else "run `autoexp resume`")
            return False
        if reason != "chain":
            statefile.log(st, "SIDECAR_STOP", f"job {me}", Reason=f"time limit near: handed over to job {job}")
    if settings.mail and me.isdigit():
        try:
            sched.mute_mail(me)  # only the sidecar that sees the end tells the user
        except AutoexpError:
            pass
    return True


def _note_error(exp_dir: Path, me: str, err: Exception) -> None:
    try:
        with statefile.locked(exp_dir) as st:
            if holds(st, me):
                statefile.log(st, "SIDECAR_ERROR", f"job {me}", Error=f"{type(err).__name__}: {err}",
                              Result="will try again next poll")
    except Exception:
        traceback.print_exc()


def _print(me: str, result: PollResult) -> None:
    what = f"query error: {result.query_error}" if result.query_error else \
        f"{result.records} records in {result.query_s:.2f}s" if result.queried else "no query"
    print(f"[{statefile.now()}] sidecar {me}: {what}; work {result.work_s:.2f}s; {result.changes} changes, "
          f"{result.events} events" + (", done" if result.done else ""), file=sys.stdout, flush=True)
