"""Carried mode (``sidecar.mode: carried``): no sidecar allocation; the array tasks, which hold
nodes already, carry the sidecar's work. For whole-node machines, where even the sidecar would be
billed a node.

* Each task starts a *carrier* in the background (the array template's ``carrier`` block): it
  records the task's start, then, while the task runs, polls at the interval when it holds the
  lease, else checks each interval whether the holder is dead (:func:`.lease.alive`, the same
  lease and liveness rule as the sidecar job) and takes the lease over. The task's script stops
  it (SIGTERM, then kill -9) when the command ends; nothing it does changes the task's exit status.
* At its end the task records its own end (COMPLETED on exit status 0, else FAILED, as Slurm will
  say) and, unless another carrier holds the lease, polls once: the last task to end writes the
  final state. A requeued or signalled task leaves its states to accounting.
* A rare *watchdog* job (the sidecar script, ``--begin`` ``sidecar.watchdog`` apart, 10 intervals
  by default) polls once when no carrier holds the lease (no task is running, or the last one died
  without writing) and submits the next one until the experiment is done.

Every write goes through :func:`.poll.poll` under the lease, or, for a task's own start and end,
through :mod:`autoexp.statefile` under its lock: one writer at a time, as in the other modes.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import socket
import sys
import time
from pathlib import Path

from .. import actions, backends, model, statefile
from ..clock import epoch
from ..errors import AutoexpError
from ..jobstates import TERMINAL, Phase, phase
from ..model import Attempt, Run, State
from ..scheduler import Scheduler
from .lease import LeaseLost, acquire, alive, holds, identity, release
from .loop import QUERY_TIMEOUT, Stop, refresh_report, summary
from .poll import Poll, backoff, poll
from .records import since
from .settings import Settings
from .work import PollResult

log = logging.getLogger(__name__)
END_POLLS = 3  # polls at most at a task's end (see end)


def task_id() -> str:
    """This array task as the state names its attempt ("123_4"), or "" outside an array task."""
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else ""


def setup(exp_dir: Path) -> tuple[Settings, Scheduler]:
    settings = Settings.load(exp_dir)
    sched = backends.of_experiment(exp_dir)
    sched.query_timeout = min(max(10 * settings.interval, QUERY_TIMEOUT[0]), QUERY_TIMEOUT[1])
    return settings, sched


# --------------------------------------------------------------------------- a task's own records

def current(st: State, me: str) -> tuple[str, Run, Attempt] | None:
    """The run whose latest attempt is this task, if any (an older attempt's task records nothing)."""
    for name, run in st["runs"].items():
        if run["attempts"] and run["attempts"][-1]["job_id"] == me:
            return name, run, run["attempts"][-1]
    return None


def record(exp_dir: Path, sched: Scheduler, settings: Settings, me: str, status: int | None) -> None:
    """This task's start (``status`` None) or end, as accounting will show it (logged as a poll
    would: STATE_CHANGE); a later poll applies accounting's own record over it, which only adds
    its times. A requeued allocation is left to accounting (its attempts are accounting's)."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0):
        return
    with statefile.locked(exp_dir) as st:
        found = current(st, me)
        if found is None:
            return
        name, run, attempt = found
        work = Poll(exp_dir, st, sched, settings, PollResult())
        steps = []
        if phase(attempt["state"]) == Phase.WAITING:
            attempt.update({"state": "RUNNING", "started": work.when,
                            "nodes": os.environ.get("SLURMD_NODENAME") or socket.gethostname()})
            steps.append("RUNNING")
        if status is not None and attempt["state"] == "RUNNING":
            ended = "COMPLETED" if status == 0 else "FAILED"
            began = epoch(attempt.get("started")) or work.now
            attempt.update({"state": ended, "completed": work.when, "elapsed_s": round(work.now - began),
                            "exit_code": f"{status}:0", "ended_seen": work.when})
            steps.append(ended)
        shown = run["state"]
        for step in steps:
            work.state_change(name, run, attempt, shown, step)
            shown = step
        model.show_latest(run)


# --------------------------------------------------------------------------- polling under the lease

def hold(exp_dir: Path, sched: Scheduler, settings: Settings, me: str, stop: Stop | None) -> bool:
    """Poll every interval while we hold the lease (once without ``stop``); True once the
    experiment is done or we were told to stop, False when another took the lease over."""
    next_query, targets = 0.0, None
    while True:
        began = time.monotonic()
        try:
            result = poll(exp_dir, sched, settings, lease=me, query=time.monotonic() >= next_query, targets=targets)
        except LeaseLost as lost:
            log.info("autoexp carrier %s: %s took the lease over", me, lost)
            return False
        except Exception:  # never at the task's cost: note it, try again next interval
            log.exception("autoexp carrier %s: the poll failed", me)
            result = PollResult()
        targets = result.targets
        if result.query_error:
            next_query = time.monotonic() + backoff(settings.interval, result.failures)
        log.info(summary(me, result))
        if result.done:
            release(exp_dir, me, "all runs finished")
        refresh_report(exp_dir, settings, result)
        if result.done:
            return True
        if stop is None or stop.event.wait(max(0.0, settings.interval - (time.monotonic() - began))):
            release(exp_dir, me, None)
            return True


def take(exp_dir: Path, sched: Scheduler, settings: Settings, me: str) -> bool:
    """Take the lease if it is free or its holder dead (SIDECAR_START only when taken from a dead
    holder; a lease given back at a task's end passes on silently)."""
    st = statefile.read(exp_dir)
    if st.get("done") or (not holds(st, me) and alive(st, None, settings.interval)):
        return False
    lease = st.get("sidecar") or {}
    return acquire(exp_dir, sched, me, settings, quiet=bool(lease.get("stopped") or not lease.get("job_id")))


def carry(exp_dir: Path) -> int:
    """The carrier: this task's start, then the sidecar's polls whenever it holds the lease."""
    me = task_id()
    settings, sched = setup(exp_dir)
    stop = Stop()
    try:
        record(exp_dir, sched, settings, me, None)
    except Exception:  # the state lock held too long, say: the next poll sees the start anyway
        log.exception("autoexp carrier %s: cannot record the task's start", me)
    while not stop.event.is_set():
        try:
            if take(exp_dir, sched, settings, me) and hold(exp_dir, sched, settings, me, stop):
                return 0
            if statefile.read(exp_dir).get("done"):
                return 0
        except Exception:  # a full disk, a state being replaced: try again next interval
            log.exception("autoexp carrier %s: cannot take the lease", me)
        stop.event.wait(settings.interval * random.uniform(1.0, 1.2))  # spread the waiting carriers
    return 0


def end(exp_dir: Path, status: int) -> int:
    """The task's end: recorded, then one poll unless another carrier holds the lease, so that
    the last task to end writes the final state. A task that ended while this one polled found
    the lease taken and left without polling: if by the state every run has ended and the
    experiment is not done, this one polls again (the other takes the lease first, or this one)."""
    me = task_id()
    settings, sched = setup(exp_dir)
    record(exp_dir, sched, settings, me, status)
    for _ in range(END_POLLS):
        if not take(exp_dir, sched, settings, me):
            break
        hold(exp_dir, sched, settings, me, None)
        if not unfinished(statefile.read(exp_dir)):
            break
    return 0


def unfinished(st: State) -> bool:
    """Every run ended by the state, nothing held, and the experiment not done: a poll is owed."""
    return not st.get("done") and not st.get("held") and all(phase(run["state"]) == Phase.ENDED
                                                              for run in st["runs"].values())


# --------------------------------------------------------------------------- the watchdog

def watchdog(exp_dir: Path) -> int:
    """The watchdog job: one poll if no carrier holds the lease, then the next watchdog, until
    the experiment is done. A watchdog the state no longer names (replaced by resume) does nothing."""
    me = identity()
    settings, sched = setup(exp_dir)
    st = statefile.read(exp_dir)
    if st.get("done") or (st.get("watchdog") or {}).get("job_id") != me:
        return 0
    if take(exp_dir, sched, settings, me) and hold(exp_dir, sched, settings, me, None):
        st = statefile.read(exp_dir)
        if st.get("done"):
            return 0
    with statefile.locked(exp_dir) as st:
        if st.get("done") or st["watchdog"].get("job_id") != me:
            return 0
        try:
            job = actions.submit_watchdog(exp_dir, st, sched, settings.watchdog, reason="watchdog")
        except AutoexpError as err:
            model.log(st, "SIDECAR_ERROR", f"job {me}", Error=f"cannot submit the next watchdog: {err}",
                      Result="run `autoexp resume`")
            return 1
    log.info("autoexp watchdog %s: next watchdog job %s in %gs", me, job, settings.watchdog)
    if settings.mail and me.isdigit():
        try:
            sched.mute_mail(me)  # only the last one tells the user
        except AutoexpError:
            pass
    return 0


def watchdog_alive(st: State, sched: Scheduler) -> bool:
    """Whether the experiment's watchdog job is queued or running (asked to the scheduler)."""
    job_id = (st.get("watchdog") or {}).get("job_id")
    if not job_id:
        return False
    try:
        records = [r for r in sched.query([job_id], since(st)) if r.job_id == job_id]
    except AutoexpError:
        return True  # cannot tell: do not submit a second one
    return not records or records[-1].state not in TERMINAL


def main(argv: list[str] | None = None) -> int:
    """``python -m autoexp.sidecar.carried carry|end|watchdog EXP_DIR``: what the array template
    and the sidecar script run in carried mode. Errors go to the log, never to the exit status of
    a task (carry, end); the watchdog job fails when it cannot go on."""
    parser = argparse.ArgumentParser(prog="python -m autoexp.sidecar.carried")
    parser.add_argument("what", choices=("carry", "end", "watchdog"))
    parser.add_argument("exp_dir", type=Path)
    parser.add_argument("--status", type=int, default=0, help="the command's exit status (end)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    exp_dir = args.exp_dir.absolute()
    if args.what == "watchdog":
        return watchdog(exp_dir)
    if not task_id():  # a plain job (a function sweep of one call): its states come from accounting
        log.info("autoexp carrier: not an array task; nothing to carry")
        return 0
    try:
        return carry(exp_dir) if args.what == "carry" else end(exp_dir, args.status)
    except Exception:
        log.exception("autoexp carrier %s: %s failed", task_id(), args.what)
        return 0


if __name__ == "__main__":
    sys.exit(main())
