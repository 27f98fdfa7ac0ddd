"""The human views of state.json: ``experiment_summary.md`` and ``events.log``.

Both are derived from the state alone. ``events.log`` grows by appending the history entries it
does not hold yet; the state records how many entries and bytes the file should have, so a crash
between the two writes is noticed and the file is rebuilt whole from the history (never shortened).
"""

from __future__ import annotations

import contextlib
import functools
import os
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .jobstates import PROBLEM
from .model import Entry, Run, State, counts_text, events_mark


def human_time(iso: str | None) -> str:
    return iso.replace("T", " ").rstrip("Z") if iso else "-"


@functools.lru_cache(maxsize=4096)  # the summary shows every run's elapsed time, twice at the end
def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{value}{unit}" for value, unit in parts[:3])


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def latest_event(run: Run) -> str:
    if not run.get("events"):
        return ""
    event = run["events"][-1]
    groups = ", ".join(f"{k}={v}" for k, v in (event.get("groups") or {}).items())
    return f"{event['name']}" + (f" ({groups})" if groups else "")


def run_log(run: Run) -> str | None:
    attempts = run.get("attempts") or []
    return attempts[-1].get("log") if attempts else None


def given_text(given: dict[str, Any]) -> str:
    """What a retry rule gave an attempt, short: ``mem=400M time=0-00:02:00 batch_size=32 (OUT_OF_MEMORY)``."""
    words = [f"{k}={given[k]}" for k in ("mem", "time", "exclude") if given.get(k)]
    words += [f"{k}={v}" for k, v in (given.get("params") or {}).items()]
    cls = str(given.get("why") or "").split(":")[0]
    return " ".join(words) + (f" ({cls})" if cls else "")


def notes(run: Run, exp_dir: str = "") -> str:
    """The Notes column: elapsed, allocations, last metrics, latest event, and for a failure its log."""
    parts = []
    if run.get("elapsed_s") is not None:
        parts.append(human_duration(run["elapsed_s"]))
    attempts = run.get("attempts") or []
    if len(attempts) > 1:
        parts.append(f"{len(attempts)} allocations")
    if attempts and attempts[-1].get("given"):
        parts.append(f"attempt {attempts[-1]['attempt']} given {given_text(attempts[-1]['given'])}")
    metrics = run.get("metrics") or {}
    if metrics:
        parts.append(" ".join(f"{k}={format_value(v)}" for k, v in metrics.items()))
    event = latest_event(run)
    if event:
        parts.append(event)
    if run.get("skipped"):
        parts.append(f"skipped: waited for {run['skipped']}")
    if run["state"] in PROBLEM:
        log = run_log(run)
        if log:
            parts.append(f"log: {os.path.relpath(log, exp_dir) if exp_dir else log}")
        if run.get("exit_code") and run["exit_code"] != "0:0":
            parts.append(f"exit {run['exit_code']}")
    return "; ".join(parts) or "-"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


class Rows:
    """The summary's rows of unchanged runs, copied from the summary this process wrote last: a
    sidecar writing the summary of 100,000 runs after 100 changed formats 100 rows, and keeps 16
    bytes a run between writes (a key and a line number), not the rows. A row is reused when its
    run's encoding in state.json, its name and its table's columns are as they were, and only if
    the file is still the one written then (:meth:`wrote`; anyone else's write: every row anew)."""

    def __init__(self) -> None:
        self.stamp: tuple[int, int, int] | None = None  # the file as written with keys and lines
        self.keys, self.lines = array("q"), array("q")  # per row, in order: its key, its line there
        self.pending: tuple[array, array] | None = None  # those of the file being written

    def wrote(self, file: Path) -> None:
        """The summary being rendered is now ``file``: its rows may be reused next time."""
        if self.pending is not None:
            (self.keys, self.lines), self.pending = self.pending, None
            info = os.stat(file)
            self.stamp = info.st_ino, info.st_size, info.st_mtime_ns

    @contextlib.contextmanager
    def previous(self, file: Path | None) -> Iterator[Callable[[int], str] | None]:
        """``line(n)`` of the file as last written (read forward only), or None if it is not that."""
        try:
            fh = open(file, encoding="utf-8", newline="\n") if file is not None and self.stamp is not None else None
        except OSError:
            fh = None
        if fh is None:
            yield None
            return
        with fh:
            info = os.fstat(fh.fileno())
            if (info.st_ino, info.st_size, info.st_mtime_ns) != self.stamp:
                yield None
                return
            at, text = -1, ""

            def line(n: int) -> str:
                nonlocal at, text
                while at < n:
                    text, at = fh.readline(), at + 1
                return text.rstrip("\n")
            yield line


ROWS = Rows()


def table_row(name: str, run: Run, axis: list[str], exp_dir: str) -> str:
    cells = [run["point"], *(str((run.get("axis") or {}).get(k, "-")) for k in axis)] if axis else [name]
    return "| " + " | ".join(_cell(c) for c in cells) + f" | {run['state']} | {run.get('job_id') or '-'} | " \
        f"{human_time(run.get('started'))} | {human_time(run.get('completed'))} | {_cell(notes(run, exp_dir))} |"


def summary(state: State, encoded: dict[str, int] | None = None, file: Path | None = None) -> Iterator[bytes]:
    """experiment_summary.md, a line at a time; ``encoded``: the hash of each run's text in
    state.json (as statefile.dumps wrote it), to reuse the rows of unchanged runs from ``file``
    as this process last wrote it (:class:`Rows`)."""
    exp_dir = state.get("exp_dir", "")
    encoded = encoded or {}
    lines = [f"# Experiment: {state['experiment']}", "",
             f"Updated {human_time(state['updated'])} UTC. {counts_text(state, sep=': ')}."]
    sidecar = state.get("sidecar") or {}
    if sidecar.get("job_id"):
        lines.append(f"Sidecar job {sidecar['job_id']}, last heartbeat "
                     f"{human_time(sidecar.get('heartbeat'))} UTC.")
    arrays = ", ".join(f"{a['job_id']} (tasks {a['tasks']}, attempt {a['attempt']})"
                       for a in state.get("arrays", []))
    if arrays:
        lines.append(f"Arrays: {arrays}.")
    if state.get("ended_by"):
        lines.append(f"Ended early: {state['ended_by']}.")
    if state.get("held"):
        lines.append(held_text(state) + ".")
    keys, at = array("q"), array("q")
    written = 0
    with ROWS.previous(file) as previous:
        for title, rows in tables(state):
            axis = list(dict.fromkeys(k for _, run in rows for k in run.get("axis") or {}))
            first = ["Run", *(k.capitalize() for k in axis)] if axis else ["Run Name"]
            head = [*first, "Status", "Job ID", "Started", "Completed", "Notes"]
            lines += ["", f"## {title}", "", "| " + " | ".join(head) + " |",
                      "|" + "|".join("-" * (len(h) + 2) for h in head) + "|"]
            for line in lines:
                yield f"{line}\n".encode()
                written += 1 + line.count("\n")
            lines = []
            columns = hash((*axis, exp_dir))
            for name, run in rows:
                key = hash((encoded[name], name, columns)) if name in encoded else 0
                n = len(keys)
                reuse = key != 0 and n < len(ROWS.keys) and ROWS.keys[n] == key
                row = previous(ROWS.lines[n]) if previous is not None and reuse else table_row(name, run, axis, exp_dir)
                keys.append(key)
                at.append(written)
                yield f"{row}\n".encode()
                written += 1
    ROWS.pending = keys, at
    if state.get("done"):
        lines += ["", "## Final status", ""]
        by_state: dict[str, list[str]] = {}
        for name, run in sorted(state["runs"].items(), key=lambda item: item[1]["index"]):
            by_state.setdefault(run["state"], []).append(
                f"  - {name} (job {run.get('job_id') or '-'}) - {human_duration(run.get('elapsed_s'))}")
        for run_state, entries in by_state.items():
            mark = "✓" if run_state == "COMPLETED" else "✗"
            lines += [f"{mark} {run_state}: {len(entries)} runs", *entries, ""]
        lines.append("Each run's log is `runs/<run>/slurm-<array>_<task>.out` (a stage's too; a link to the file "
                     "Slurm writes in `logs/`); events in "
                     "`events.log`; curves, parameters and a timeline in `report.html`.")
    yield ("\n".join(lines) + "\n").encode() if lines else b""


def held_text(state: State | dict) -> str:
    """``37 runs not yet submitted (MaxSubmitJobsPerUser of QOS q: 25, 25 queued): ...``."""
    why = f" ({state['limits']})" if state.get("limits") else ""
    return f"{len(state.get('held') or {})} runs not yet submitted{why}: the sidecar submits them as " \
        "earlier tasks leave the queue"


def tables(state: State) -> list[tuple[str, list[tuple[str, Run]]]]:
    """The summary's tables: "Runs", or in a staged experiment one per stage (a row per unit)."""
    runs = sorted(state["runs"].items(), key=lambda item: item[1]["index"])
    if not any(run.get("stage") for _, run in runs):
        return [("Runs", runs)]
    by_stage: dict[str, list[tuple[str, Run]]] = {}
    for name, run in runs:
        by_stage.setdefault(run.get("stage") or "", []).append((name, run))
    return [(f"Stage: {stage}", rows) for stage, rows in by_stage.items()]


def event_block(entry: Entry) -> str:
    head = f"[{human_time(entry['time'])}] {entry['kind']}: {entry['subject']}"
    details = entry.get("details") or {}
    return "\n".join([head] + [f"{k[:1].upper()}{k[1:]}: {v}" for k, v in details.items()]) + "\n\n"


def events_update(file: Path, state: State) -> tuple[str, bool]:
    """The text events.log lacks, and whether the file must be rebuilt whole.

    Updates the state's record of what the file holds; write the state before applying it, so a
    crash in between shows up as a size mismatch next time (and the file is rebuilt).
    """
    history = state["history"]
    mark = events_mark(state)
    try:
        size = os.path.getsize(file)
    except FileNotFoundError:
        size = -1
    rebuild = size != mark["bytes"] or mark["entries"] > len(history)
    start = 0 if rebuild else mark["entries"]
    text = "".join(event_block(e) for e in history[start:])
    mark["entries"] = len(history)
    mark["bytes"] = (0 if rebuild else size) + len(text.encode())
    return text, rebuild
