"""Metric history: every value a run's log printed for each ``monitor.metrics`` pattern, per attempt,
bounded in size however long the run, kept outside state.json so that ``status`` stays fast.

One file per run, ``metrics/<run>.json``: ``{metric: {attempt: {"n", "points"}}}``. ``n`` counts the
matches seen so far in that attempt's log; a point is ``[step, value]``, the step being the
pattern's ``step`` group when it has one, else the match's ordinal ``n``. The sidecar keeps, in
the log cursor it saves atomically with the state, how many matches of each metric it has read;
a value is added only when its ordinal is past the series' ``n``, so a sidecar killed between
writing this file and the state neither loses nor doubles a point when it reads the lines again.

A series is bounded by decimating at a uniform rate, so that the whole run stays equally dense:
values are taken in buckets of ``stride`` consecutive values, of which only the lowest and the
highest are kept (spikes and the curve's envelope survive); when ``CAP`` buckets are full, pairs
of neighbours merge and the stride doubles. A series therefore holds at most about ``2 * CAP``
points, plus the first value and the lowest, highest and latest of the bucket being filled.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from . import statefile
from collections.abc import Iterator

CAP = 1000  # a series keeps between CAP and 2 * CAP points once it has had that many
DIR = "metrics"


def is_number(value: Any) -> bool:
    """A metric value a curve can hold: an int or a float, not a bool nor text such as ``nan``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Series:
    """One metric of one attempt: the match count ``n`` and the decimated points (see above)."""

    __slots__ = ("buckets", "filled", "first", "n", "open", "stride")

    def __init__(self, n: int = 0, stride: int = 1, first: list | None = None, buckets: list | None = None,
                 open: list | None = None, filled: int = 0):
        self.n, self.stride, self.first = n, stride, first
        self.buckets: list[list] = buckets if buckets is not None else []
        self.open: list = open if open is not None else []  # [lowest, highest, latest] of the open bucket
        self.filled = filled

    def add(self, ordinal: int, step: Any, value: float) -> bool:
        """Record the ``ordinal``-th match; False when it was recorded before (a re-read line)."""
        if ordinal <= self.n:
            return False
        self.n = ordinal
        point = [ordinal if step is None else step, value]
        if self.first is None:
            self.first = point
        if self.open:
            low, high, _ = self.open
            self.open = [min(low, point, key=_value), max(high, point, key=_value), point]
        else:
            self.open = [point, point, point]
        self.filled += 1
        if self.filled == self.stride:
            self.buckets.append(extremes(self.open[:2]))
            self.open, self.filled = [], 0
            if len(self.buckets) >= CAP:
                self.buckets = [extremes(a + b) for a, b in zip(self.buckets[::2], self.buckets[1::2])] + \
                    ([self.buckets[-1]] if len(self.buckets) % 2 else [])
                self.stride *= 2
        return True

    def points(self) -> list:
        """The kept points in step order: the first, each bucket's extremes, the open bucket's."""
        found = [self.first] if self.first is not None else []
        for bucket in self.buckets:
            found += bucket
        found += self.open
        unique: dict = {}
        for point in found:
            unique.setdefault((point[0], point[1]), point)
        return sorted(unique.values(), key=lambda p: p[0])

    def to_json(self) -> dict:
        return {"n": self.n, "stride": self.stride, "first": self.first, "buckets": self.buckets,
                "open": self.open, "filled": self.filled}


def _value(point: list) -> float:
    return point[1]


def extremes(points: list) -> list:
    """The lowest and the highest of ``points`` (one point when they are the same), in step order."""
    low, high = min(points, key=_value), max(points, key=_value)
    return [low] if low is high or low == high else sorted([low, high], key=lambda p: p[0])


def halved(points: list) -> list:
    """About half of ``points``: the first, the last, and the lowest and highest of every four
    between (the report thins a long curve with it)."""
    first, middle, last = points[0], points[1:-1], points[-1]
    kept = [first]
    for i in range(0, len(middle), 4):
        kept += extremes(middle[i:i + 4])
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
            self.series[metric] = {a: Series(**s) for a, s in attempts.items()}

    def get(self, metric: str, attempt: int) -> Series:
        return self.series.setdefault(metric, {}).setdefault(str(attempt), Series())

    def add(self, metric: str, attempt: int, ordinal: int, step: Any, value: Any) -> None:
        """Add a numeric value (text values such as ``nan`` are skipped: a curve has no place for them)."""
        if not is_number(value) or not math.isfinite(value):
            return
        self.changed |= self.get(metric, attempt).add(ordinal, step, value)

    def save(self) -> None:
        """Write the file atomically (temporary file, fsync, rename) if anything was added."""
        if not self.changed:
            return
        self.path.parent.mkdir(exist_ok=True)
        data = {m: {a: s.to_json() for a, s in attempts.items()} for m, attempts in self.series.items()}
        statefile.atomic_write(self.path, json.dumps(data, separators=(",", ":")))
        self.changed = False


class Recorder:
    """The logwatch sink of one run's attempt: reads the run's history on the first value only
    (most polls find none), adds each value, and saves when asked."""

    def __init__(self, exp_dir: Path, run: str, attempt: int):
        self.exp_dir, self.run, self.attempt = exp_dir, run, attempt
        self.history: RunHistory | None = None

    def __call__(self, metric: str, ordinal: int, step: Any, value: Any) -> None:
        if self.history is None:
            self.history = RunHistory(self.exp_dir, self.run)
        self.history.add(metric, self.attempt, ordinal, step, value)

    def save(self) -> None:
        if self.history is not None:
            self.history.save()


def series(exp_dir: Path, run: str) -> dict[str, dict[int, list]]:
    """``{metric: {attempt: [[step, value], ...]}}`` of one run (empty when it printed none)."""
    history = RunHistory(exp_dir, run)
    return {m: {int(a): s.points() for a, s in attempts.items()} for m, attempts in history.series.items()}


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
