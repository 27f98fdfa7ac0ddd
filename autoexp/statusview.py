"""What ``autoexp status`` and ``autoexp list`` show: an experiment's state.json plus the health of
its sidecar derived from it, as a stable JSON document or as a table for a person at a terminal.

Nothing here calls the scheduler or holds the state lock longer than one read: the sidecar owns
state.json. This module is on the start-up path of ``autoexp status`` (0.3 s for 10,000 runs), so it
imports only light modules; the config (and yaml) is read only if the sidecar did not record its
polling interval.

The JSON document is the state as written by the sidecar with two keys added:

``health``    ``{"sidecar": "alive" | "starting" | "stale" | "finished" | "not_launched",
              "job_id", "host", "heartbeat", "stopped", "age_s", "interval_s", "stale_after_s",
              "fix", "log", "last_error"}``: stale means no heartbeat for three polling intervals
              and 10 s (or a sidecar that stopped before the end), and ``fix`` is then the command
              that repairs it; ``log`` is the stale sidecar's log and ``last_error`` its last line
              when that line reports an error (a sidecar that crashed says why);
``progress``  ``{"runs", "finished", "failed", "cancelled", "active", "held"}`` from the state's counts;
              ``held``: runs not yet submitted for want of room under the site's limits.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from . import history, report, statefile
from .errors import AutoexpError
from .jobstates import FAILED, TERMINAL
from .clock import parse_time
from .liveness import STALE_INTERVALS, lease_fresh, stale_after
from .model import Run, State

ROWS_OFF_TERMINAL = 50  # table rows shown when not on a terminal (--all shows every run)
LOG_TAIL_BYTES = 8192  # how much of a stale sidecar's log is read for its last line
ERROR_LINE = re.compile(r"(?i)error|exception|traceback|no such file|not found|permission denied|killed"
                        r"|cancelled|time ?limit|failed|cannot|unable")


# --------------------------------------------------------------------------- the document

def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def polling_interval(state: State, exp_dir: Path) -> float:
    """Seconds between the sidecar's polls: as the sidecar recorded it, else from config.yaml."""
    recorded = (state.get("sidecar") or {}).get("interval")
    if recorded:
        return float(recorded)
    from .config import Config

    try:
        return float(Config.from_experiment(Path(exp_dir))["monitor"]["interval"])
    except (KeyError, TypeError, ValueError):
        return 60.0


def health(state: State, exp_dir: Path, now: dt.datetime | None = None) -> dict:
    """Is a sidecar watching? Derived from the lease alone (no scheduler call): liveness.lease_fresh."""
    now = now or utcnow()
    sidecar = state.get("sidecar") or {}
    interval = polling_interval(state, exp_dir) if sidecar.get("job_id") else None
    result: dict = {"sidecar": "not_launched", "job_id": sidecar.get("job_id"), "host": sidecar.get("host"),
              "heartbeat": sidecar.get("heartbeat"), "stopped": sidecar.get("stopped"), "age_s": None,
              "interval_s": interval, "stale_after_s": stale_after(interval) if interval else None,
              "fix": None, "log": None, "last_error": None}
    beat = parse_time(sidecar.get("heartbeat") or sidecar.get("submitted"))
    if beat:
        result["age_s"] = max(0, round((now - beat).total_seconds()))
    launched = sidecar.get("job_id") or state.get("arrays")
    if state.get("done"):
        result["sidecar"] = "finished"
    elif launched and interval and lease_fresh(sidecar, interval, now.timestamp()):
        result["sidecar"] = "alive" if sidecar.get("heartbeat") else "starting"
    elif launched and lease_fresh(watchdog := state.get("watchdog") or {}, watchdog.get("interval") or 60,
                                  now.timestamp()):
        result["sidecar"] = "starting"  # carried mode: no task carries the sidecar now; its watchdog will poll
        submitted = parse_time(watchdog.get("submitted"))
        result["job_id"] = watchdog["job_id"]
        result["age_s"] = max(0, round((now - submitted).total_seconds())) if submitted else None
    elif launched:  # silent for three intervals, or stopped (scancel, time limit) before the end
        result["sidecar"] = "stale"
        result["fix"] = f"autoexp resume {shlex.quote(str(exp_dir))}"
        log = sidecar_log(Path(exp_dir), sidecar.get("job_id"))
        if log:
            result["log"], result["last_error"] = str(log), last_error(log)
    return result


def sidecar_log(exp_dir: Path, job_id: str | None) -> Path | None:
    """The log of sidecar job ``job_id`` (logs/sidecar-<id>.out), else the newest sidecar log."""
    if job_id and (exp_dir / "logs" / f"sidecar-{job_id}.out").is_file():
        return exp_dir / "logs" / f"sidecar-{job_id}.out"
    try:
        logs = [(p.stat().st_mtime, p) for p in (exp_dir / "logs").glob("sidecar-*.out")]
    except OSError:
        return None
    return max(logs)[1] if logs else None


def last_error(log: Path) -> str | None:
    """The last non-empty line of ``log`` if it reports an error (a traceback's last line, bash's
    "No such file or directory", Slurm's "CANCELLED ... DUE TO TIME LIMIT"), else None."""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            tail = fh.read(LOG_TAIL_BYTES).decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:300] if lines and ERROR_LINE.search(lines[-1]) else None


def progress(state: State) -> dict:
    """Totals from the state's counts (which every write recomputes from the runs)."""
    counts = state["counts"]
    finished = sum(n for s, n in counts.items() if s in TERMINAL)
    return {"runs": sum(counts.values()), "finished": finished,
            "failed": sum(n for s, n in counts.items() if s in FAILED),
            "cancelled": counts.get("CANCELLED", 0), "active": sum(counts.values()) - finished,
            "held": len(state.get("held") or {})}


def document(exp_dir: Path, state: State | None = None, now: dt.datetime | None = None,
             raw: bytes | None = None) -> dict:
    """What ``status --json`` prints (module docstring); ``raw``: the text of a state read without its runs."""
    state = state if state is not None else statefile.read_shared(exp_dir)
    doc = {**state, "health": health(state, exp_dir, now), "progress": progress(state)}
    runs = state["runs"]
    span = statefile.span_of(raw, "runs") if raw else None
    if raw and span and b'"stage":' in raw[span[0]:span[1]]:
        runs = json.loads(raw[span[0]:span[1]])
    staged = stage_counts(runs)
    if staged:
        doc["stages"] = staged
    return doc


def json_bytes(doc: dict, raw: bytes) -> bytes:
    """``json.dumps(doc)`` on one line, for a document read with its state's bytes ``raw``
    (:func:`document`): the runs' and the history's text is copied from them, not parsed and
    encoded again (most of the time ``status --json`` of a big experiment took)."""
    parts = []
    for key, value in doc.items():
        span = statefile.span_of(raw, key) if key in statefile.ENTRIES else None
        text = raw[span[0]:span[1]].replace(b"\n", b"") if span else json.dumps(value).encode()
        parts.append(json.dumps(key).encode() + b": " + text)
    return b"{" + b", ".join(parts) + b"}"


def stage_counts(runs: dict[str, Run]) -> dict[str, dict[str, int]]:
    """A staged experiment's counts per stage, in the stages' order ({} for a single stage)."""
    found: dict[str, dict[str, int]] = {}
    for run in sorted(runs.values(), key=lambda r: r["index"]):
        if run.get("stage"):
            counts = found.setdefault(run["stage"], {})
            counts[run["state"]] = counts.get(run["state"], 0) + 1
    return found


def experiments(base: Path) -> list[dict]:
    """Every experiment under ``base``, newest first, with its counts and health (``autoexp list``)."""
    found = []
    for file in base.glob(f"*/{statefile.STATE}"):
        item: dict = {"experiment": file.parent.name, "exp_dir": str(file.parent.absolute())}
        try:
            st = statefile.read(file.parent)
        except AutoexpError as err:  # one unreadable experiment must not hide the others
            item["error"] = str(err)
        else:
            item.update(experiment=st["experiment"], updated=st.get("updated"), counts=st["counts"],
                        progress=progress(st), health=health(st, file.parent)["sidecar"])
        found.append((file.stat().st_mtime, item))
    return [item for _, item in sorted(found, key=lambda pair: -pair[0])]


# --------------------------------------------------------------------------- terminal rendering

COLOURS = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "magenta": "35", "dim": "2",
           "bold": "1"}
STATE_COLOUR = {"COMPLETED": "green", "RUNNING": "cyan", "CANCELLED": "magenta", "PENDING": "dim",
                "PLANNED": "dim", "SKIPPED": "yellow", **dict.fromkeys(FAILED, "red")}
HEALTH_COLOUR = {"alive": "green", "starting": "yellow", "finished": "green", "stale": "red",
                 "not_launched": "dim"}


def use_colour(stream) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class Painter:
    """ANSI colours when ``on``, plain text otherwise."""

    def __init__(self, on: bool):
        self.on = on

    def __call__(self, text: str, colour: str | None) -> str:
        if not self.on or not colour:
            return text
        return f"\033[{COLOURS[colour]}m{text}\033[0m"


def order(state: str) -> int:
    """Failed runs first, then what is still going on, then the rest."""
    if state in FAILED:
        return 0
    if state == "CANCELLED":
        return 1
    if state not in TERMINAL:
        return 2 if state == "RUNNING" else 3
    return 4


def elapsed(run: Run, now: dt.datetime) -> str:
    started = parse_time(run.get("started"))
    if run["state"] == "RUNNING" and started:
        return report.human_duration((now - started).total_seconds())
    return report.human_duration(run.get("elapsed_s"))


def row(name: str, run: Run, now: dt.datetime, trend_text: str) -> list[str]:
    metrics = " ".join(f"{k}={report.format_value(v)}" for k, v in (run.get("metrics") or {}).items())
    attempts = run.get("attempts") or []
    given = attempts[-1].get("given") if attempts else None
    tries = str(len(attempts)) + (f" {report.given_text(given)}" if given else "")
    return [name, run["state"], run.get("job_id") or "-", elapsed(run, now), tries,
            trend_text, metrics or "-", report.latest_event(run) or "-"]


HEADER = ["RUN", "STATE", "JOB", "ELAPSED", "TRIES", "TREND", "METRICS", "LATEST EVENT"]
FIXED = 6  # columns sized by their content; the last two share what is left of the terminal
TREND_WIDTH = 12
TREND_ROWS = 200  # rows that get a trend: each reads its run's metric history
SPARKS, ASCII_SPARKS = "▁▂▃▄▅▆▇█", "_.-=+*#"


def trend_metric(state: dict) -> str | None:
    """The metric the TREND column follows: the first one the sidecar recorded a number for."""
    for run in state["runs"].values():
        for name, value in (run.get("metrics") or {}).items():
            if history.is_number(value):
                return name
    return None


def trend(exp_dir: Path, name: str, metric: str | None, ascii_only: bool) -> str:
    """A sparkline of ``metric`` over the run's latest attempt, from its metric history."""
    if metric is None:
        return "-"
    attempts = history.series(exp_dir, name).get(metric) or {}
    return sparkline([value for _, value in attempts[max(attempts)]], ascii_only) if attempts else "-"


def sparkline(values: list[float], ascii_only: bool = False, width: int = TREND_WIDTH) -> str:
    """``values`` squeezed into ``width`` characters (each the mean of its share), low to high."""
    if len(values) < 2:
        return "-"
    marks = ASCII_SPARKS if ascii_only else SPARKS
    n = min(width, len(values))
    means = [sum(part) / len(part) for part in (values[i * len(values) // n:(i + 1) * len(values) // n]
                                                for i in range(n)) if part]
    low, high = min(means), max(means)
    span = (high - low) or 1.0
    return "".join(marks[min(len(marks) - 1, int((v - low) / span * len(marks)))] for v in means)


def fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def ranked(state: dict, limit: int | None = None) -> list[tuple[str, Run]]:
    """The first ``limit`` runs in table order (bucketed, not sorted whole: 10,000 runs show fast)."""
    buckets: list[list[tuple[str, Run]]] = [[] for _ in range(5)]
    for item in state["runs"].items():
        buckets[order(item[1]["state"])].append(item)
    shown: list[tuple[str, Run]] = []
    for bucket in buckets:
        shown += sorted(bucket, key=lambda item: item[1]["index"])[:None if limit is None else limit - len(shown)]
    return shown


def table(state: dict, paint: Painter, now: dt.datetime, limit: int | None, width: int | None) -> list[str]:
    shown = ranked(state, limit)
    metric = trend_metric(state)
    ascii_only = not (sys.stdout.encoding or "").lower().startswith("utf")
    exp_dir = Path(state.get("exp_dir") or ".")
    rows = [row(name, run, now, trend(exp_dir, name, metric, ascii_only) if k < TREND_ROWS else "-")
            for k, (name, run) in enumerate(shown)]
    widths = [max([len(HEADER[i])] + [len(r[i]) for r in rows]) for i in range(len(HEADER))]
    widths[0] = min(widths[0], 48)
    if width:  # the free-text columns share what is left of the terminal's width
        left = width - sum(widths[:FIXED]) - 2 * (len(HEADER) - 1)
        widths[FIXED] = min(widths[FIXED], max(left // 2, 8))
        widths[FIXED + 1] = max(left - widths[FIXED], 8)
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths)).rstrip()]
    for cells in rows:
        cells = [fit(c, w).ljust(w) for c, w in zip(cells, widths)]
        cells[1] = paint(cells[1], STATE_COLOUR.get(cells[1].strip()))
        lines.append("  ".join(cells).rstrip())
    hidden = dict(state["counts"])
    for _, run in shown:
        hidden[run["state"]] -= 1
    if sum(hidden.values()):
        what = ", ".join(f"{n} {s}" for s, n in sorted(hidden.items(), key=lambda kv: -kv[1]) if n)
        lines.append(paint(f"... {sum(hidden.values())} more runs not shown ({what}); --all lists every run",
                           "dim"))
    return lines


def bar(prog: dict, counts: dict, paint: Painter, width: int = 30) -> str:
    total = prog["runs"] or 1
    ok = round(width * counts.get("COMPLETED", 0) / total)
    bad = round(width * (prog["finished"] - counts.get("COMPLETED", 0)) / total)
    fill = "█" if (sys.stdout.encoding or "").lower().startswith("utf") else "#"
    rest = "░" if fill == "█" else "-"
    return "[" + paint(fill * ok, "green") + paint(fill * bad, "red") + rest * (width - ok - bad) + "]"


def health_line(doc: dict, paint: Painter) -> str:
    h = doc["health"]
    label = paint(h["sidecar"].replace("_", " ").upper() if h["sidecar"] == "stale"
                  else h["sidecar"].replace("_", " "), HEALTH_COLOUR[h["sidecar"]])
    age = report.human_duration(h["age_s"]) if h["age_s"] is not None else "-"
    if h["sidecar"] == "alive":
        detail = f"job {h['job_id']} on {h['host'] or '?'}, heartbeat {age} ago (polls every {h['interval_s']:g}s)"
    elif h["sidecar"] == "starting":
        detail = f"job {h['job_id']} submitted {age} ago, not started yet"
    elif h["sidecar"] == "stale":
        limit = f" (more than {STALE_INTERVALS} polling intervals of {h['interval_s'] or 0:g}s)"
        since = f"stopped at {report.human_time(h['stopped'])} UTC" if h["stopped"] else \
            f"no heartbeat for {age}{limit}" if h["heartbeat"] else \
            f"submitted {age} ago and not started{limit}: still queued, or lost"
        detail = f"job {h['job_id'] or '-'}: {since}; nothing is updating this state. Fix: {paint(h['fix'], 'bold')}"
        if h.get("log"):
            detail += f"\n  sidecar log: {h['log']}"
        if h.get("last_error"):
            detail += f"\n  last line:   {paint(h['last_error'], 'red')}"
    elif h["sidecar"] == "finished":
        detail = "every run has ended"
    else:
        detail = "planned, not launched"
    return f"sidecar: {label} - {detail}"


def counts_text(counts: dict, paint: Painter) -> str:
    by_order = sorted(counts.items(), key=lambda kv: (order(kv[0]), kv[0]))
    return ", ".join(paint(f"{n} {s}", STATE_COLOUR.get(s)) for s, n in by_order)


def render(doc: dict, colour: bool = False, limit: int | None = ROWS_OFF_TERMINAL, width: int | None = None,
           now: dt.datetime | None = None) -> str:
    """The status as a person reads it: name, progress, sidecar health, then the runs."""
    now = now or utcnow()
    paint = Painter(colour)
    prog = doc["progress"]
    updated = parse_time(doc.get("updated"))
    ago = f", updated {report.human_duration((now - updated).total_seconds())} ago" if updated else ""
    lines = [f"{paint(doc['experiment'], 'bold')}  {doc.get('exp_dir', '')}  ({doc.get('scheduler', 'slurm')}{ago})",
             f"{bar(prog, doc['counts'], paint)} {prog['finished']}/{prog['runs']} finished   "
             f"{counts_text(doc['counts'], paint)}",
             health_line(doc, paint)]
    for stage, counts in (doc.get("stages") or {}).items():
        lines.append(f"  stage {stage}: {sum(counts.values())} - {counts_text(counts, paint)}")
    if doc.get("ended_by"):
        lines.append(paint(f"ended early: {doc['ended_by']}", "red"))
    if prog.get("held"):
        lines.append(paint(report.held_text(doc), "yellow"))
    lines.append("")
    lines += table(doc, paint, now, limit, width)
    return "\n".join(lines) + "\n"


def terminal_layout(stream, show_all: bool = False) -> tuple[bool, int | None, int | None]:
    """(colour, row limit, width) for ``stream``: a terminal gets colour and a table that fits it."""
    if not stream.isatty():
        return False, None if show_all else ROWS_OFF_TERMINAL, None
    size = shutil.get_terminal_size()
    return use_colour(stream), None if show_all else max(size.lines - 7, 10), size.columns


def list_text(found: list[dict], base: Path) -> str:
    if not found:
        return f"no experiments under {base.absolute()}\n"
    rows = [["EXPERIMENT", "RUNS", "FINISHED", "FAILED", "SIDECAR", "UPDATED", "DIRECTORY"]]
    for item in found:
        if "error" in item:
            rows.append([item["experiment"], "?", "?", "?", "?", "-", f"{item['exp_dir']} ({item['error']})"])
            continue
        prog = item["progress"]
        rows.append([item["experiment"], str(prog["runs"]), str(prog["finished"]), str(prog["failed"]),
                     item["health"], report.human_time(item["updated"]), item["exp_dir"]])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] + "\n" for r in rows)
