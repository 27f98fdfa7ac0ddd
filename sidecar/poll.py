"""One poll: one scheduler query without the lock, then everything applied under it, unless
nothing changed since the last poll (:mod:`.quiet`: then only the heartbeat is renewed).

:func:`reconcile` is the same without a lease, for ``autoexp status --refresh``.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from .. import backends, clock, model, report, statefile
from ..errors import AutoexpError
from ..model import State
from ..scheduler import JobRecord, Scheduler
from .lease import LeaseLost, holds
from .logscan import LogScan
from .follow import Follow
from .quiet import due, fingerprint, logs_read, unchanged, within
from . import records
from .records import Records, window
from .settings import Settings
from .work import PollResult, Watch

BACKOFF_MAX = 600  # s: longest pause between two scheduler queries after failures


class Poll(Records, LogScan, Follow):
    """One poll's work: records, logs, policy, and the bookkeeping below."""

    def note_query(self) -> None:
        """Record a failed or recovered scheduler query in the state and the event log."""
        query = model.query_of(self.st)
        result = self.result
        if result.query_error:
            query["failures"] = query.get("failures", 0) + 1
            query.setdefault("failing_since", self.when)
            query["error"] = result.query_error
            model.log(self.st, "SCHEDULER_ERROR", self.sched.name, self.when, Error=result.query_error,
                      Failures=query["failures"],
                      Next_try=f"in {report.human_duration(backoff(self.settings.interval, query['failures']))}")
        elif result.queried and query.get("failures"):
            model.log(self.st, "SCHEDULER_OK", self.sched.name, self.when,
                      Result=f"answering again after {query['failures']} failed queries since "
                             f"{report.human_time(query.get('failing_since'))}")
            query.pop("failures", None)
            query.pop("failing_since", None)
            query.pop("error", None)
        result.failures = query.get("failures", 0)

    def status_check(self, quiet: int) -> None:
        """One entry for this poll and the ``quiet`` ones before it that found nothing new."""
        model.recount(self.st)
        result = model.counts_text(self.st)
        if self.result.query_error:
            result += f" (as last known: {self.sched.name} query failed)"
        elif not self.result.queried:
            result += " (scheduler not asked this poll)"
        model.log(self.st, "STATUS_CHECK", f"Polling {self.sched.name.capitalize()}", self.when, Result=result,
                  Polls=quiet + 1 if quiet else None)


def reconcile(exp_dir: Path, sched: Scheduler | None = None) -> PollResult:
    """One poll's work without the loop or the lease (``autoexp status --refresh``)."""
    exp_dir = Path(exp_dir)
    return poll(exp_dir, sched or backends.of_experiment(exp_dir), Settings.load(exp_dir))


def poll(exp_dir: Path, sched: Scheduler, settings: Settings, lease: str | None = None,
         query: bool = True, targets: Watch | None = None) -> PollResult:
    """Query once, then apply everything under the lock; with ``lease``, only if we hold it.

    ``targets`` (the previous poll's) saves reading the whole state before the query, and when
    the answer shows nothing new, reading and writing it at all (an array submitted since by
    someone else rewrote state.json: this poll is then a full one).
    """
    with statefile.collector_paused():
        return _poll(Path(exp_dir), sched, settings, lease, query, targets)


def _poll(exp_dir: Path, sched: Scheduler, settings: Settings, lease: str | None, query: bool,
          targets: Watch | None) -> PollResult:
    result = PollResult()
    started = time.monotonic()
    watch = targets or first_watch(exp_dir)
    records: list[JobRecord] | None = None
    asked_at = time.time()
    if query and watch.ids:
        before = time.monotonic()
        try:
            records = sched.query(watch.ids, watch.since)
        except AutoexpError as err:
            result.query_error = str(err)
        result.query_s = time.monotonic() - before
        result.queried = True
    if records is not None and unchanged(watch, exp_dir, records, asked_at):
        if lease is not None:
            statefile.beat(exp_dir, lease, clock.iso(asked_at))
        watch.quiet += 1
        result.quiet, result.records, result.targets = True, len(records), watch
        result.work_s = time.monotonic() - started - result.query_s
        return result
    written: list = []
    with statefile.locked(exp_dir, written=written, known=watch.kept(), keep=True) as st:
        if lease is not None and not holds(st, lease):
            raise LeaseLost((st.get("sidecar") or {}).get("job_id"))
        work = Poll(exp_dir, st, sched, settings, result)
        applied = records is not None and asked_at >= model.query_of(st).get("asked", 0)
        if applied and records is not None:  # what this process applied before need not be again, if the state is its
            work.apply(records, asked_at, watch.since,
                       watch.answer if watch.stamp == statefile.stamp(exp_dir) else None)
        work.note_query()
        work.scan_logs()
        work.act()
        work.follow()
        work.status_check(watch.quiet)
        if lease is not None:
            st["sidecar"]["heartbeat"] = work.when
        work.finish()
        ids, since = query_targets(st)
        result.targets = Watch(ids, since, answer=fingerprint(within(records, ids, since)) if applied and records
                               else None, logs=logs_read(st, settings), due=due(st, settings, work.now))
        records = None  # the answer let go before the state is written: the write's peak is the poll's
    result.targets.stamp = written[0] if written else None
    result.targets.state = st if written else None
    result.work_s = time.monotonic() - started - result.query_s
    return result


def first_watch(exp_dir: Path) -> Watch:
    """A first poll's targets, from the state read as the poll keeps it: the poll then starts from
    that state unless someone writes state.json before it takes the lock (one parse, not two)."""
    stamp = statefile.stamp(exp_dir)  # before reading: a write after it shows as another stamp
    st = statefile.read(exp_dir, kept=True)
    watch = Watch(*query_targets(st))
    watch.stamp, watch.state = stamp, st
    return watch


def query_targets(st: State, full: bool = False) -> tuple[list[str], dt.datetime]:
    """What one query asks about: the arrays with a task that can still change, and the sidecar
    job, since shortly before the last applied query (:func:`.records.window`), or with ``full``
    since the experiment began (what a cancel checks first)."""
    ids, since = window(st, time.time())
    return ids, records.since(st) if full else since


def backoff(interval: float, failures: int) -> float:
    """Seconds to wait before asking a failing scheduler again."""
    return min(interval * 2 ** max(failures - 1, 0), max(BACKOFF_MAX, interval))

