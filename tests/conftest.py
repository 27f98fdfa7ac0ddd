"""Shared fixtures. Tests that use the ``slurm`` fixture run against the real test cluster
(cluster/setup.sh) and are marked ``slurm``.

Without a reachable cluster they skip, except when ``AUTOEXP_REQUIRE_SLURM=1`` (set by .ci/run):
then a missing cluster fails the run instead of hiding the Slurm tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def slurm_problem() -> str | None:
    """Why the Slurm cluster cannot be used, or None when it can."""
    if not shutil.which("sbatch"):
        return "sbatch is not on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer"
    if proc.returncode != 0:
        return f"sinfo failed: {proc.stderr.strip()}"
    if not any(s.strip().startswith(("idle", "mix", "alloc")) for s in proc.stdout.splitlines()):
        return f"no usable node (sinfo says {proc.stdout.split()})"
    return None


@pytest.fixture(scope="session")
def slurm():
    """Use in every test that talks to Slurm; makes sure the cluster answers (a controller busy for
    a moment is waited for, up to a minute, when the cluster is required)."""
    problem = slurm_problem()
    deadline = time.monotonic() + 60
    while problem and shutil.which("sbatch") and os.environ.get("AUTOEXP_REQUIRE_SLURM") == "1" \
            and time.monotonic() < deadline:
        time.sleep(5)
        problem = slurm_problem()
    if problem:
        if os.environ.get("AUTOEXP_REQUIRE_SLURM") == "1":
            pytest.fail(f"the Slurm test cluster is required but unusable: {problem}", pytrace=False)
        pytest.skip(f"no Slurm test cluster: {problem} (run cluster/setup.sh)")
    return True


@pytest.hookimpl(tryfirst=True)  # before -m selects
def pytest_collection_modifyitems(items):
    """A test that uses the ``slurm`` fixture is marked ``slurm``: ``pytest -m "not slurm"`` runs
    the rest (parsers, templates, the state model, the local backend) without a cluster, and
    ``-m "slurm and core"`` the cluster-facing core (tests/run-24.sh)."""
    for item in items:
        if "slurm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slurm)


def autoexp(*args, cwd=None, env=None, check=False, timeout=300) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a fresh interpreter."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "autoexp", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"autoexp {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def write_config(directory: Path, data: dict, name: str = "config.yaml") -> Path:
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_state(exp_dir: Path) -> dict:
    return json.loads((Path(exp_dir) / "state.json").read_text())


def wait_for(predicate, timeout: float = 120, interval: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def sacct_rows(job_ids, fields="JobID,State,JobName") -> list[list[str]]:
    """Allocation rows of these jobs (array tasks expanded), straight from sacct."""
    proc = subprocess.run(["sacct", "-X", "-n", "-P", "--duplicates", f"--format={fields}",
                           f"--jobs={','.join(map(str, job_ids))}"],
                          capture_output=True, text=True, timeout=60, check=True)
    return [line.split("|") for line in proc.stdout.splitlines() if line]


def wait_state_done(exp_dir: Path, timeout: float = 300) -> dict:
    return wait_for(lambda: (lambda s: s if s.get("done") else None)(read_state(exp_dir)),
                    timeout=timeout, what=f"{exp_dir} to be done")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh directory to run in, also the output directory's parent."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cleanup():
    """Register experiment directories; their Slurm jobs are cancelled when the test ends."""
    exp_dirs: list[Path] = []
    yield exp_dirs.append
    ids = []
    for exp_dir in exp_dirs:
        try:
            state = read_state(exp_dir)
        except (OSError, ValueError):
            continue
        if state.get("scheduler", "slurm") != "slurm":
            continue
        ids += [a["job_id"] for a in state.get("arrays", [])]
        ids += [state.get("sidecar", {}).get("job_id")] if state.get("sidecar", {}).get("job_id") else []
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
