"""Retries that change what failed (``monitor.retries.rules``): per failure class, what the next
attempt of a run gets — more memory, more time (at most the partition's MaxTime), changed
parameters, the failed node excluded — recorded on the attempt with why.

An attempt's failure class is its Slurm state, except that a FAILED attempt whose log ends with an
out-of-memory message (CUDA, HIP, PyTorch, JAX, Python) is OUT_OF_MEMORY: a GPU running out of
memory ends as FAILED in Slurm, only the log tells.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from .. import render, statefile, sweep
from ..config import Config
from ..durations import slurm_time_seconds
from ..jobstates import FAILED
from ..model import Attempt, Run
from ..model import Plan as PlanRecord
from ..scheduler import Scheduler
from . import logwatch

OOM_LOG = re.compile(
    rb"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError|HIP out of memory|hipErrorOutOfMemory"
    rb"|CUDA_ERROR_OUT_OF_MEMORY|RESOURCE_EXHAUSTED: Out of memory|\bMemoryError\b")
LOG_TAIL = 256 << 10  # bytes at the end of a failed attempt's log searched for an out-of-memory message
RESOURCES = ("mem", "time", "exclude", "params")  # what a rule changes, carried on to later attempts
MEM_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)B?$", re.I)
MEM_UNITS = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}  # in MiB; Slurm's default unit is M


def failure_class(attempt: Attempt) -> str:
    """How an ended attempt failed (its state, or OUT_OF_MEMORY from its log), recorded on it."""
    if "failure" in attempt:
        return attempt["failure"]
    state = attempt["state"]
    if state not in FAILED:
        return state
    if state == "FAILED" and OOM_LOG.search(logwatch.tail(attempt["log"], LOG_TAIL)):
        state = "OUT_OF_MEMORY"
    attempt["failure"] = state
    return state


def next_given(exp_dir: Path, run: Run, cls: str, rule: dict[str, Any], base: dict[str, str],
               sched: Scheduler) -> dict[str, Any]:
    """What the next attempt of ``run`` gets after failing as ``cls``: the previous attempt's
    changes carried on, then ``rule`` applied; {} when nothing changes."""
    previous = run["attempts"][-1]
    given = {k: v for k, v in (previous.get("given") or {}).items() if k in RESOURCES}
    changed = []
    if rule.get("mem"):
        mem = given.get("mem") or base.get("mem")
        match = MEM_RE.match(str(mem or ""))
        if match:
            mib = float(match.group(1)) * MEM_UNITS[match.group(2).upper()]
            given["mem"] = f"{math.ceil(mib * rule['mem'])}M"
            changed.append(f"mem {mem} x {rule['mem']:g}")
    if rule.get("time"):
        time = given.get("time") or base.get("time")
        seconds = slurm_time_seconds(time)
        if seconds:
            cap = sched.max_time(base.get("partition"))
            longer = min(seconds * rule["time"], cap) if cap else seconds * rule["time"]
            given["time"] = slurm_time(longer)
            changed.append(f"time {time} x {rule['time']:g}" + (" (the partition's MaxTime)" if longer == cap else ""))
    if rule.get("exclude_node") and previous.get("nodes"):
        nodes = [n for n in str(given.get("exclude") or "").split(",") if n]
        given["exclude"] = ",".join(dict.fromkeys([*nodes, str(previous["nodes"])]))
        changed.append(f"without {previous['nodes']}")
    if rule.get("params"):
        params = {**run["params"], **(given.get("params") or {})}
        new = {key: _value(render.render(template, params, "plain", ("monitor.retries.rules", f"{cls}.params.{key}")))
               for key, template in rule["params"].items()}
        given["params"] = {**(given.get("params") or {}), **new}
        changed += [f"{key} {params.get(key)} -> {value}" for key, value in new.items()]
    if not given:
        return {}
    given["why"] = f"{cls}: " + ("; ".join(changed) if changed else "as the attempt before")
    return given


def write_task(exp_dir: Path, st_plan: PlanRecord, index: int, name: str, attempt: int,
               params: dict[str, Any]) -> None:
    """Render the run's command, env and setup with changed parameters for one attempt: the array
    script sources retries/<index>.<attempt>.sh after tasks.sh when it exists. (The planner, and
    Jinja with it, is imported only here: a sidecar that never retries with new parameters
    does without them.)"""
    from .. import plan
    config = Config.from_experiment(exp_dir)
    config.source = str(Path(st_plan.get("config_dir") or exp_dir) / "config.yaml")
    task = plan.render_task(config, sweep.Run(index, name, params), exp_dir)
    text = plan.environment().get_template(plan.TASKS_TEMPLATE).render(name=config.name, tasks=[task])
    path = exp_dir / "retries" / f"{index}.{attempt}.sh"
    path.parent.mkdir(exist_ok=True)
    statefile.atomic_write(path, text)


def slurm_time(seconds: float) -> str:
    """Seconds as a Slurm time limit, D-HH:MM:SS (rounded up to a whole minute)."""
    minutes = math.ceil(seconds / 60)
    days, minutes = divmod(minutes, 24 * 60)
    return f"{days}-{minutes // 60:02d}:{minutes % 60:02d}:00"


def _value(text: str) -> Any:
    """A rendered parameter read back as YAML would (``"16"`` -> 16)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
