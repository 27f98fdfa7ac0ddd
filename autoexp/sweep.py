"""Sweep expansion: ``grid`` (cartesian product), ``list`` (explicit points), ``exclude``.

The order is deterministic: grid points first, in the product order of the keys as written (the
first key varies slowest), then list points as written. Each point becomes a :class:`Run` with a
name that is safe as a directory name and unique in the experiment.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

from . import render
from .errors import InputError

RESERVED = ("run_name", "run_index", "run_dir", "exp_dir", "config_dir", "attempt")
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._=+-]+")
# The most points a sweep may name (grid and list, before exclude): counted before any is made, so
# a typo that multiplies the grid is refused at once instead of growing memory for minutes.
MAX_POINTS = 100_000


@dataclass
class Run:
    index: int
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self, exp_dir) -> dict:
        return {"index": self.index, "name": self.name, "params": self.params,
                "dir": f"{exp_dir}/runs/{self.name}"}  # no pathlib: once per run, 100,000 times


def points(config) -> list[dict]:
    sweep = config.get("sweep")
    if sweep is None:
        return [{}]
    grid = sweep.get("grid") or {}
    named = (math.prod(len(axis) for axis in grid.values()) if grid else 0) + len(sweep.get("list") or [])
    if named > MAX_POINTS:
        raise config.error("sweep", f"the sweep names {named:,} points; at most {MAX_POINTS:,} are "
                           "allowed (split it into several experiments)")
    found = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else []
    found += [dict(p) for p in sweep.get("list") or []]
    for rule in sweep.get("exclude") or []:
        found = [p for p in found if not all(k in p and p[k] == v for k, v in rule.items())]
    if not found:
        raise config.error("sweep", "the sweep expands to no runs (empty grid axis, or all excluded)")
    for point in found:
        for key in point:
            if key in RESERVED:
                raise config.error("sweep", f"parameter '{key}' clashes with a built-in template variable")
    return found


def _format(value: Any) -> str:
    text = render.as_text(value)
    return UNSAFE_CHARS.sub("-", text)


def default_name(point: dict, varying: list[str]) -> str:
    keys = [k for k in varying if k in point] or list(point)
    return "_".join(f"{k}{_format(point[k])}" for k in keys) or "run"


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be a run directory, or None when it can."""
    if not name.strip():
        return "is empty"
    if "/" in name or "\0" in name:
        return "contains '/'"
    if name in (".", "..") or name.startswith(".."):
        return "is '.' or '..'"
    if name.startswith("-"):
        return "starts with '-'"
    if len(name) > 200 or "\n" in name:
        return "is too long or has a newline"
    return None


def expand(config, exp_dir) -> list[Run]:
    """All runs of the sweep, named and checked."""
    found = points(config)
    keys = list(dict.fromkeys(k for p in found for k in p))
    varying = [k for k in keys if len({repr(p.get(k, "\0missing")) for p in found}) > 1]
    template = config.get("run_name")
    where = config.where("run_name")
    runs: list[Run] = []
    seen: dict[str, int] = {}
    for index, point in enumerate(found):
        if template:
            context = {**point, "run_index": index, "exp_dir": str(exp_dir)}
            name = render.render(template, context, "plain", where).strip()
        else:
            name = default_name(point, varying)
        problem = check_name(name)
        if problem:
            raise InputError(f"run name {name!r} of point {index} {point} {problem}", *where)
        if name in seen:
            other = seen[name]
            raise InputError(f"points {other} {found[other]} and {index} {point} both get the name "
                             f"{name!r}; make run_name tell them apart", *where)
        seen[name] = index
        runs.append(Run(index, name, point))
    return runs


def check_retry_params(config, runs: list[Run]) -> None:
    """A retry rule's parameter templates (``monitor.retries.rules.<class>.params``) render for
    every run now, so a misspelt name fails the plan, not the sidecar's retry."""
    rules = ((config.get("monitor") or {}).get("retries") or {}).get("rules") or {}
    for cls, rule in rules.items():
        for key, template in (rule.get("params") or {}).items():
            where = config.where(f"monitor.retries.rules.{cls}.params.{key}")
            for run in runs:
                render.render(template, run.params, "plain", where)
