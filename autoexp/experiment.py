"""The Python API: every CLI command is one call here, returning plain data.

    cfg = autoexp.load_config("sweep.yaml", ["max_parallel=2"])
    result = autoexp.launch(cfg)            # plan + submit the array(s) and the sidecar
    autoexp.status(result.exp_dir)          # what `autoexp status --json` prints
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from . import actions, config as configmod, plan as planmod, scheduler as schedmod, state as statefile
from .errors import InputError


@dataclass
class LaunchResult:
    exp_dir: Path
    scheduler: str
    arrays: list[str] = field(default_factory=list)
    sidecar: str | None = None
    dry_run: bool = False
    text: str = ""


def load_config(path: str | os.PathLike, overrides=(), site: str | None = None) -> configmod.Config:
    """Read and validate a config file with ``KEY=VALUE`` overrides (raises InputError)."""
    return configmod.load(path, list(overrides), default_site=site)


def _scheduler_for(config: configmod.Config, scheduler: str | None) -> schedmod.Scheduler:
    return schedmod.get(scheduler or schedmod.default_name(), config.exp_dir)


def plan(config: configmod.Config, scheduler: str | None = None, write: bool = True) -> planmod.Plan:
    """Render the experiment; with ``write`` create its directory. Submits nothing."""
    sched = _scheduler_for(config, scheduler)
    built = planmod.build(config, sched.name, sched.max_array_size())
    if write:
        built.write()
    return built


def launch(config: configmod.Config, dry_run: bool = False, scheduler: str | None = None) -> LaunchResult:
    """Plan, then submit every array and the sidecar; all or nothing."""
    sched = _scheduler_for(config, scheduler)
    built = planmod.build(config, sched.name, sched.max_array_size())
    result = LaunchResult(config.exp_dir, sched.name, dry_run=dry_run, text=built.submissions_text())
    if dry_run:
        return result
    exp_dir = built.write()
    # The lock is held across the submissions: the sidecar's first poll waits until every id is known.
    with statefile.locked(exp_dir) as st:
        result.arrays = actions.submit_runs(exp_dir, st, sched, list(st["runs"]), "launch")
        try:
            result.sidecar = actions.submit_sidecar(exp_dir, st, sched)
        except BaseException:
            sched.cancel(result.arrays)
            raise
    return result


def output_dir(default: str | None = None) -> Path:
    return Path(default or os.environ.get("AUTOEXP_OUTPUT_DIR") or "experiments")


def find(exp: str | os.PathLike | None = None, output: str | None = None) -> Path:
    """An experiment directory from a path, a name under the output directory, or the newest one."""
    base = output_dir(output)
    if exp is None:
        found = [p.parent for p in base.glob(f"*/{statefile.STATE}")]
        if not found:
            raise InputError(f"no experiments under {base.absolute()} (give EXP or --output-dir)")
        return max(found, key=lambda p: (p / statefile.STATE).stat().st_mtime).absolute()
    candidate = Path(exp).expanduser()
    for path in (candidate, base / candidate):
        if (path / statefile.STATE).is_file():
            return path.absolute()
    raise InputError(f"no experiment {str(exp)!r} (looked for {candidate}/state.json and "
                     f"{base / candidate}/state.json)", "EXP")


def scheduler_of(exp_dir: Path, st: dict | None = None) -> schedmod.Scheduler:
    st = st or statefile.read(exp_dir)
    return schedmod.get(st.get("scheduler", "slurm"), exp_dir)
