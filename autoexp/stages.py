"""Multi-stage experiments: the units a staged config expands to, before anything is rendered.

A *unit* is one task of one stage for one sweep point (times the stage's own ``axis``: run × task).
Units are the records of ``state.json``'s ``runs``, so the sidecar, retries, cancel and status
treat them all alike; each knows its ``stage``, its ``point`` (the sweep run's name, whose
directory ``runs/<point>/`` its stages share) and the units it waits for (``after``).

Index layout, which Slurm's ``aftercorr`` needs: the optional prepare step is index 0; then each
stage (and each value of its axis) takes a block of one index per sweep point, and its array's task
id is the point's index, so task *i* of ``eval`` follows task *i* of ``train``. A stage started per
log event (``on:``) has a block of tasks.sh cases (one per point, not units) and, after everything,
a block of MaxArraySize indices for the units the sidecar makes as the events appear.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import render, sweep

PREPARE = "prepare"
STAGE_KEYS = ("slurm", "env")  # merged key by key over the top-level mapping of the same name


@dataclass
class Unit:
    index: int
    name: str
    params: dict[str, Any]
    stage: str
    point: str
    dir: str  # relative to the experiment directory
    after: list[str] = field(default_factory=list)
    axis: dict[str, Any] = field(default_factory=dict)  # the stage's own axis values (run × task)

    def to_json(self, exp_dir: Path) -> dict:
        return {"index": self.index, "name": self.name, "params": self.params, "dir": str(exp_dir / self.dir),
                "stage": self.stage, "point": self.point, "after": self.after, "axis": self.axis}


@dataclass
class Block:
    """The indices of one stage (one axis value): ``offset + point index``; its array's tasks."""

    stage: str
    offset: int
    tasks: list[int]
    suffix: str  # the script's name: <stage><suffix>.sbatch
    trigger: dict[str, Any] | None = None  # a stage started per event: see :func:`trigger_of`


def settings(data: dict, stage: str) -> dict:
    """A stage's own config: its keys over the top-level ones (``slurm``, ``env`` merged)."""
    if stage == PREPARE:
        own = data["prepare"]
    else:
        own = data["stages"][stage]
    out = {key: data.get(key) for key in ("slurm", "env", "setup", "monitor")}
    for key, value in own.items():
        out[key] = {**(out.get(key) or {}), **value} if key in STAGE_KEYS or key == "monitor" else value
    if stage == PREPARE:
        out["monitor"] = {**(data.get("monitor") or {}), "events": [], "metrics": {}}
    return out


def _matches(point: dict, rules: list[dict]) -> bool:
    return any(all(k in point and point[k] == v for k, v in rule.items()) for rule in rules)


def takes(stage: dict, point: dict) -> bool:
    """Whether a sweep point runs this stage (``only`` and ``skip`` name points by their keys)."""
    if stage.get("only") and not _matches(point, stage["only"]):
        return False
    return not _matches(point, stage.get("skip") or [])


def event_groups(config, stage: str, on: dict) -> list[str]:
    """The named groups of the event that starts ``stage`` (checked against the config)."""
    events = {e["name"]: e for e in settings(config.data, on["stage"])["monitor"].get("events") or []}
    if on["event"] not in events:
        raise config.error(f"stages.{stage}.on.event", f"stage {on['stage']!r} has no monitor event "
                           f"{on['event']!r} (its events: {', '.join(events) or 'none'})")
    groups = list(re.compile(events[on["event"]]["pattern"]).groupindex)
    if on.get("exists") and on["exists"] not in groups:
        raise config.error(f"stages.{stage}.on.exists", f"the pattern of {on['event']!r} has no group "
                           f"{on['exists']!r} (its groups: {', '.join(groups) or 'none'})")
    return groups


def event_variable(group: str) -> str:
    """The environment variable a triggered task finds an event's group in."""
    return f"AUTOEXP_EVENT_{group.upper()}"


def expand(config, exp_dir: Path, max_array_size: int) -> tuple[list[sweep.Run], list[Unit], list[Block],
                                                                 list[Unit]]:
    """The sweep's runs, every unit, the blocks (one array each) in submission order, and the
    cases of stages started per event: rendered in tasks.sh, their units made by the sidecar."""
    runs = sweep.expand(config, exp_dir)
    data = config.data
    units: list[Unit] = []
    cases: list[Unit] = []
    blocks: list[Block] = []
    triggered: list[tuple[str, dict]] = []
    offset = 0
    if data.get("prepare"):
        units.append(Unit(0, PREPARE, {}, PREPARE, PREPARE, PREPARE))
        blocks.append(Block(PREPARE, 0, [0], ""))
        offset = 1
    first: dict[str, dict[int, str]] = {}  # stage -> point index -> unit name (stages without axis)
    for stage, spec in data["stages"].items():
        if spec.get("on"):
            groups = event_groups(config, stage, spec["on"])
            for run in runs:
                if takes(spec, run.params):
                    cases.append(Unit(offset + run.index, f"{run.name}+{stage}", dict(run.params), stage, run.name,
                                      str(Path("runs", run.name))))
            triggered.append((stage, {**spec["on"], "groups": groups, "cases": offset}))
            offset += len(runs)
            continue
        axis = spec.get("axis") or {}
        combos = [dict(zip(axis, c)) for c in itertools.product(*axis.values())] if axis else [{}]
        for k, combo in enumerate(combos):
            tasks = []
            for run in runs:
                if not takes(spec, run.params):
                    continue
                clash = sorted(set(combo) & set(run.params))
                if clash:
                    raise config.error(f"stages.{stage}.axis", f"axis key '{clash[0]}' is a sweep parameter too")
                extra = "".join(f"+{key}={sweep.UNSAFE_CHARS.sub('-', render.as_text(v))}"
                                for key, v in combo.items())
                name = f"{run.name}+{stage}{extra}"
                after = [PREPARE] if data.get("prepare") else []
                if spec.get("after") and run.index in first.get(spec["after"], {}):
                    after.append(first[spec["after"]][run.index])
                units.append(Unit(offset + run.index, name, {**run.params, **combo}, stage, run.name,
                                  str(Path("runs", run.name)), after, combo))
                if not axis:
                    first.setdefault(stage, {})[run.index] = name
                tasks.append(run.index)
            if not tasks:
                raise config.error(f"stages.{stage}", "no sweep point runs this stage (check only/skip)")
            blocks.append(Block(stage, offset, tasks, f"_{k}" if len(combos) > 1 else ""))
            offset += len(runs)
    for stage, trigger in triggered:  # unit k of such a stage is task k of its arrays
        blocks.append(Block(stage, offset, [], "", trigger))
        offset += max_array_size
    return runs, units, blocks, cases
