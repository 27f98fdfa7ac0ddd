"""A poll costs what changed, on the real cluster: a recording ``sacct`` shim on the sidecar's PATH
shows each query asks only for the arrays with a task not yet seen ended, from shortly before the
last poll; while nothing changes, state.json is left alone and the sidecar stays alive (the
heartbeat file); killed with SIGKILL mid-way and resumed, it still records every transition.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import autoexp as run_cli, read_state, wait_for
from test_sidecar import changes, launch, resume_to_the_end, sacct_latest

pytestmark = [pytest.mark.usefixtures("slurm"), pytest.mark.core]

RECORDING_SACCT = """#!/bin/bash
# every call: its --jobs and --starttime, and how many rows it printed
out=$({real} "$@"); rc=$?
jobs=""; start=""
for arg in "$@"; do case $arg in --jobs=*) jobs=${{arg#--jobs=}} ;; --starttime=*) start=${{arg#--starttime=}} ;; esac; done
printf '%s %s %s\\n' "$jobs" "$start" "$(printf '%s' "$out" | grep -c .)" >> {log}
[ -n "$out" ] && printf '%s\\n' "$out"
exit $rc
"""


def test_a_poll_asks_only_for_what_can_still_change_and_a_killed_sidecar_catches_up(workdir, cleanup):
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    calls = bin_dir / "calls"
    (bin_dir / "sacct").write_text(RECORDING_SACCT.format(real=shutil.which("sacct"), log=calls))
    (bin_dir / "sacct").chmod(0o755)
    points = [{"kind": "nodefail", "i": 0}, {"kind": "fail", "i": 0}] + [{"kind": "true", "i": i} for i in range(5)]
    exp = launch(workdir, cleanup, {"name": "window", "sweep": {"list": points}, "run_name": "{{ kind }}{{ i }}",
                                    "monitor": {"interval": 1, "retries": {"max": 1, "on": ["FAILED"]}}},
                 env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    st = wait_for(lambda: (lambda s: s if len(s["arrays"]) == 2 and s["runs"]["fail0"]["state"] == "FAILED"
                           and s["runs"]["nodefail0"]["state"] == "RUNNING" else None)(read_state(exp)),
                  timeout=120, what="the retry of fail0 to fail too while nodefail0 runs (120 s)")
    first, retry = st["arrays"][0]["job_id"], st["arrays"][1]["job_id"]

    def asked():
        return [line.split() for line in calls.read_text().splitlines()]
    wait_for(lambda: retry not in asked()[-1][0].split(","), timeout=90,
             what="the retry's array, ended, to leave the query")

    def quiet_and_alive():  # nothing changes while nodefail0 runs: no state write, and still alive
        age = time.time() - (exp / "state.json").stat().st_mtime
        doc = json.loads(run_cli("status", exp, "--json", check=True).stdout)
        return age > 12 and doc["health"]["sidecar"] == "alive"
    wait_for(quiet_and_alive, timeout=60, what="state.json untouched for 12 s, the sidecar alive")
    calls_made = asked()
    jobs, start, rows = calls_made[-1][0].split(","), calls_made[-1][1], int(calls_made[-1][2])
    assert first in jobs and retry not in jobs  # the retry's array has ended: no longer asked about
    assert start > calls_made[0][1]  # the window moved on from the experiment's beginning
    ended = sum(1 for run in read_state(exp)["runs"].values() for a in run["attempts"]
                if a["job_id"].startswith(f"{first}_") and (a.get("completed") or "") >= f"{start}Z")
    assert rows <= 2 + ended  # nodefail0, the sidecar, and only the tasks that ended since the window began

    lease = read_state(exp)["sidecar"]["job_id"]
    subprocess.run(["scancel", "--signal=KILL", "--full", lease], check=True, timeout=60)
    wait_for(lambda: sacct_latest([lease]).get(lease, {}).get("state") not in (None, "RUNNING"), timeout=60,
             what="the killed sidecar to end")
    wait_for(lambda: sacct_latest([first]).get(f"{first}_0", {}).get("state") == "COMPLETED", timeout=180,
             what="nodefail0 to end while no sidecar watches")

    st = resume_to_the_end(exp, workdir)
    assert changes(st, "nodefail0") == [("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]  # caught up, once
    assert all(changes(st, f"true{i}")[-1] == ("RUNNING", "COMPLETED") for i in range(5))
    assert [a["state"] for a in st["runs"]["fail0"]["attempts"]] == ["FAILED", "FAILED"]
