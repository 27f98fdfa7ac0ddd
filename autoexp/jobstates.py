"""Slurm's words for a job's state and what autoexp makes of them: the one vocabulary every module asks.

An allocation only moves up the scale waiting -> running -> ended (:func:`phase`); accounting that
reports a lower phase than the one recorded lags behind and is ignored. A *finished* state
(:data:`TERMINAL`) never changes again; REQUEUED ends an allocation but not the run, which goes on
in a new one. The local scheduler uses the same words.
"""

from __future__ import annotations

import enum

# Before an allocation starts; PLANNED is autoexp's own word for a run never submitted.
WAITING = frozenset({"PLANNED", "PENDING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
# States after which a job will not change again (PREEMPTED may still be requeued by Slurm).
# SKIPPED is autoexp's own: a stage unit that never ran because what it waited for failed.
SKIPPED = "SKIPPED"
TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                      "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT", SKIPPED})
# An allocation that ended; REQUEUED ends it too, but then the run goes on in a new allocation.
ENDED = TERMINAL | {"REQUEUED"}
# A run that ended badly: what `retry --failed` resubmits, shown with its log and exit code.
FAILED = frozenset({"FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED"})
# A run that did not complete: the failed ones and those the user (or a rule) cancelled.
PROBLEM = FAILED | {"CANCELLED"}


class Phase(enum.IntEnum):
    """Where an allocation is; its state never goes down this scale."""

    WAITING = 0
    RUNNING = 1
    ENDED = 2


def phase(state: str) -> Phase:
    if state in WAITING:
        return Phase.WAITING
    return Phase.ENDED if state in ENDED else Phase.RUNNING
