"""cancel, retry, resume, logs and status against a live experiment on the real Slurm cluster.

Each test launches a small experiment with a one- or two-second sidecar interval and drives it
with the CLI, as a user would; the cleanup fixture cancels whatever is left of its jobs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import autoexp
from conftest import autoexp as run_cli, read_state, sacct_rows, wait_for, wait_state_done, write_config

pytestmark = [pytest.mark.usefixtures("slurm"), pytest.mark.core]

INTERVAL = 2


def launch(workdir: Path, cleanup, name: str, command: str, runs: int, interval: float = INTERVAL,
           sidecar: dict | None = None, **monitor) -> Path:
    """Launch ``runs`` runs ``r0``..``rN`` of ``command`` (which sees ``k``, the run index)."""
    path = write_config(workdir, {
        "name": name, "output_dir": str(workdir / "experiments"), "command": command,
        "run_name": "r{{ k }}", "sweep": {"grid": {"k": list(range(runs))}}, "sidecar": sidecar or {},
        "slurm": {"time": "00:05:00"}, "monitor": {"interval": interval, **monitor}}, name=f"{name}.yaml")
    exp = workdir / "experiments" / name
    cleanup(exp)
    run_cli("launch", path, cwd=workdir, check=True)
    return exp


def status(exp: Path) -> dict:
    return json.loads(run_cli("status", exp, "--json", check=True).stdout)


def wait_runs(exp: Path, want: dict[str, str], timeout: float = 120) -> dict:
    """Wait until the state shows each run of ``want`` in its state."""
    def reached():
        st = read_state(exp)
        return st if all(st["runs"][n]["state"] == s for n, s in want.items()) else None
    return wait_for(reached, timeout=timeout, what=f"runs to reach {want}")


def events(st: dict, kind: str) -> list[dict]:
    return [e for e in st["history"] if e["kind"] == kind]


def test_cancel_two_runs_then_retry_failed_leaves_the_cancelled_alone(workdir, cleanup):
    # even a rule that retries CANCELLED runs leaves those the user cancelled alone
    exp = launch(workdir, cleanup, "cancelretry", "if [ {{ k }} -ge 4 ]; then exit 3; fi; sleep 300", 6,
                 retries={"max": 2, "on": ["CANCELLED"]})
    wait_runs(exp, {"r0": "RUNNING", "r1": "RUNNING", "r4": "FAILED", "r5": "FAILED"})
    proc = run_cli("cancel", exp, "r0", "r1", check=True)
    assert proc.stdout.startswith("cancelled r0, r1")
    st = read_state(exp)
    assert {n: st["runs"][n]["state"] for n in ("r0", "r1", "r2")} == \
        {"r0": "CANCELLED", "r1": "CANCELLED", "r2": "RUNNING"}
    assert sorted(e["subject"] for e in events(st, "CANCEL")) == ["r0", "r1"]
    array = st["arrays"][0]["job_id"]
    wait_for(lambda: {r[0]: r[1] for r in sacct_rows([array])}.get(f"{array}_0", "").startswith("CANCELLED"),
             timeout=60, what="sacct to show r0 cancelled")

    proc = run_cli("retry", exp, "--failed", check=True)
    st = read_state(exp)
    assert len(st["arrays"]) == 2 and st["arrays"][1]["tasks"] == "4-5"
    assert proc.stdout.startswith(f"resubmitted r4, r5 as array job(s) {st['arrays'][1]['job_id']}")
    assert [len(st["runs"][f"r{k}"]["attempts"]) for k in range(6)] == [1, 1, 1, 1, 2, 2]
    # the sidecar keeps watching: the retried runs fail again, the cancelled ones stay cancelled
    st = wait_for(lambda: (lambda s: s if all(s["runs"][n]["attempts"][-1]["state"] == "FAILED"
                                              for n in ("r4", "r5")) else None)(read_state(exp)),
                  timeout=120, what="the second attempts to fail")
    assert [st["runs"][n]["state"] for n in ("r0", "r1", "r2", "r3")] == ["CANCELLED", "CANCELLED", "RUNNING",
                                                                          "RUNNING"]
    assert [len(st["runs"][n]["attempts"]) for n in ("r0", "r1")] == [1, 1]
    run_cli("cancel", exp, check=True)


def test_cancel_the_whole_experiment_stops_arrays_and_sidecar(workdir, cleanup):
    exp = launch(workdir, cleanup, "cancelall", "sleep 300", 3)
    wait_runs(exp, {"r0": "RUNNING"})
    before = read_state(exp)
    sidecar, array = before["sidecar"]["job_id"], before["arrays"][0]["job_id"]
    proc = run_cli("cancel", exp, check=True)
    assert f"cancelled the sidecar (job {sidecar})" in proc.stdout
    st = read_state(exp)
    assert st["done"] and st["counts"] == {"CANCELLED": 3}
    assert sorted(e["subject"] for e in events(st, "CANCEL")) == ["r0", "r1", "r2"]
    assert events(st, "ALL_COMPLETE")
    log = (exp / "events.log").read_text()
    assert "CANCEL: r0\n" in log and "ALL_COMPLETE: Monitoring finished\nReason: cancelled by the user\n" in log
    rows = wait_for(lambda: (lambda r: r if len(r) >= 4 and all(s.startswith("CANCELLED") for _, s in r) else None)(
        sacct_rows([array, sidecar], fields="JobID,State")), timeout=60, what="sacct to show everything cancelled")
    assert {r[0] for r in rows} >= {f"{array}_0", f"{array}_1", f"{array}_2", sidecar}
    assert status(exp)["health"]["sidecar"] == "finished"
    time.sleep(2 * INTERVAL)  # a sidecar stopping on SIGTERM must not have changed any of it
    assert read_state(exp)["counts"] == {"CANCELLED": 3}

    unchanged = (exp / "state.json").read_bytes()
    for args in (("cancel", exp), ("cancel", exp, "r1")):
        proc = run_cli(*args)
        assert proc.returncode == 2 and "already finished" in proc.stderr and proc.stderr.count("\n") == 1
    assert (exp / "state.json").read_bytes() == unchanged


def test_retry_by_name_is_a_new_attempt_with_its_own_log_and_a_sidecar(workdir, cleanup):
    exp = launch(workdir, cleanup, "retryname", 'echo "attempt $AUTOEXP_ATTEMPT of {{ k }}"; sleep 300', 2)
    wait_runs(exp, {"r0": "RUNNING", "r1": "RUNNING"})
    wait_for(lambda: "attempt 1 of 0" in run_cli("logs", exp, "r0").stdout, timeout=60, what="r0's log")
    run_cli("cancel", exp, check=True)  # the sidecar goes too: retry must start a new one
    old_sidecar = read_state(exp)["sidecar"]["job_id"]
    proc = run_cli("retry", exp, "r0", check=True)
    st = read_state(exp)
    assert "no sidecar was alive: submitted sidecar job" in proc.stdout
    assert st["sidecar"]["job_id"] != old_sidecar and not st["done"]
    assert st["runs"]["r1"]["state"] == "CANCELLED" and len(st["runs"]["r1"]["attempts"]) == 1
    attempts = st["runs"]["r0"]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2] and attempts[0]["log"] != attempts[1]["log"]
    wait_runs(exp, {"r0": "RUNNING"})
    wait_for(lambda: "attempt 2 of 0" in run_cli("logs", exp, "r0").stdout, timeout=60, what="attempt 2's log")
    assert "attempt 1 of 0" in run_cli("logs", exp, "r0", "--attempt", "1", check=True).stdout
    assert "attempt 2" not in run_cli("logs", exp, "r0", "--attempt", "1", check=True).stdout
    wait_for(lambda: status(exp)["health"]["sidecar"] == "alive", timeout=60, what="the new sidecar to beat")
    proc = run_cli("logs", exp, "r0", "--attempt", "3")
    assert proc.returncode == 2 and "has no attempt 3 (it has 1 to 2)" in proc.stderr
    proc = run_cli("retry", exp, "r0")
    assert proc.returncode == 2 and "'r0' is RUNNING" in proc.stderr
    run_cli("cancel", exp, check=True)


def test_logs_follow_prints_as_the_log_grows_and_stops_when_the_run_ends(workdir, cleanup):
    exp = launch(workdir, cleanup, "follow",
                 'for i in 1 2 3 4 5 6; do echo "line $i of {{ k }}"; sleep 1; done', 1, interval=1)
    proc = subprocess.Popen([sys.executable, "-m", "autoexp", "logs", str(exp), "r0", "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = ""
    while not first.startswith("line "):  # after the task's own header lines
        first = proc.stdout.readline()
    assert first == "line 1 of 0\n"  # streamed while the run is still going
    assert read_state(exp)["runs"]["r0"]["state"] in ("PENDING", "RUNNING")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert [line for line in (first + out).splitlines() if line.startswith("line ")] == \
        [f"line {i} of 0" for i in range(1, 7)]
    assert read_state(exp)["runs"]["r0"]["state"] == "COMPLETED"


def test_stale_sidecar_is_reported_and_resume_brings_it_back(workdir, cleanup):
    exp = launch(workdir, cleanup, "resume", "sleep {{ 25 + k }}", 2)
    wait_for(lambda: status(exp)["health"]["sidecar"] == "alive", timeout=60, what="the sidecar's heartbeat")
    proc = run_cli("resume", exp, check=True)
    assert "is alive" in proc.stdout and "nothing to do" in proc.stdout
    old = read_state(exp)["sidecar"]["job_id"]
    subprocess.run(["scancel", old], check=True, timeout=60)
    killed = time.monotonic()
    doc = wait_for(lambda: (lambda d: d if d["health"]["sidecar"] == "stale" else None)(status(exp)),
                   timeout=60, interval=0.5, what="status to say stale")
    assert time.monotonic() - killed <= 3 * INTERVAL + 3  # three intervals, plus one poll's time
    assert doc["health"]["fix"] == f"autoexp resume {exp}"
    assert f"Fix: autoexp resume {exp}" in run_cli("status", exp, check=True).stdout
    proc = run_cli("resume", exp, check=True)
    new = read_state(exp)["sidecar"]["job_id"]
    assert new != old and proc.stdout.startswith(f"submitted sidecar job {new}")
    wait_for(lambda: status(exp)["health"]["sidecar"] in ("alive", "finished"), timeout=60,
             what="the new sidecar to beat")
    final = wait_state_done(exp, timeout=180)
    assert final["counts"] == {"COMPLETED": 2}
    assert all(len(run["attempts"]) == 1 for run in final["runs"].values())
    assert status(exp)["health"]["sidecar"] == "finished"


def test_resume_leaves_a_sidecar_that_is_still_queued(workdir, cleanup):
    exp = launch(workdir, cleanup, "queued", "true", 1, sidecar={"hold": True})  # it never starts
    sidecar = read_state(exp)["sidecar"]["job_id"]
    doc = wait_for(lambda: (lambda d: d if d["health"]["sidecar"] == "stale" else None)(status(exp)),
                   timeout=60, what="status to give up on the sidecar")
    assert doc["health"]["heartbeat"] is None
    assert "not started (more than 3 polling intervals of 2s): still queued, or lost" in \
        run_cli("status", exp, check=True).stdout
    proc = run_cli("resume", exp, check=True)
    assert proc.stdout == f"sidecar job {sidecar} has not started yet (queued): nothing to do\n"
    assert read_state(exp)["sidecar"]["job_id"] == sidecar
    assert [row[1] for row in sacct_rows([sidecar], fields="JobID,State")] == ["PENDING"]


def test_status_reads_stay_whole_while_the_sidecar_writes_every_second(workdir, cleanup):
    exp = launch(workdir, cleanup, "reads", "sleep $(( 5 + {{ k }} % 10 ))", 40, interval=1)
    wait_for(lambda: status(exp)["health"]["sidecar"] == "alive", timeout=60, what="the sidecar's heartbeat")
    updates = set()
    cli_reads = []

    def read_through_the_cli():
        for _ in range(100):
            cli_reads.append(json.loads(run_cli("status", exp, "--json", check=True).stdout))
    reader = threading.Thread(target=read_through_the_cli)
    reader.start()
    for _ in range(1000):
        doc = autoexp.status(exp)
        assert sum(doc["counts"].values()) == len(doc["runs"]) == 40
        assert doc["progress"]["finished"] + doc["progress"]["active"] == 40
        updates.add(doc["updated"])
    reader.join()
    assert len(cli_reads) == 100 and all(sum(d["counts"].values()) == 40 for d in cli_reads)
    assert len(updates | {d["updated"] for d in cli_reads}) >= 3  # the reads did overlap writes
    assert wait_state_done(exp, timeout=180)["counts"] == {"COMPLETED": 40}


def test_refresh_reconciles_with_sacct_when_no_sidecar_is_alive(workdir, cleanup):
    exp = launch(workdir, cleanup, "refresh", "sleep 3", 2)
    sidecar = read_state(exp)["sidecar"]["job_id"]
    subprocess.run(["scancel", sidecar], check=True, timeout=60)
    array = read_state(exp)["arrays"][0]["job_id"]
    wait_for(lambda: (lambda r: len(r) == 2 and all(s == "COMPLETED" for _, s in r))(
        [row for row in sacct_rows([array], fields="JobID,State") if "_" in row[0]]),
        timeout=120, what="both tasks to complete in sacct")
    time.sleep(3 * INTERVAL + 1)
    assert status(exp)["health"]["sidecar"] == "stale"
    doc = json.loads(run_cli("status", exp, "--json", "--refresh", check=True).stdout)
    assert doc["counts"] == {"COMPLETED": 2}


def test_a_crashed_sidecar_shows_its_log_and_last_error_line(workdir, cleanup):
    """A `python:` that breaks once it runs kills the sidecar job at once (one missing outright is
    refused at launch); `status` (no Slurm call) says why."""
    broken = workdir / "python3"
    broken.write_text('#!/bin/bash\nexec /nonexistent/bin/python3 "$@"\n')
    broken.chmod(0o755)
    path = write_config(workdir, {
        "name": "crash", "output_dir": str(workdir / "experiments"), "command": "true", "run_name": "r{{ k }}",
        "sweep": {"grid": {"k": [0, 1]}}, "slurm": {"time": "00:05:00"}, "python": str(broken),
        "monitor": {"interval": 1}}, name="crash.yaml")
    exp = workdir / "experiments" / "crash"
    cleanup(exp)
    run_cli("launch", path, cwd=workdir, check=True)
    shown = wait_for(lambda: (lambda out: out if "last line:" in out else None)(
        run_cli("status", exp, check=True).stdout), timeout=120, what="status to show the sidecar's last line")
    log = exp / "logs" / f"sidecar-{read_state(exp)['sidecar']['job_id']}.out"
    assert "sidecar: STALE" in shown and f"Fix: autoexp resume {exp}" in shown
    assert f"sidecar log: {log}" in shown
    assert re.search(r"last line: +.*/nonexistent/bin/python3: No such file or directory", shown), shown
    assert status(exp)["health"]["last_error"].endswith("No such file or directory")
