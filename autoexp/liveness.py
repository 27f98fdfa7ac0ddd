"""The one liveness rule for the sidecar's lease: `status`, `resume` and the sidecar itself all
ask :func:`lease_fresh`, so they never disagree on whether a sidecar is alive."""

from __future__ import annotations

from .clock import epoch
from .model import Lease

STALE_INTERVALS = 3  # a lease whose heartbeat is older than this many polling intervals is dead
STALE_MIN = 10.0  # s: ... and older than this, whatever the interval (a poll itself takes time)


def stale_after(interval: float) -> float:
    """Seconds without a heartbeat after which a lease's holder is taken for dead."""
    return max(STALE_INTERVALS * interval, STALE_MIN)


def lease_age(lease: Lease, when: float) -> float | None:
    """Seconds since the heartbeat (or, before the first poll, the submission)."""
    beat = epoch(lease.get("heartbeat") or lease.get("submitted"))
    return None if beat is None else when - beat


def lease_fresh(lease: Lease, interval: float, when: float) -> bool:
    """A holder that has not stopped and was heard of within :func:`stale_after`."""
    age = lease_age(lease, when)
    return bool(lease.get("job_id")) and not lease.get("stopped") and age is not None \
        and age < stale_after(interval)
