"""The sidecar (``autoexp.sidecar``): a small job on a compute node that keeps an experiment's state
true, through any fault.

One poll (:mod:`.poll`; :func:`reconcile` is the same without a lease, for ``status --refresh``):

1. one scheduler query (``sacct``) covering the arrays with a task that can still change and the
   sidecar job, from shortly before the last poll (:func:`.records.window`), made without the
   state lock, since it may take seconds; an answer with nothing new ends the poll (:mod:`.quiet`);
2. under the lock: the records are applied to the runs' attempts (:mod:`.records`: STATE_CHANGE
   entries), each started run's log is read from where the last poll stopped (:mod:`.logscan` over
   :mod:`.logwatch`: LOG_EVENT entries, metrics, stalls), the configured actions are taken
   (:mod:`.policy`: cancel, retry as one new array), a STATUS_CHECK entry is added, the sidecar's
   lease is renewed, and the experiment is finished once every run is over;
3. the lock is released: state.json, experiment_summary.md and events.log are written together.

What a poll learns is written in the same atomic state write as the log offsets that produced it,
so a sidecar killed at any instant (scancel, kill -9, a lost node) and started again rebuilds the
truth from the scheduler's accounting and the saved offsets: no transition missed, no event twice.

Only the holder of the lease (:mod:`.lease`) may apply a poll. The lease is ``state["sidecar"]``:
the holder's job id and a heartbeat renewed every poll (in ``sidecar.heartbeat`` when the poll
changed nothing: :mod:`.quiet`). A sidecar finds it is not the holder under
the same lock that would let it write, so two never apply polls at once; a holder whose job ended,
or whose heartbeat is older than three intervals (and 10 s: liveness.lease_fresh), is dead and its
lease is taken over. Before its own time limit the sidecar (:mod:`.loop`) submits its successor
(``--dependency=afterany`` on itself, so the two never run at once), hands it the lease and exits.
In ``chain`` mode (``sidecar.mode``) each job polls once and submits the next one to begin an
interval later.
"""

from __future__ import annotations

from .lease import LeaseLost, alive, holds
from .loop import run
from .poll import Poll, poll, query_targets, reconcile
from .settings import Settings
from .work import PollResult

__all__ = ["LeaseLost", "Poll", "PollResult", "Settings", "alive", "holds", "poll", "query_targets", "reconcile", "run"]
