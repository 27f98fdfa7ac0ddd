"""``report.html``: the sweep on one self-contained page, a view of the state and the metric history.

What a sweep is for, side by side: each metric's curves (one line per run, failed and cancelled
runs marked), the final value of the chosen metric against each swept parameter, the runs ranked
by it, a timeline of every attempt (pending and running told apart, coloured by how it ended),
the counts, the sidecar's health and a link to each run's log.

The plots are Plotly's (the optional extra ``autoexp[report]``): a well-kept library whose figures
are interactive (hover names a run, the legend hides one) and whose JavaScript is written into the
page, so the report needs no network: it can be copied off the cluster or opened from a notebook.
Without Plotly the page keeps the tables (ranking, attempts, counts, health, logs) and says how
to get the plots. Large sweeps plot the best ``MAX_CURVES`` runs and the failed ones.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from pathlib import Path
from typing import Any

from . import history, jobstates, report, statefile
from .clock import parse_time

REPORT = "report.html"
MAX_CURVES = 60  # runs drawn per metric (ranked best first, failed ones added)
MAX_POINTS = 400  # points per drawn curve (history.halved until below)
ENDED_BAD = jobstates.PROBLEM | {jobstates.SKIPPED}  # marked on the curves, red on the timeline
STATE_COLOURS = {"COMPLETED": "#2e7d32", "RUNNING": "#0277bd", "PENDING": "#9e9e9e", "PLANNED": "#bdbdbd",
                 "CANCELLED": "#8e24aa", "TIMEOUT": "#ef6c00", "REQUEUED": "#f9a825"}
BAD_COLOUR = "#c62828"


def colour(state: str) -> str:
    return STATE_COLOURS.get(state, BAD_COLOUR if state in ENDED_BAD else "#607d8b")


def metric_names(doc: dict, histories: dict[str, dict]) -> list[str]:
    names = {m for h in histories.values() for m in h}
    names |= {m for run in doc["runs"].values() for m, v in (run.get("metrics") or {}).items()
              if history.is_number(v)}
    return sorted(names)


def final_value(run: dict, metric: str) -> float | None:
    value = (run.get("metrics") or {}).get(metric)
    return value if history.is_number(value) else None


def ranked(doc: dict, metric: str | None, goal: str) -> list[str]:
    """Run names, best ``metric`` first (``goal`` min or max); a run that failed, timed out or was
    cancelled after those that did not, whatever its last value (a curve cut short is no result);
    runs without a value last."""
    def key(name: str):
        run = doc["runs"][name]
        value = final_value(run, metric) if metric else None
        if value is None:
            return (2, 0.0, run["index"])
        return (int(run.get("state") in jobstates.PROBLEM), value if goal == "min" else -value, run["index"])
    return sorted(doc["runs"], key=key)


def swept(doc: dict) -> list[str]:
    """The parameters that vary across the sweep (the others say nothing about a run)."""
    values: dict[str, set] = {}
    for run in doc["runs"].values():
        for key, value in (run.get("params") or {}).items():
            values.setdefault(key, set()).add(json.dumps(value, sort_keys=True))
    return [key for key, seen in values.items() if len(seen) > 1]


# --------------------------------------------------------------------------- plots

def _plotly():
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    return go


def curves_figure(go, doc: dict, metric: str, histories: dict[str, dict], shown: list[str]):
    fig = go.Figure()
    for name in shown:
        run = doc["runs"][name]
        attempts = histories.get(name, {}).get(metric, {})
        bad = run["state"] in ENDED_BAD
        for attempt, points in sorted(attempts.items()):
            while len(points) > MAX_POINTS:
                points = history.halved(points)
            latest = attempt == max(attempts)
            label = f"{name} ({run['state']})" if bad else name
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], name=label,
                mode="lines" if len(points) > 2 else "lines+markers",  # a point or two: seen as dots
                legendgroup=name, showlegend=latest,
                line={"dash": "dash" if bad else ("solid" if latest else "dot"), "width": 1.5},
                hovertemplate=f"{html.escape(name)} attempt {attempt}<br>step %{{x}}"
                              f"<br>{html.escape(metric)} %{{y}}<extra></extra>"))
    fig.update_layout(title=f"{metric} per run", xaxis_title="step", yaxis_title=metric, height=420,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, legend={"font": {"size": 10}})
    return fig


def parameter_figure(go, doc: dict, metric: str, param: str):
    names = [n for n, r in doc["runs"].items() if final_value(r, metric) is not None]
    fig = go.Figure(go.Scatter(
        x=[_axis_value(doc["runs"][n]["params"].get(param)) for n in names],
        y=[final_value(doc["runs"][n], metric) for n in names], mode="markers", text=names,
        marker={"size": 10, "color": [colour(doc["runs"][n]["state"]) for n in names]},
        hovertemplate=f"%{{text}}<br>{html.escape(param)} %{{x}}<br>{html.escape(metric)} %{{y}}<extra></extra>"))
    fig.update_layout(title=f"final {metric} against {param}", xaxis_title=param, yaxis_title=metric,
                      height=360, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    if _is_log_axis(doc, param):
        fig.update_xaxes(type="log")
    return fig


def _axis_value(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else json.dumps(value)


def _is_log_axis(doc: dict, param: str) -> bool:
    values = [r["params"].get(param) for r in doc["runs"].values()]
    numbers = [v for v in values if history.is_number(v)]
    return len(numbers) == len(values) and min(numbers) > 0 and max(numbers) / min(numbers) >= 100


def timeline_figure(go, doc: dict, order: list[str], now: dt.datetime):
    """One row per run: each attempt's pending part (submitted to started) and running part."""
    bars: dict[str, dict[str, list]] = {}
    for name in order:
        for attempt in doc["runs"][name].get("attempts") or []:
            submitted, started = parse_time(attempt.get("submitted")), parse_time(attempt.get("started"))
            ended = parse_time(attempt.get("completed")) or (now if attempt["state"] in ("RUNNING", "PENDING")
                                                             else None)
            label = f"{name}{_stage(attempt)}"
            waited_until = started or ended
            if submitted and waited_until:
                _bar(bars, "waiting", label, submitted, waited_until, attempt)
            if started and ended:
                _bar(bars, attempt["state"], label, started, ended, attempt)
    fig = go.Figure()
    for state, bar in bars.items():
        fig.add_trace(go.Bar(
            y=bar["y"], x=bar["x"], base=bar["base"], orientation="h", name=state.lower(),
            marker={"color": "#e0e0e0" if state == "waiting" else colour(state)}, text=bar["text"],
            hovertemplate="%{y}<br>%{text}<extra></extra>", textposition="none"))
    fig.update_layout(barmode="overlay", title="attempts over time", height=max(240, 26 * len(order) + 120),
                      xaxis={"type": "date"}, yaxis={"autorange": "reversed", "type": "category"},
                      margin={"l": 160, "r": 20, "t": 50, "b": 40})
    return fig


def _bar(bars: dict, state: str, label: str, start: dt.datetime, end: dt.datetime, attempt: dict) -> None:
    bar = bars.setdefault(state, {"y": [], "x": [], "base": [], "text": []})
    bar["y"].append(label)
    bar["x"].append(max((end - start).total_seconds(), 1.0) * 1000)
    bar["base"].append(start.strftime("%Y-%m-%d %H:%M:%S"))
    phase = "waiting in the queue" if state == "waiting" else state
    bar["text"].append(f"attempt {attempt['attempt']} (job {attempt['job_id']}): {phase}, "
                       f"{start:%H:%M:%S} to {end:%H:%M:%S}")


def _stage(attempt: dict) -> str:
    return f" [{attempt['stage']}]" if attempt.get("stage") else ""


# --------------------------------------------------------------------------- the page

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#212121}
h1{margin-bottom:4px} .muted{color:#757575} .chip{display:inline-block;padding:2px 8px;border-radius:10px;
color:#fff;margin-right:6px;font-size:90%} table{border-collapse:collapse;margin:8px 0 24px}
td,th{border-bottom:1px solid #e0e0e0;padding:4px 10px;text-align:left;font-size:90%}
th{background:#fafafa} .bad{color:#c62828}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:8px}
section{margin-bottom:28px}
"""


def build(doc: dict, exp_dir: Path, metric: str | None = None, goal: str = "min",
          now: dt.datetime | None = None) -> str:
    """The report page for the status document ``doc`` (what ``autoexp status --json`` prints)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    histories = {name: history.series(exp_dir, name) for name in doc["runs"]}
    metrics = metric_names(doc, histories)
    chosen = metric if metric is not None else (metrics[0] if metrics else None)
    order = ranked(doc, chosen, goal)
    go = _plotly()
    parts = [_header(doc, chosen, goal)]
    if go is None:
        parts.append("<section><p class=muted>Plots need Plotly: <code>pip install 'autoexp[report]'</code>, "
                     "then <code>autoexp report</code>. The tables below are complete without it.</p></section>")
        figures: list[tuple[str, Any]] = []
    else:
        shown = order[:MAX_CURVES] + [n for n in order[MAX_CURVES:] if doc["runs"][n]["state"] in ENDED_BAD]
        figures = [(f"curves-{m}", curves_figure(go, doc, m, histories, shown)) for m in metrics]
        if chosen:
            figures += [(f"param-{p}", parameter_figure(go, doc, chosen, p)) for p in swept(doc)]
        by_index = sorted(doc["runs"], key=lambda n: doc["runs"][n]["index"])
        figures.append(("timeline", timeline_figure(go, doc, by_index, now)))
    first = True
    for section, title in (("curves-", "Metrics"), ("param-", "Final value against each swept parameter"),
                           ("timeline", "Timeline")):
        chosen_figures = [(key, fig) for key, fig in figures if key.startswith(section)]
        if not chosen_figures:
            continue
        parts.append(f"<section id=all-{section.rstrip('-')}><h2>{html.escape(title)}</h2><div class=grid>")
        for key, fig in chosen_figures:
            parts.append(f"<div class=plot id='{html.escape(key)}'>")
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first, config={"displaylogo": False}))
            parts.append("</div>")
            first = False
        parts.append("</div></section>")
    parts.append(_ranking(doc, order, metrics, chosen, goal, exp_dir))
    parts.append(_attempts(doc))
    return ("<!DOCTYPE html><html><head><meta charset=utf-8>"
            f"<title>{html.escape(doc['experiment'])}: autoexp report</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def _header(doc: dict, metric: str | None, goal: str) -> str:
    counts = "".join(f"<span class=chip style='background:{colour(s)}'>{n} {html.escape(s)}</span>"
                     for s, n in sorted(doc["counts"].items()))
    h = doc["health"]
    health = f"sidecar: <b>{html.escape(h['sidecar'])}</b>"
    if h.get("fix"):
        health += f" &mdash; fix: <code>{html.escape(h['fix'])}</code>"
    if h.get("last_error"):
        health += f"<br><span class=bad>{html.escape(h['last_error'])}</span> ({html.escape(h['log'] or '')})"
    best = "lowest" if goal == "min" else "highest"
    ranked_by = (f"runs ranked by final <b>{html.escape(metric)}</b> ({best} first)" if metric
                 else "no metric recorded yet")
    prog = doc["progress"]
    return (f"<h1>{html.escape(doc['experiment'])}</h1><div class=muted>{html.escape(doc.get('exp_dir', ''))} &middot; "
            f"updated {html.escape(doc.get('updated') or '-')} UTC &middot; {ranked_by}</div>"
            f"<section id=counts><p>{prog['finished']}/{prog['runs']} finished &nbsp; {counts}</p>"
            f"<p>{health}</p></section>")


def _ranking(doc: dict, order: list[str], metrics: list[str], chosen: str | None, goal: str, exp_dir: Path) -> str:
    params = swept(doc)
    head = ["#", "run", "state", *params, *metrics, "tries", "elapsed", "log"]
    rows = []
    for rank, name in enumerate(order, 1):
        run = doc["runs"][name]
        log = _log_link(run, exp_dir)
        finals = [final_value(run, m) for m in metrics]
        cells = [str(rank), html.escape(name),
                 f"<span style='color:{colour(run['state'])}'>{html.escape(run['state'])}</span>",
                 *[html.escape(json.dumps(run["params"].get(p))) for p in params],
                 *["-" if v is None else report.format_value(v) for v in finals], str(len(run.get("attempts") or [])),
                 report.human_duration(run.get("elapsed_s")), log]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return ("<section id=ranking><h2>Runs</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + "</tr>" + "".join(rows) + "</table></section>")


def _attempts(doc: dict) -> str:
    rows = []
    for name, run in sorted(doc["runs"].items(), key=lambda item: item[1]["index"]):
        for a in run.get("attempts") or []:
            rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                name + _stage(a), a["attempt"], a["job_id"], a["state"], a.get("submitted") or "-",
                a.get("started") or "-", a.get("completed") or "-", a.get("nodes") or "-")) + "</tr>")
    head = ["run", "attempt", "job", "state", "submitted", "started", "ended", "nodes"]
    return ("<section id=attempts><h2>Attempts</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + "</tr>" + "".join(rows) + "</table></section>")


def _log_link(run: dict, exp_dir: Path) -> str:
    attempts = run.get("attempts") or []
    if not attempts or not attempts[-1].get("log"):
        return "-"
    path = Path(attempts[-1]["log"])
    try:
        href = os.path.relpath(path, exp_dir)
    except ValueError:
        href = str(path)
    return f"<a href='{html.escape(href)}'>{html.escape(path.name)}</a>"


def write(doc: dict, exp_dir: Path, metric: str | None = None, goal: str = "min") -> Path:
    """Write ``report.html`` atomically (a reader never sees half a page)."""
    page = Path(exp_dir) / REPORT
    statefile.atomic_write(page, build(doc, Path(exp_dir), metric, goal))
    return page
