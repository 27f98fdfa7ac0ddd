"""Stage units that wait for others (see autoexp/stages.py): Slurm starts them by itself
(``aftercorr``, ``afterok``); the sidecar only steps in where Slurm cannot.

* What a unit waits for failed for good (no retry coming): its task, pending on a dependency that
  can never be met, is cancelled and the unit recorded SKIPPED, as are the units waiting for it.
* What it waits for was retried (a new job): its task, still waiting on the old job, is cancelled and
  submitted again waiting on the new one; a SKIPPED unit is submitted again the same way.

All such submissions of one poll go out together, one array per stage.
"""

from __future__ import annotations

from .. import actions, model, stages
from ..errors import AutoexpError
from ..jobstates import SKIPPED, Phase, phase
from ..model import Run
from .policy import Policy


class Follow(Policy):
    """Part of a poll, after the policy: later stages follow what their earlier ones became."""

    def gone(self, run: Run) -> bool:
        """A unit that will not complete: skipped, or ended badly with no retry to come."""
        if run["state"] == SKIPPED:
            return True
        if not run["attempts"] or run["state"] == "COMPLETED":
            return False
        current = run["attempts"][-1]
        if not self.settled(current):
            return False
        return not (current["state"] in self.settings.of(run).retry_on and not current.get("retry")
                    and not current.get("cancelled"))

    def follow(self) -> None:
        runs = self.st["runs"]
        skip: dict[str, str] = {}
        again: list[str] = []
        cancel: list[str] = []
        for name, run in sorted(runs.items(), key=lambda item: item[1]["index"]):
            after = run.get("after")
            current = run["attempts"][-1] if run["attempts"] else None
            if not after or (current and current.get("started")) or (current and current.get("cancelled")):
                continue
            lost = [o for o in after if o in skip or self.gone(runs[o])]
            waiting = current is not None and phase(current["state"]) == Phase.WAITING
            if lost:
                if run["state"] != SKIPPED:
                    skip[name] = f"{lost[0]} {SKIPPED if lost[0] in skip else runs[lost[0]]['state']}"
                    if current and waiting:
                        cancel.append(current["job_id"])
            elif run["state"] == SKIPPED:
                again.append(name)
            elif current and waiting and any(waited_for(run).get(o, runs[o]["job_id"]) != runs[o]["job_id"]
                                             for o in after):
                cancel.append(current["job_id"])
                again.append(name)
        if not (skip or again):
            return
        try:
            if cancel:
                self.sched.cancel(cancel)
            for name in again:
                if runs[name]["state"] != SKIPPED:
                    model.drop_waiting(runs[name])
                runs[name].pop("skipped", None)
            if again:
                actions.submit_runs(self.exp_dir, self.st, self.sched, again, "follows a retry")
        except AutoexpError as err:
            model.log(self.st, "FOLLOW_FAILED", ", ".join(again or list(skip)), self.when, Error=str(err),
                      Result="will try again next poll")
            return
        for name, reason in skip.items():
            previous = runs[name]["state"]
            model.mark_skipped(runs[name], reason, self.when)
            model.log(self.st, "SKIP", name, self.when, Previous=previous, Reason=f"waits for {reason}")
        prepare = runs.get(stages.PREPARE)
        if prepare and self.gone(prepare) and not self.st.get("ended_by"):
            self.st["ended_by"] = f"the prepare step ended {prepare['state']}: no run started"
            model.log(self.st, "PREPARE_FAILED", stages.PREPARE, self.when, Exit_code=prepare.get("exit_code"),
                      Log=prepare["attempts"][-1]["log"] if prepare["attempts"] else None,
                      Result="every run skipped, nothing left queued")


def waited_for(run: Run) -> dict[str, str | None]:
    """The job each unit it waits for had when it was submitted (a Slurm requeue of its task, a
    new attempt of the same job, still waits on the same)."""
    return next((a["after_jobs"] for a in reversed(run["attempts"]) if "after_jobs" in a), {})
