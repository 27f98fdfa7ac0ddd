"""Watching the runs' logs during a poll: events and metrics from where the last poll stopped,
and stalls (a running attempt whose log has not grown for ``monitor.stall_after``)."""

from __future__ import annotations

import os
from typing import Any

from .. import history, model, report
from ..jobstates import WAITING, Phase, phase
from ..clock import epoch
from ..model import Run
from . import logwatch
from .work import Work

EVENT_CAP = 100  # matches of one event recorded per attempt; later ones are counted only


class LogScan(Work):
    """Part of a poll: each started attempt's log read from where the last poll stopped."""

    def scan_logs(self) -> None:
        if not self.settings.any_rules():
            return
        for name, run in self.st["runs"].items():
            if run["attempts"]:
                self._scan_run(name, run)

    def _scan_run(self, name: str, run: Run) -> None:
        current = run["attempts"][-1]
        cursor = run.get("log_cursor")
        if cursor is not None and cursor.get("attempt") != current["attempt"] and not cursor.get("final"):
            self._read(name, run, cursor, final=True)  # the previous attempt's last lines
            close(cursor)
        log = current["log"]
        if not log or (current["state"] in WAITING and not current.get("started")):
            return
        if cursor is None or cursor.get("attempt") != current["attempt"]:
            same_file = cursor is not None and cursor.get("path") == log  # a Slurm requeue appends
            cursor = dict(cursor) if cursor is not None and same_file else model.new_log_cursor(log)
            cursor.update(attempt=current["attempt"], final=False, stalled=False, grown=self.when, counts={},
                          metric_n={})
            run["log_cursor"] = cursor
        if cursor.get("final"):
            return
        over = phase(current["state"]) == Phase.ENDED
        more = self._read(name, run, cursor, final=over)
        if over and not more:
            close(cursor)
        elif (own := self.settings.of(run)).stall_after and phase(current["state"]) == Phase.RUNNING \
                and not cursor.get("stalled"):
            silent = self.now - (epoch(cursor.get("grown")) or self.now)
            if silent >= own.stall_after:
                cursor["stalled"] = True
                self._event(name, run, cursor, "stalled", {"silent_for": report.human_duration(silent)},
                            own.stall_action)

    def _read(self, name: str, run: Run, cursor: dict[str, Any], final: bool) -> bool:
        """Scan the log on from the cursor; whether some of it is left for the next poll."""
        rules = self.settings.of(run).rules
        if not rules:
            if logwatch.log_size(cursor["path"]) != cursor.get("size"):  # stall watch only: no reading
                cursor.update(size=logwatch.log_size(cursor["path"]), grown=self.when, stalled=False)
            return False
        recorder = history.Recorder(self.exp_dir, name, cursor["attempt"])
        found = logwatch.scan(cursor, rules, final=final, sink=recorder)
        if found.not_regular and cursor.get("not_regular") != found.not_regular:
            model.log(self.st, "LOG_SKIPPED", name, self.when, Log=os.path.relpath(cursor["path"], self.exp_dir),
                      Reason=f"the log is {found.not_regular}, not a regular file: it is not read")
        if found.not_regular:
            cursor["not_regular"] = found.not_regular
        else:
            cursor.pop("not_regular", None)
        recorder.save()  # before the state that holds the cursor: see autoexp/history.py
        if found.grew:
            cursor.update(grown=self.when, stalled=False)
        if found.restarted:
            model.log(self.st, "LOG_RESET", name, self.when, Log=os.path.relpath(cursor["path"], self.exp_dir),
                      Reason=f"the log was {found.restarted}; reading it again from the start")
        if found.metrics:  # a new dict: a kept state's runs share their first, empty one (model.compact)
            run["metrics"] = {**run["metrics"], **found.metrics}
        for match in found.events:
            self._event(name, run, cursor, match.rule.name, match.groups, match.rule.action)
        return found.more

    def _event(self, name: str, run: Run, cursor: dict[str, Any], event: str, groups: dict[str, Any],
               action: str) -> None:
        counts = cursor.setdefault("counts", {})
        counts[event] = counts.get(event, 0) + 1
        if counts[event] > EVENT_CAP:
            return
        self.result.events += 1
        attempt = cursor["attempt"]
        run["events"] = [*run["events"], model.new_event(event, self.when, groups, attempt)]  # (as metrics)
        model.log(self.st, "LOG_EVENT", name, self.when, Event=event,
                  Groups=", ".join(f"{k}={v}" for k, v in groups.items()) or None,
                  Attempt=attempt if attempt > 1 else None,
                  Action=action if action != "log" else None,
                  Note=f"{EVENT_CAP} matches of {event} recorded; later ones are not"
                  if counts[event] == EVENT_CAP else None)
        if action in ("cancel", "retry") and attempt == run["attempts"][-1]["attempt"]:
            self.requests.setdefault(name, (action, event))


def close(cursor: dict[str, Any]) -> None:
    """An attempt's log is read to its end: keep only where (a Slurm requeue appends after it)."""
    for key in ("dev", "ino", "tail", "grown", "stalled", "counts", "metric_n"):
        cursor.pop(key, None)
    cursor["final"] = True

