"""The sweep seen whole, for the Python API and the CLI: every metric value the sidecar kept
(history.py) and the report page (htmlreport.py) of an experiment found by name or directory."""

from __future__ import annotations

import os
from pathlib import Path

from . import statefile
from .experiment import find, status


def metrics(exp: str | os.PathLike | None = None, output: str | None = None) -> list[dict]:
    """Every recorded metric value, one plain row each: ``{"run", "attempt", "metric", "step",
    "value"}`` (``pandas.DataFrame(autoexp.metrics(exp))`` makes a frame of them)."""
    from . import history

    exp_dir = find(exp, output)
    runs = statefile.read_shared(exp_dir)["runs"]
    return list(history.rows(exp_dir, sorted(runs, key=lambda name: runs[name]["index"])))


def write_report(exp: str | os.PathLike | None = None, output: str | None = None, metric: str | None = None,
                 goal: str | None = None) -> Path:
    """Write the experiment's ``report.html`` now (the sidecar keeps it current too); its path."""
    from . import htmlreport

    exp_dir = find(exp, output)
    chosen = report_choice(exp_dir)
    return htmlreport.write(status(exp_dir), exp_dir, metric or chosen["metric"], goal or chosen["goal"])


def report_choice(exp_dir: Path) -> dict:
    """The config's ``report:`` (which metric ranks the runs, and whether lower or higher wins)."""
    from .config import Config

    chosen = Config.from_experiment(exp_dir).get("report") or {}
    return {"metric": chosen.get("metric"), "goal": chosen.get("goal") or "min"}
