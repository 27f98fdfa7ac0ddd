"""Faults an operator injects, on the real Slurm test cluster (issue 15): the sidecar killed right
after a retry's sbatch, a hung slurmctld during one, and ``max_parallel`` across retry arrays.

Faults are injected by an ``sbatch`` placed first on the sidecar's PATH: it runs the real sbatch,
and when a sidecar submits a retry array, kills that sidecar with SIGKILL right after sbatch
accepted it, or stops slurmctld (through a root helper tests/run.sh installs) just before.
Afterwards sacct is the judge: every allocation recorded, none beyond ``retries.max + 1`` per run,
never two of one run at once.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from conftest import autoexp as run_cli, read_state, wait_for, write_config

pytestmark = pytest.mark.usefixtures("slurm")

PAUSE_HELPER = "/usr/local/sbin/autoexp-test-pause-slurmctld"
REAL_SBATCH = shutil.which("sbatch") or "/usr/bin/sbatch"

SBATCH = f"""#!/bin/bash
# sbatch with a fault when a sidecar submits a retry array (FAULT=kill or FAULT=stop)
retry=0
case "$*" in *--array=*) case "$(tr '\\0' ' ' < /proc/$PPID/cmdline)" in *" sidecar "*) retry=1 ;; esac ;; esac
if [ $retry = 1 ] && [ "$FAULT" = stop ] && mkdir "$FAULT_DIR/stopped" 2>/dev/null; then
  sudo -n {PAUSE_HELPER} 25
fi
{REAL_SBATCH} "$@"; rc=$?
if [ $retry = 1 ] && [ $rc = 0 ] && [ "$FAULT" = kill ]; then
  echo "$*" >> "$FAULT_DIR/kills"
  kill -9 $PPID
fi
exit $rc
"""


def launch(workdir, cleanup, name: str, data: dict, fault: str | None = None) -> tuple[Path, dict]:
    """Launch with the fault's sbatch first on PATH (the sidecar job inherits it); the experiment
    directory and the environment to resume it with."""
    bin_dir = workdir / "fault-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAULT": fault or "", "FAULT_DIR": str(workdir)}
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    config = {"name": name, "output_dir": str(workdir / "exp"),
              "slurm": {"time": "00:05:00", "mem": "100M"}, "sidecar": {"mem": "200M", "time": "00:15:00"},
              **data}
    config["monitor"] = {"interval": 1, **data.get("monitor", {})}
    proc = run_cli("launch", write_config(workdir, config), cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "exp" / name
    cleanup(exp)
    return exp, env


def allocations(name: str, since: dt.datetime) -> list[dict]:
    """Every allocation of the experiment's run arrays, from sacct (tagged or not), in UTC."""
    proc = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-D", "--format=JobID,JobName,State,Start,End",
         f"--starttime={since:%Y-%m-%dT%H:%M:%S}", f"--user={getpass.getuser()}"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "TZ": "UTC", "SLURM_TIME_FORMAT": "%Y-%m-%dT%H:%M:%S"})
    rows = []
    for line in proc.stdout.splitlines():
        job_id, job_name, state, start, end = line.split("|")
        if job_name == f"autoexp-{name}" or job_name.startswith(f"autoexp-{name}."):
            rows.append({"job_id": job_id, "array": job_id.split("_")[0], "state": state.split()[0],
                         "start": start, "end": end})
    return rows


def cancel_leftovers(name: str) -> None:
    """scancel every job of the experiment, recorded or not (a test that fails may leave some)."""
    out = subprocess.run(["squeue", "--me", "-h", "-o", "%F %j"], capture_output=True, text=True, timeout=60).stdout
    ids = sorted({line.split()[0] for line in out.splitlines()
                  if len(line.split()) == 2 and f"-{name}" in line.split()[1]})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def keep_resuming(exp: Path, env: dict, timeout: float) -> dict:
    """What an operator does: `autoexp resume` whenever the sidecar is gone, until the end."""
    def done():
        st = read_state(exp)
        if st.get("done"):
            return st
        proc = run_cli("resume", exp, cwd=exp.parent, env=env)
        assert proc.returncode == 0, proc.stderr
        return None
    return wait_for(done, timeout=timeout, interval=2, what=f"{exp.name} to finish through resumes")


def assert_every_allocation_recorded_once(exp: Path, name: str, since: dt.datetime, most: int) -> list[dict]:
    """sacct's allocations are exactly the state's attempts; none beyond ``most`` per run; no two of
    one run at once."""
    st = read_state(exp)
    wait_for(lambda: all(r["state"] not in ("PENDING", "RUNNING") for r in allocations(name, since)),
             timeout=120, what="every allocation to end")
    rows = allocations(name, since)
    recorded = {a["job_id"]: a for a in st["arrays"]}
    assert {r["array"] for r in rows} == set(recorded), ("arrays sacct has that the state does not, or back",
                                                         sorted({r["array"] for r in rows}), sorted(recorded))
    attempts = {a["job_id"]: run for run, data in st["runs"].items() for a in data["attempts"]}
    per_run: dict[str, list[dict]] = {}
    for row in rows:
        assert row["job_id"] in attempts, f"allocation {row['job_id']} is no attempt of any run"
        per_run.setdefault(attempts[row["job_id"]], []).append(row)
    for run, found in per_run.items():
        assert len(found) <= most, (run, found)
        assert len(found) == len(st["runs"][run]["attempts"]), (run, found, st["runs"][run]["attempts"])
        found.sort(key=lambda r: r["start"])
        for before, after in zip(found, found[1:]):
            assert before["end"] <= after["start"], f"two copies of {run} at once: {before} {after}"
    return rows


def test_sidecar_killed_after_each_retry_sbatch_submits_nothing_twice(workdir, cleanup):
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    exp, env = launch(workdir, cleanup, "kill9retry", {
        "command": "echo attempt $AUTOEXP_ATTEMPT of {{ i }}; sleep 1; exit 3",
        "sweep": {"grid": {"i": [0, 1, 2]}}, "monitor": {"retries": {"max": 4, "on": ["FAILED"]}}},
        fault="kill")
    name = exp.name
    try:
        st = keep_resuming(exp, env, timeout=600)
        kills = (workdir / "kills").read_text().splitlines()
        assert len(kills) >= 4, kills  # every retry round's sidecar was killed right after its sbatch
        found = [e for e in st["history"] if e["kind"] == "SUBMIT_FOUND"]
        assert len(found) == len(kills), (len(found), kills)  # each lost answer found by the next sidecar
        assert_every_allocation_recorded_once(exp, name, since, most=5)
        for run in st["runs"].values():
            assert [a["attempt"] for a in run["attempts"]] == [1, 2, 3, 4, 5] and run["state"] == "FAILED"
    finally:
        cancel_leftovers(name)


def pause_helper_usable() -> bool:
    proc = subprocess.run(["sudo", "-n", "-l", PAUSE_HELPER, "1"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0


def test_slurmctld_stopped_during_a_retry_sbatch_is_unknown_not_refused(workdir, cleanup):
    if not pause_helper_usable():
        pytest.fail(f"sudo {PAUSE_HELPER} is not allowed for this user: run the tests through tests/run.sh")
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    exp, env = launch(workdir, cleanup, "hungctld", {
        "command": "echo attempt $AUTOEXP_ATTEMPT of {{ i }}; sleep 1; [ $AUTOEXP_ATTEMPT -ge 2 ] || exit 3",
        "sweep": {"grid": {"i": [0, 1]}}, "monitor": {"retries": {"max": 2, "on": ["FAILED"]}}},
        fault="stop")
    name = exp.name
    try:
        st = keep_resuming(exp, env, timeout=600)
        assert (workdir / "stopped").is_dir(), "the fault was never injected"
        rows = assert_every_allocation_recorded_once(exp, name, since, most=3)
        for run in st["runs"].values():
            assert run["state"] == "COMPLETED", run
        kinds = [e["kind"] for e in st["history"]]
        print("retry entries:", [k for k in kinds if k.startswith(("RETRY", "SUBMIT_"))], len(rows))
    finally:
        subprocess.run(["sudo", "-n", PAUSE_HELPER, "cont"], capture_output=True, timeout=30)
        cancel_leftovers(name)


def test_max_parallel_holds_across_retry_arrays(workdir, cleanup):
    """Runs 0-1 fail fast and are retried while 2-5 still run: squeue every second never shows more
    than max_parallel of the experiment's tasks running."""
    exp, _ = launch(workdir, cleanup, "cap", {
        "command": "if [ {{ i }} -lt 2 ] && [ $AUTOEXP_ATTEMPT = 1 ]; then exit 3; fi; sleep 6",
        "sweep": {"grid": {"i": list(range(6))}}, "max_parallel": 2,
        "monitor": {"retries": {"max": 1, "on": ["FAILED"]}}})
    name = exp.name
    most, samples, stop = [0], [], threading.Event()

    def sample():
        while not stop.is_set():
            out = subprocess.run(["squeue", "--me", "-h", "-t", "RUNNING", "-o", "%j %i"], capture_output=True,
                                 text=True, timeout=60).stdout
            running = [line for line in out.splitlines() if line.split()[0].startswith(f"autoexp-{name}")]
            samples.append(running)
            most[0] = max(most[0], len(running))
            stop.wait(1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        st = wait_for(lambda: (lambda s: s if s.get("done") else None)(read_state(exp)), timeout=400,
                      what="the capped experiment to finish")
    finally:
        stop.set()
        sampler.join(10)
        cancel_leftovers(name)
    assert len(st["arrays"]) >= 2, "no retry array was submitted"
    assert all(run["state"] == "COMPLETED" for run in st["runs"].values()), st["counts"]
    assert len(samples) > 10
    assert most[0] == 2, (most[0], [s for s in samples if len(s) > 2])
