"""The policy: what the logs and the states call for (cancel, retry as one new array), and when
the experiment is over."""

from __future__ import annotations

from typing import Any

from .. import actions, model, report
from ..errors import AutoexpError, SchedulerTimeout
from ..jobstates import ENDED, SKIPPED, Phase, phase
from ..clock import epoch
from ..model import Attempt
from . import remedies
from .work import Work

REQUEUE_GRACE = 300  # s: how long a NODE_FAIL the scheduler should requeue waits for its new allocation


class Policy(Work):
    """Part of a poll: the actions rules and states call for, and the experiment's end."""

    def act(self) -> None:
        """Cancel and retry what the logs and the states call for: all retries as one submission.
        A submission whose answer was lost is settled first; its runs wait while it is unknown."""
        runs = self.st["runs"]
        waiting = actions.settle_intents(self.exp_dir, self.st, self.sched)
        cancel = [n for n, (action, _) in self.requests.items()
                  if action == "cancel" and phase(runs[n]["attempts"][-1]["state"]) < Phase.ENDED]
        if cancel:
            self._cancel(cancel)
        retry: dict[str, str] = {}
        for name, (action, event) in self.requests.items():
            if action == "retry":
                self._want_retry(name, f"event {event}", retry)
        for name, run in runs.items():
            current = run["attempts"][-1] if run["attempts"] else None
            if current and not current.get("cancelled") and self.settled(current) \
                    and remedies.failure_class(current) in self.settings.of(run).retry_on:
                self._want_retry(name, f"state {remedies.failure_class(current)}", retry)
        held = self.st.get("held") or {}
        retry = {name: why for name, why in retry.items() if name not in waiting and name not in held}
        if retry:
            self._retry(retry)
        self._submit_held(waiting)

    def _submit_held(self, waiting: set[str]) -> None:
        """Submit the runs the site's limits held back (actions.submit_runs), as far as the room
        the tasks that left the queue give: in index order, those held for one reason together."""
        gone = (SKIPPED, "CANCELLED")  # a held unit skipped, a held run cancelled: owed nothing
        actions.unhold(self.st, [n for n in self.st.get("held") or {} if self.st["runs"][n]["state"] in gone])
        held = self.st.get("held") or {}
        by_reason: dict[str, list[str]] = {}
        for name in sorted(held, key=lambda n: self.st["runs"][n]["index"]):
            if name not in waiting:
                by_reason.setdefault(held[name], []).append(name)
        for reason, names in by_reason.items():
            try:
                actions.submit_runs(self.exp_dir, self.st, self.sched, names,
                                    "room in the queue" if reason == "launch" else reason)
            except SchedulerTimeout as err:
                model.log(self.st, "SUBMIT_UNKNOWN", ", ".join(names[:5]), self.when, Error=str(err),
                          Result="will look for it by its tag before anything is submitted again")
                return
            except AutoexpError as err:
                model.log(self.st, "SUBMIT_FAILED", f"{len(names)} held runs", self.when, Error=str(err),
                          Result="will try again next poll")
                return

    def _cancel(self, names: list[str]) -> None:
        reasons = {n: f"event {self.requests[n][1]}" for n in names}
        for reason in sorted(set(reasons.values())):
            group = [n for n in names if reasons[n] == reason]
            previous = {n: self.st["runs"][n]["state"] for n in group}
            try:
                actions.cancel_runs(self.st, self.sched, group, reason)
            except AutoexpError as err:
                model.log(self.st, "CANCEL_FAILED", ", ".join(group), self.when, Error=str(err))
                continue
            for name in group:
                run = self.st["runs"][name]
                self.state_change(name, run, run["attempts"][-1], previous[name], "CANCELLED")
            self.result.cancelled += group

    def _want_retry(self, name: str, reason: str, retry: dict[str, str]) -> None:
        run = self.st["runs"][name]
        current = run["attempts"][-1]
        if current.get("retry") or name in retry:
            return
        used = len(run["attempts"]) - 1
        limit = self.settings.of(run).retry_max
        if used >= limit:
            current["retry"] = "none left"
            model.log(self.st, "RETRY_SKIPPED", name, self.when, Reason=reason,
                      Result=f"no retry left: {used} of {limit} used "
                             "(monitor.retries.max)")
            return
        retry[name] = reason

    def settled(self, attempt: Attempt) -> bool:
        """An attempt the scheduler reported ended (our own cancel is not enough: the task may have
        finished first) and will not bring back by itself (or has not, long enough)."""
        if attempt["state"] not in ENDED or attempt["state"] == "REQUEUED" or not attempt.get("ended_seen"):
            return False
        script = self.scripts.get(attempt["job_id"].split("_")[0])
        if script is None or not self.sched.will_requeue(attempt["state"], script):
            return True
        return self.now - (epoch(attempt["ended_seen"]) or self.now) >= REQUEUE_GRACE

    def _retry(self, retry: dict[str, str]) -> None:
        runs = self.st["runs"]
        active = [runs[n]["attempts"][-1]["job_id"] for n in retry
                  if phase(runs[n]["attempts"][-1]["state"]) < Phase.ENDED]
        reason = ", ".join(sorted(set(retry.values())))
        before = {name: len(runs[name]["attempts"]) for name in retry}
        try:
            given = self._given(retry)
            if active:
                self.sched.cancel(active)
            actions.submit_runs(self.exp_dir, self.st, self.sched, sorted(retry), reason, given, hold=False)
        except SchedulerTimeout as err:
            model.log(self.st, "RETRY_UNKNOWN", ", ".join(sorted(retry)), self.when, Error=str(err),
                      Result="will look for it by its tag before anything is submitted again")
            return
        except AutoexpError as err:
            model.log(self.st, "RETRY_FAILED", ", ".join(sorted(retry)), self.when, Error=str(err),
                      Result="will try again next poll")
            return
        sent = sorted(name for name in retry if len(runs[name]["attempts"]) > before[name])  # the rest: no room yet
        for name in sent:
            for attempt in runs[name]["attempts"][:-1]:
                attempt.setdefault("retry", retry[name])
        self.result.retried += sent

    def _given(self, retry: dict[str, str]) -> dict[str, dict[str, Any]]:
        """What each retried run's next attempt gets by the rule of its failure class (a run whose
        earlier attempts were changed keeps those changes); parameters changed are rendered into
        retries/<index>.<attempt>.sh."""
        given = {}
        for name in retry:
            run = self.st["runs"][name]
            current = run["attempts"][-1]
            cls = remedies.failure_class(current) if self.settled(current) else current["state"]
            chosen = remedies.next_given(self.exp_dir, run, cls, self.settings.of(run).retry_rules.get(cls) or {},
                                         self.settings.base, self.sched)
            if chosen.get("params"):
                remedies.write_task(self.exp_dir, self.st["plan"], run["index"], name, len(run["attempts"]) + 1,
                                    {**run["params"], **chosen["params"]})
            if chosen:
                given[name] = chosen
        return given

    def over(self) -> bool:
        """Every run's latest attempt settled, none waits for a retry a rule calls for, and none
        for room in the queue (held)."""
        if self.st.get("held"):
            return False
        for run in self.st["runs"].values():
            if run["state"] == SKIPPED or (run["state"] == "CANCELLED" and not run["attempts"]):
                continue
            if not run["attempts"]:
                return False
            current = run["attempts"][-1]
            if not self.settled(current):
                return False
            if remedies.failure_class(current) in self.settings.of(run).retry_on and not current.get("retry") \
                    and not current.get("cancelled"):
                return False
        return True

    def finish(self) -> None:
        """Mark the experiment done once every run is over; only a submission (retry) undoes it,
        and a done set by someone else (``autoexp cancel``) stops the sidecar too."""
        if not self.st.get("done") and self.over():
            runs = self.st["runs"].values()
            first = min((epoch(a.get("submitted")) or self.now for r in runs for a in r["attempts"]),
                        default=self.now)
            last = max((epoch(r.get("completed")) or self.now for r in runs), default=self.now)
            model.log(self.st, "ALL_COMPLETE", "Monitoring finished", self.when, Summary=model.counts_text(self.st),
                      Reason=self.st.get("ended_by"), Total_time=report.human_duration(last - first),
                      Next="see experiment_summary.md for each run; events.log for what happened")
            self.st["done"] = True
        self.result.done = bool(self.st.get("done"))

