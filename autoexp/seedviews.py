"""The files a scaffolded directory keeps (autoexp/scaffolded.py), as views of state.json.

Its own ``experiment_summary.md`` gets its Status section's two tables rewritten (Fine-tuning:
one row per trained run; Evaluations: one per evaluation script), every other byte of the file
left as it was; autoexp's own summary is then ``autoexp_summary.md`` and its events log is the
seed's ``run-torchtune.log`` (the same ``[YYYY-MM-DD HH:MM:SS] ACTION:`` blocks). statefile
writes both with every state write; nothing here touches the disk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path

from .jobstates import FAILED
from .model import Run, State
from .report import human_duration, human_time

OWN_SUMMARY = "autoexp_summary.md"  # autoexp's summary, beside the directory's experiment_summary.md
LOG = "run-torchtune.log"  # the seed's event log: autoexp's events.log under the name it keeps
TRAIN_HEAD = ["Run Name", "Status", "Job ID", "Started", "Completed", "Notes"]
EVAL_HEAD = ["Run Name", "Task", "Epoch", "Status", "Job ID", "Completed", "Notes"]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") or "-" for c in cells) + " |\n"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(head), "|" + "|".join("-" * (len(h) + 2) for h in head) + "|\n", *(_row(r) for r in rows)]


def _status(run: Run) -> str:
    return "pending" if run["state"] == "PLANNED" else run["state"]


def _notes(run: Run) -> str:
    """Elapsed time; for a failure how it failed and its log (relative to the run's directory)."""
    parts = []
    if run.get("skipped"):
        parts.append(f"skipped: {run['skipped']}")
    if run.get("elapsed_s") is not None and run["state"] not in ("PLANNED", "PENDING"):
        parts.append(human_duration(run["elapsed_s"]))
    attempts = run.get("attempts") or []
    if len(attempts) > 1:
        parts.append(f"attempt {attempts[-1]['attempt']}")
    if run["state"] in FAILED or run["state"] == "CANCELLED":
        failure = attempts[-1].get("failure") if attempts else None
        if failure == "OUT_OF_MEMORY" and run["state"] != failure:
            parts.append("out of memory (its log says so)")
        if attempts and attempts[-1].get("log"):
            parts.append(f"Check {os.path.basename(attempts[-1]['log'])}")
    return "; ".join(parts) or "-"


def _ordered(state: State, stage: str) -> list[tuple[str, Run]]:
    """A stage's units in the All Runs table's order (a unit's task id is its run's position)."""
    arrays = state["plan"]["arrays"] if "plan" in state else []
    n = max(1, arrays[0]["count"] if arrays else 1)
    units = [(name, run) for name, run in state["runs"].items() if run.get("stage") == stage]
    return sorted(units, key=lambda item: (item[1]["index"] % n, str((item[1].get("axis") or {}).get("task")),
                                           str((item[1].get("axis") or {}).get("epoch"))))


def _name(run: Run, shown: Collection[str]) -> str:
    """A run as the table names it: by the All Runs name, or by its directory's name where the
    table the file already has names it so (the two may differ by a model prefix)."""
    point = run.get("point") or ""
    directory = Path(run.get("dir") or point)
    directory = directory.parent if directory.name == "eval" else directory
    return directory.name if directory.name in shown and point not in shown else point


def tables(state: State, shown: Collection[str] = ()) -> dict[str, list[str]]:
    """The two tables' lines, by their subsection title (Evaluations only when there are some);
    ``shown`` are the run names the file's tables have now."""
    train = [[_name(run, shown), _status(run), run.get("job_id") or "-", human_time(run.get("started")),
              human_time(run.get("completed")), _notes(run)] for _, run in _ordered(state, "train")]
    out = {"Fine-tuning": _table(TRAIN_HEAD, train)}
    evals = []
    for _, run in _ordered(state, "eval"):
        axis = run.get("axis") or {}
        base = axis.get("epoch") == "base"
        evals.append([_name(run, shown), str(axis.get("task", "-")), "-" if base else str(axis.get("epoch")),
                      _status(run), run.get("job_id") or "-", human_time(run.get("completed")),
                      "; ".join(t for t in ("Base model" if base else "", _notes(run)) if t not in ("", "-")) or "-"])
    if evals:
        out["Evaluations"] = _table(EVAL_HEAD, evals)
    return out


def _heading(line: str) -> tuple[int, str] | None:
    match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line.rstrip("\r\n"))
    return (len(match.group(1)), match.group(2)) if match else None


def with_status(text: str, state: State) -> str:
    """``text`` (the directory's experiment_summary.md) with its Status tables from the state:
    each table under ``### Fine-tuning`` / ``### Evaluations`` in the ``## Status`` section is
    replaced (or added, with its heading, at the section's end; the section at the file's end)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if (h := _heading(line)) and h[0] == 2
                  and h[1].lower() == "status"), None)
    if start is None:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["\n", "## Status\n"]
        start = len(lines) - 1
    end = next((i for i in range(start + 1, len(lines)) if (h := _heading(lines[i])) and h[0] <= 2), len(lines))
    section = lines[start:end]
    shown = {cells[1].strip() for line in section if line.lstrip().startswith("|")
             and len(cells := line.split("|")) > 2}
    for title, table in tables(state, shown).items():
        at = next((i for i, line in enumerate(section) if (h := _heading(line)) and h[0] == 3
                   and h[1].lower() == title.lower()), None)
        if at is None:
            while len(section) > 1 and not section[-1].strip():
                section.pop()
            if not section[-1].endswith("\n"):
                section[-1] += "\n"
            section += ["\n", f"### {title}\n", *table]
            if end < len(lines):
                section.append("\n")
            continue
        first = at + 1
        while first < len(section) and not section[first].strip():
            first += 1
        if first < len(section) and section[first].lstrip().startswith("|"):
            last = first
            while last < len(section) and section[last].lstrip().startswith("|"):
                last += 1
            section[first:last] = table
        else:
            section[at + 1:at + 1] = table
    return "".join(lines[:start] + section + lines[end:])
