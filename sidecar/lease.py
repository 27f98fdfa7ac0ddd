"""The lease: only the sidecar named in ``state["sidecar"]`` may apply polls.

A sidecar takes the lease if it was submitted for it or if its holder is dead (:func:`alive`),
and finds it lost under the same lock that would let it write, so two never apply polls at once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from .. import clock, liveness, model, statefile
from ..errors import AutoexpError
from ..jobstates import TERMINAL, Phase, phase
from ..model import State
from ..scheduler import Scheduler
from .records import since
from .settings import Settings

log = logging.getLogger(__name__)


def identity() -> str:
    """This sidecar's name in the lease: its job id, or host:pid when run by hand outside a job."""
    return os.environ.get("SLURM_JOB_ID") or f"{socket.gethostname()}:{os.getpid()}"


def holds(st: State, me: str) -> bool:
    sidecar = st.get("sidecar") or {}
    return sidecar.get("job_id") == me and not sidecar.get("stopped")


def alive(st: State, sched: Scheduler | None = None, interval: float = 60.0, now: float | None = None) -> bool:
    """Whether the experiment's recorded sidecar is polling or about to (submitted, pending).

    Dead: it stopped by itself, its job ended (asked to ``sched`` when given), its process is gone
    from this very host, or :func:`autoexp.liveness.lease_fresh` says so (``interval`` counts when the
    lease records none).
    """
    sidecar = st.get("sidecar") or {}
    job_id = sidecar.get("job_id")
    if not job_id or sidecar.get("stopped"):
        return False
    if sched is not None and str(job_id).isdigit():
        try:
            records = [r for r in sched.query([job_id], since(st)) if r.job_id == job_id]
        except AutoexpError:
            records = []
        if records:
            latest = records[-1].state
            if latest in TERMINAL:
                return False
            if phase(latest) == Phase.WAITING:
                return True
    if sidecar.get("host") == socket.gethostname() and sidecar.get("pid") and sidecar.get("heartbeat"):
        if not process_exists(int(sidecar["pid"])):
            return False
    return liveness.lease_fresh(sidecar, float(sidecar.get("interval") or interval), now or time.time())


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LeaseLost(Exception):
    """Another sidecar holds the lease: this one must stop without writing anything."""


def acquire(exp_dir: Path, sched: Scheduler, me: str, settings: Settings, quiet: bool) -> bool:
    """Take the lease if it is ours (we were submitted for it) or its holder is dead."""
    with statefile.locked(exp_dir) as st:
        sidecar = st["sidecar"]
        holder = sidecar.get("job_id")
        if st.get("done"):
            log.info("autoexp sidecar %s: the experiment is done; nothing to watch", me)
            return False
        if holder != me and alive(st, sched, settings.interval):
            log.info("autoexp sidecar %s: sidecar %s holds the lease; exiting", me, holder)
            return False
        st["sidecar"] = model.held_lease(sidecar, me, socket.gethostname(), os.getpid(), settings.interval,
                                         settings.mode)
        if not quiet:
            model.log(st, "SIDECAR_START", f"job {me}", Host=socket.gethostname(),
                      Took_over_from=None if holder in (None, me) else f"job {holder} (not alive)",
                      Interval=f"{settings.interval:g}s")
    return True


def release(exp_dir: Path, me: str, reason: str | None) -> None:
    """Mark the lease free (``reason`` None: silently, as after a single poll)."""
    with statefile.locked(exp_dir) as st:
        if not holds(st, me):
            return
        st["sidecar"]["stopped"] = clock.now()
        if reason:
            model.log(st, "SIDECAR_STOP", f"job {me}", Reason=reason)

