"""``autoexp.current_run()``: what a task knows about itself, asked from inside the task.

The array script exports ``AUTOEXP_EXP_DIR``, ``AUTOEXP_RUN_INDEX``, ``AUTOEXP_RUN_NAME``,
``AUTOEXP_RUN_DIR`` and ``AUTOEXP_ATTEMPT``; the parameters, typed as the config wrote them, come
from the experiment's ``runs.json``. Only the standard library is imported here, so a training
script pays nothing for asking.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import AutoexpError

VARIABLES = ("AUTOEXP_EXP_DIR", "AUTOEXP_RUN_INDEX", "AUTOEXP_RUN_NAME", "AUTOEXP_RUN_DIR", "AUTOEXP_ATTEMPT")


class NotInRunError(AutoexpError, RuntimeError):
    """``current_run()`` was called outside a task that autoexp started."""


@dataclass(frozen=True)
class CurrentRun:
    name: str
    index: int
    params: dict[str, Any]
    run_dir: Path
    exp_dir: Path
    attempt: int  # 1 for the first allocation; a retry or a requeue adds one
    job_id: str | None = None  # "<array job>_<task>" under Slurm


def current_run() -> CurrentRun:
    """The run this process belongs to; :class:`NotInRunError` outside an autoexp task."""
    env = os.environ
    missing = [name for name in VARIABLES if not env.get(name)]
    if missing:
        raise NotInRunError(f"autoexp.current_run() works only inside a task autoexp started: "
                            f"{', '.join(missing)} not set")
    exp_dir, index = Path(env["AUTOEXP_EXP_DIR"]), int(env["AUTOEXP_RUN_INDEX"])
    try:
        runs = json.loads((exp_dir / "runs.json").read_text())
    except (OSError, ValueError) as err:
        raise AutoexpError(f"{exp_dir / 'runs.json'}: cannot read the runs: {err}") from None
    run = next((r for r in runs if r["index"] == index), None)
    if run is None:
        raise AutoexpError(f"{exp_dir / 'runs.json'}: no run has index {index} (AUTOEXP_RUN_INDEX)")
    task = env.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{task}" if task and env.get("SLURM_ARRAY_JOB_ID") \
        else env.get("SLURM_JOB_ID")
    return CurrentRun(name=env["AUTOEXP_RUN_NAME"], index=index, params=run["params"],
                      run_dir=Path(env["AUTOEXP_RUN_DIR"]), exp_dir=exp_dir,
                      attempt=int(env["AUTOEXP_ATTEMPT"]), job_id=job_id)
