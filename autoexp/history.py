"""Metric history: every value a run's log printed for each ``monitor.metrics`` pattern, per attempt,
bounded in size however long the run, kept outside state.json so that ``status`` stays fast.

One file per run, ``metrics/<run>.json``: ``{metric: {attempt: {"n", "points"}}}``. ``n`` counts the
matches seen so far in that attempt's log; a point is ``[step, value]``, the step being the
pattern's ``step`` group when it has one, else the match's ordinal ``n``. The sidecar keeps, in
the log cursor it saves atomically with the state, how many matches of each metric it has read;
a value is added only when its ordinal is past the series' ``n``, so a sidecar killed between
writing this file and the state neither loses nor doubles a point when it reads the lines again.

A series holds at most ``2 * CAP`` points. When it reaches that, it is halved by keeping the
lowest and the highest value of every four consecutive points (and always the first and last
point): spikes and the curve's envelope survive, whatever the run's length.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

CAP = 1000  # a series keeps between CAP and 2 * CAP points once it has had that many
DIR = "metrics"


class Series:
    """One metric of one attempt: the bounded list of [step, value] points and the match count."""

    __slots__ = ("n", "points")

    def __init__(self, n: int = 0, points: list | None = None):
        self.n, self.points = n, points if points is not None else []

    def add(self, ordinal: int, step: Any, value: float) -> bool:
        """Record the ``ordinal``-th match; False when it was recorded before (a re-read line)."""
        if ordinal <= self.n:
            return False
        self.n = ordinal
        self.points.append([ordinal if step is None else step, value])
        if len(self.points) >= 2 * CAP:
            self.points = halved(self.points)
        return True

    def to_json(self) -> dict:
        return {"n": self.n, "points": self.points}


def halved(points: list) -> list:
    """Keep the first and last point and, of every four points between, the lowest and highest."""
    first, middle, last = points[0], points[1:-1], points[-1]
    kept = [first]
    for i in range(0, len(middle), 4):
        bucket = middle[i:i + 4]
        low = min(range(len(bucket)), key=lambda k: bucket[k][1])
        high = max(range(len(bucket)), key=lambda k: bucket[k][1])
        kept += [bucket[k] for k in sorted({low, high})]
    kept.append(last)
    return kept


class RunHistory:
    """All series of one run, read from and written to ``metrics/<run>.json``."""

    def __init__(self, exp_dir: Path, run: str):
        self.path = Path(exp_dir) / DIR / f"{run}.json"
        self.series: dict[str, dict[str, Series]] = {}
        self.changed = False
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        for metric, attempts in data.items():
            self.series[metric] = {a: Series(s["n"], s["points"]) for a, s in attempts.items()}

    def get(self, metric: str, attempt: int) -> Series:
        return self.series.setdefault(metric, {}).setdefault(str(attempt), Series())

    def add(self, metric: str, attempt: int, ordinal: int, step: Any, value: Any) -> None:
        """Add a numeric value (text values such as ``nan`` are skipped: a curve has no place for them)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        self.changed |= self.get(metric, attempt).add(ordinal, step, value)

    def save(self) -> None:
        """Write the file atomically (temporary file, fsync, rename) if anything was added."""
        if not self.changed:
            return
        self.path.parent.mkdir(exist_ok=True)
        data = {m: {a: s.to_json() for a, s in attempts.items()} for m, attempts in self.series.items()}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.changed = False


def series(exp_dir: Path, run: str) -> dict[str, dict[int, list]]:
    """``{metric: {attempt: [[step, value], ...]}}`` of one run (empty when it printed none)."""
    history = RunHistory(exp_dir, run)
    return {m: {int(a): s.points for a, s in attempts.items()} for m, attempts in history.series.items()}


def rows(exp_dir: Path, runs: list[str]) -> Iterator[dict]:
    """One plain row per point, ``{"run", "attempt", "metric", "step", "value"}``: what
    ``autoexp.metrics(EXP)`` returns and ``autoexp metrics EXP --csv`` prints."""
    for run in runs:
        for metric, attempts in sorted(series(exp_dir, run).items()):
            for attempt, points in sorted(attempts.items()):
                for step, value in points:
                    yield {"run": run, "attempt": attempt, "metric": metric, "step": step, "value": value}


def to_csv(found: Iterator[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["run", "attempt", "metric", "step", "value"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(found)
    return out.getvalue()
