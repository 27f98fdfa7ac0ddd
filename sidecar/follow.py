"""Stage units that wait for others (see autoexp/stages.py): Slurm starts them by itself
(``aftercorr``, ``afterok``); the sidecar only steps in where Slurm cannot.

* What a unit waits for failed for good (no retry coming): its task, pending on a dependency that
  can never be met, is cancelled and the unit recorded SKIPPED, as are the units waiting for it.
* What it waits for was retried (a new job): its task, still waiting on the old job, is cancelled and
  submitted again waiting on the new one; a SKIPPED unit is submitted again the same way.

All such submissions of one poll go out together, one array per stage.

A stage started per log event (``on: {stage, event, exists}``) gets a unit per event of a unit of
that stage, made in the poll that read the event (in the same write as the log offsets that
produced it: none missed, none twice); the units one poll makes go out as one array. Like every
submission after the launch, it is written as an intent before sbatch (actions.submit_runs): a
sidecar killed between the sbatch and the write that records its id is followed by one that finds
it again (actions.settle_intents) instead of submitting it twice.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

from .. import actions, model, stages, statefile
from ..errors import AutoexpError
from ..jobstates import SKIPPED, Phase, phase
from ..model import PlannedArray, Run
from . import remedies
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
        return not (remedies.failure_class(current) in self.settings.of(run).retry_on and not current.get("retry")
                    and not current.get("cancelled"))

    def trigger(self) -> None:
        """Make a unit per new event that starts a stage; submit them, one array per stage."""
        for k, array in enumerate(self.st.get("plan", {}).get("arrays", [])):
            if array.get("trigger"):
                self._trigger(k, array)

    def _trigger(self, k: int, array: PlannedArray) -> None:
        trigger, runs, stage = array["trigger"], self.st["runs"], array["stage"]
        made = [n for n, r in runs.items() if r.get("stage") == stage]
        new: list[str] = []
        for run in sorted(runs.values(), key=lambda r: r["index"]):
            if run.get("stage") != trigger["stage"]:
                continue
            used = run.setdefault("triggered", {}).get(stage, 0)
            for event in [e for e in run["events"] if e["name"] == trigger["event"]][used:]:
                wanted = event["groups"].get(trigger["exists"]) if trigger.get("exists") else None
                if wanted is not None and not (Path(self.exp_dir) / run.get("dir", "") / str(wanted)).exists():
                    break  # gated: this event (and those after it, in order) wait for the file
                new.append(self._make(k, array, run, event["groups"], len(made) + len(new)))
                used += 1
            run["triggered"][stage] = used
        # This poll's units, and any an earlier sidecar made but did not submit (killed before its
        # sbatch); not those of a submission whose answer is still unknown (actions.settle_intents).
        unsure = {name for intent in self.st.get("intents") or [] for _, name, _ in intent["runs"]}
        names = [n for n, r in runs.items() if r.get("stage") == stage and not r["attempts"]
                 and r["state"] != SKIPPED and n not in unsure]
        if not names:
            return
        try:
            actions.submit_runs(self.exp_dir, self.st, self.sched, sorted(names, key=lambda n: runs[n]["index"]),
                                f"event {trigger['event']}")
        except AutoexpError as err:
            model.log(self.st, "SUBMIT_FAILED", ", ".join(names), self.when, Error=str(err),
                      Result="will try again next poll")

    def _make(self, k: int, array: PlannedArray, source: Run, groups: dict[str, Any], serial: int) -> str:
        """A unit for one event: its state record, its trigger file and its log's link."""
        trigger, stage, point = array["trigger"], array["stage"], source.get("point", "")
        number = 1 + sum(1 for r in self.st["runs"].values() if r.get("stage") == stage and r.get("point") == point)
        name = f"{point}+{stage}+{number}"
        values = {g: groups.get(g) for g in trigger["groups"]}
        unit = stages.Unit(array["offset"] + serial, name, {**source["params"], **values}, stage, point,
                           source.get("dir") or "", [], values)
        self.st["runs"][name] = model.new_run(unit.index, unit.params, unit)
        case = trigger["cases"] + (source["index"] - next(
            a["offset"] for a in self.st["plan"]["arrays"] if a.get("stage") == trigger["stage"]
            and a["offset"] <= source["index"] < a["offset"] + a["count"]))
        lines = [f"AUTOEXP_RUN_INDEX={case}", f"AUTOEXP_UNIT_NAME={shlex.quote(name)}"]
        lines += [f"export {stages.event_variable(g)}={shlex.quote(str(v if v is not None else ''))}"
                  for g, v in values.items()]
        statefile.atomic_write(self.exp_dir / "triggers" / f"{serial}.sh", "\n".join(lines) + "\n")
        link = self.exp_dir / ".index" / str(k) / str(serial)  # a plan without task_logs: its script writes there
        if not self.st["plan"].get("task_logs") and not os.path.lexists(link):
            link.symlink_to(Path("..", "..", unit.dir))
        model.log(self.st, "TRIGGER", name, self.when, Event=trigger["event"],
                  Groups=", ".join(f"{g}={v}" for g, v in values.items()) or None)
        return name

    def follow(self) -> None:
        self.trigger()
        runs = self.st["runs"]
        skip: dict[str, str] = {}
        again: list[str] = []
        cancel: list[str] = []
        for name, run in sorted(((n, r) for n, r in runs.items() if r.get("after")), key=lambda item: item[1]["index"]):
            after = run["after"]
            current = run["attempts"][-1] if run["attempts"] else None
            if (current and current.get("started")) or (current and current.get("cancelled")):
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
            actions.unhold(self.st, [name])
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
