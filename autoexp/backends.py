"""Which :class:`~autoexp.scheduler.Scheduler` an experiment uses: Slurm, or the local backend.

Kept apart from the interface so that the implementations import the interface and nothing
imports back (the local backend and its runner never load the Slurm module, nor Slurm the local).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .model import State
from .scheduler import Scheduler
from .statefile import read


def get(name: str, exp_dir: Path) -> Scheduler:
    if name == "slurm":
        from .slurm import SlurmScheduler

        return SlurmScheduler(exp_dir)
    if name == "local":
        from .local import LocalScheduler

        return LocalScheduler(exp_dir)
    raise ValueError(f"unknown scheduler {name!r}")


def default_name() -> str:
    """Slurm when ``sbatch`` is on PATH, else the local backend (``AUTOEXP_SCHEDULER`` overrides)."""
    forced = os.environ.get("AUTOEXP_SCHEDULER")
    if forced:
        return forced
    return "slurm" if shutil.which("sbatch") else "local"


def of_experiment(exp_dir: Path, st: State | None = None) -> Scheduler:
    """The scheduler an experiment was launched with (as its state records)."""
    st = st or read(exp_dir)
    return get(st.get("scheduler", "slurm"), exp_dir)
