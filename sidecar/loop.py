"""The sidecar job: poll every interval until every run is over, stop cleanly on a signal, and
hand over to a successor before the job's time limit (or, in chain mode, after every poll)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from .. import actions, backends, clock, htmlreport, model, statefile, statusview
from ..errors import AutoexpError
from ..scheduler import Scheduler
from .lease import LeaseLost, acquire, holds, identity, release
from .poll import PollResult, backoff, poll
from .work import Watch
from .settings import Settings

QUERY_TIMEOUT = (20, 120)  # s: a query is hung after 10 intervals, within these bounds

log = logging.getLogger(__name__)


class Stop:
    """SIGTERM/SIGINT/SIGUSR1 set a flag the loop checks between polls (never mid-write)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signal.Signals(signum).name
        self.event.set()


def run(exp_dir: Path, once: bool = False) -> int:
    """What the sidecar job runs: poll every interval until every run is over (one poll with
    ``once``, or per job in chain mode); exit 0 when done, handed over, or not the lease holder."""
    exp_dir = Path(exp_dir).absolute()
    settings = Settings.load(exp_dir)
    sched = backends.of_experiment(exp_dir)
    sched.query_timeout = min(max(10 * settings.interval, QUERY_TIMEOUT[0]), QUERY_TIMEOUT[1])
    me = identity()
    chain = settings.mode == "chain" and sched.name == "slurm"  # the local backend has no --begin
    single = once or chain
    stop = Stop()
    while True:
        try:
            if not acquire(exp_dir, sched, me, settings, quiet=single):
                return 0
            break
        except OSError:  # a full disk, say: the lease cannot be written yet
            log.exception("autoexp sidecar %s: cannot take the lease; trying again", me)
            if stop.event.wait(settings.interval):
                return 0
    deadline = None if single else _deadline(sched, me, settings)
    next_query = 0.0
    targets: Watch | None = None  # what the last poll saw: the next one may then skip the state
    while True:
        began = time.monotonic()
        try:
            result = poll(exp_dir, sched, settings, lease=me, query=time.monotonic() >= next_query,
                          targets=targets)
        except LeaseLost as lost:
            log.info("autoexp sidecar %s: job %s took the lease over; exiting", me, lost)
            return 0
        except Exception as err:  # never crash: note it, wait, try again
            if not (exp_dir / statefile.STATE).exists():  # the experiment was deleted: nothing to keep
                log.info("autoexp sidecar %s: %s is gone; exiting", me, exp_dir / statefile.STATE)
                return 1
            log.exception("autoexp sidecar %s: the poll failed", me)
            _note_error(exp_dir, me, err)
            result = PollResult()
        try:
            targets = result.targets
            log.info(summary(me, result))
            if result.query_error:
                next_query = time.monotonic() + backoff(settings.interval, result.failures)
            if result.done:
                release(exp_dir, me, "all runs finished")
                refresh_report(exp_dir, settings, result)
                return 0
            refresh_report(exp_dir, settings, result)
            if stop.event.is_set():
                release(exp_dir, me, f"stopped by {stop.signal}")
                return 0
            if single:
                break
            if deadline is not None and time.time() + settings.interval >= deadline:
                if _hand_over(exp_dir, sched, me, settings, "handover"):
                    return 0
        except Exception:  # a full disk while releasing or handing over: the state is whole, go on
            log.exception("autoexp sidecar %s: after the poll", me)
        if stop.event.wait(max(0.0, settings.interval - (time.monotonic() - began))):
            release(exp_dir, me, f"stopped by {stop.signal}")
            return 0
    if chain:
        return 0 if _hand_over(exp_dir, sched, me, settings, "chain") else 1
    release(exp_dir, me, None)
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
            model.log(st, "SIDECAR_ERROR", f"job {me}", Error=f"cannot submit the next sidecar: {err}",
                      Result="still polling; will try again" if reason != "chain" else "run `autoexp resume`")
            return False
        if reason != "chain":
            model.log(st, "SIDECAR_STOP", f"job {me}", Reason=f"time limit near: handed over to job {job}")
    if settings.mail and me.isdigit():
        try:
            sched.mute_mail(me)  # only the sidecar that sees the end tells the user
        except AutoexpError:
            pass
    return True


def refresh_report(exp_dir: Path, settings: Settings, result: PollResult) -> None:
    """Rewrite report.html when the experiment is over, or when something changed and the last
    one is ``report.every`` old; outside the state lock, and never at the cost of the sidecar."""
    page = exp_dir / htmlreport.REPORT
    try:
        age = time.time() - page.stat().st_mtime
    except OSError:
        age = float("inf")
    if not (result.done or ((result.changes or result.events) and age >= settings.report_every)):
        return
    try:
        htmlreport.write(statusview.document(exp_dir), exp_dir, settings.report_metric, settings.report_goal)
    except Exception:  # a view: the state it shows is already safe
        log.exception("autoexp sidecar: cannot write %s", page)


def _note_error(exp_dir: Path, me: str, err: Exception) -> None:
    try:
        with statefile.locked(exp_dir) as st:
            if holds(st, me):
                model.log(st, "SIDECAR_ERROR", f"job {me}", Error=f"{type(err).__name__}: {err}",
                          Result="will try again next poll")
    except Exception:  # the state cannot even be written: the sidecar's own log keeps it
        log.exception("autoexp sidecar %s: cannot record the error", me)


def summary(me: str, result: PollResult) -> str:
    """One line per poll in the sidecar's own log."""
    what = f"query error: {result.query_error}" if result.query_error else \
        f"{result.records} records in {result.query_s:.2f}s" if result.queried else "no query"
    if result.quiet:
        what += ", nothing new"
    return (f"[{clock.now()}] sidecar {me}: {what}; work {result.work_s:.2f}s; {result.changes} changes, "
            f"{result.events} events" + (", done" if result.done else ""))

