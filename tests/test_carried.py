"""sidecar.mode carried on the real Slurm test cluster: no sidecar allocation, the array tasks carry
the sidecar's work, and a rare watchdog job finishes what no task is left to finish.

The same experiment in job mode and in carried mode ends with the same runs, summary and events
(sidecar job ids and times aside); kill -9 of the task holding the lease mid-poll loses nothing;
the watchdog finishes the state when the last task dies without writing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import pytest

from autoexp import statefile
from conftest import autoexp, read_state, sacct_rows, wait_for, wait_state_done, write_config

pytestmark = [pytest.mark.usefixtures("slurm")]

JOB = r"""#!/bin/bash
# job.sh KIND: what each test run does
case $1 in
ok)    for i in 1 2 3; do echo "step $i loss: 0.$((5 - i))"; sleep 2; done; echo "saved checkpoint /ck/$AUTOEXP_RUN_NAME" ;;
fail)  echo "loss: 1.5"; sleep 2; exit 3 ;;
flaky) echo "attempt $AUTOEXP_ATTEMPT loss: 0.9"; sleep 2; [ "$AUTOEXP_ATTEMPT" -ge 2 ] || exit 4 ;;
long)  for i in $(seq 1 "$2"); do echo "step $i loss: 0.$i"; sleep 2; done ;;
esac
"""
MONITOR = {"events": [{"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}],
           "metrics": {"loss": r"loss[=:]\s*(?P<value>[-+0-9.eE]+)"}}


def launch(workdir: Path, cleanup, name: str, data: dict) -> Path:
    (workdir / "job.sh").write_text(JOB)
    config = {"name": f"{name}-{uuid.uuid4().hex[:6]}", "site": "local", "output_dir": str(workdir / "exp"),
              "command": "bash {{ config_dir }}/job.sh {{ kind }} {{ n }}", "run_name": "{{ kind }}{{ i }}",
              "slurm": {"time": "00:05:00", "mem": "100M"}, "sidecar": {"mem": "200M", "time": "00:10:00"},
              "monitor": {"interval": 3, **MONITOR}, **data}
    config["sidecar"] = {"mem": "200M", "time": "00:10:00", **data.get("sidecar", {})}
    proc = autoexp("launch", write_config(workdir, config, f"{config['name']}.yaml"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "exp" / config["name"]
    cleanup(exp)
    return exp


def sidecar_jobs(exp: Path) -> list[list[str]]:
    """Every job named as the experiment's sidecar (in carried mode: its watchdogs), from sacct."""
    proc = subprocess.run(["sacct", "-X", "-n", "-P", f"--name=autoexp-sidecar-{exp.name}", "--starttime=now-1hour",
                           "--format=JobID,State,ElapsedRaw"], capture_output=True, text=True, timeout=60, check=True)
    return [line.split("|") for line in proc.stdout.splitlines() if line]


def wait_watchdogs_gone(exp: Path) -> None:
    """Until the last watchdog the state names has ended (it found the experiment done), and
    named no successor. (sacct lists a job that waits for its --begin by id only.)"""
    def ended():
        job = read_state(exp)["watchdog"]["job_id"]
        rows = sacct_rows([job])
        return rows and rows[-1][1].split()[0] not in ("PENDING", "RUNNING") and \
            read_state(exp)["watchdog"]["job_id"] == job
    wait_for(ended, timeout=120, what="the watchdog chain to stop once the experiment is done")


def run_view(st: dict) -> dict:
    """What a user relies on per run, without job ids and times."""
    return {name: {"state": run["state"], "attempts": [(a["state"], a.get("exit_code")) for a in run["attempts"]],
                   "metrics": run["metrics"], "events": [(e["name"], e.get("groups")) for e in run["events"]]}
            for name, run in st["runs"].items()}


def event_view(st: dict) -> dict:
    """Each run's entries in the history, kind by kind in order (a log line and a state change seen
    in the same poll come in either order), the sidecar's own aside; the experiment's end."""
    runs: dict[tuple[str, str], list] = {}
    submitted: Counter = Counter()
    for entry in st["history"]:
        details = entry.get("details") or {}
        if entry["kind"] in ("RETRY", "SUBMIT_ARRAY"):  # one per array: grouped by timing, counted per run
            submitted.update((entry["kind"], n) for n in str(details.get("Runs", "")).split(", "))
        elif entry["subject"] in st["runs"] or entry["kind"] == "ALL_COMPLETE":
            keep = {k: v for k, v in details.items() if k in ("Previous", "Current", "Attempt", "Exit code", "Result",
                                                              "Summary")}
            runs.setdefault((entry["subject"], entry["kind"]), []).append(keep)
    return {"runs": runs, "submitted": submitted}


def summary_view(exp: Path, st: dict) -> list[str]:
    """experiment_summary.md with job ids and times replaced, its header (sidecar, arrays) left out."""
    text = (exp / "experiment_summary.md").read_text()
    for array in st["arrays"]:  # retries may go out in one array or two, as their ends fall in polls
        text = text.replace(array["job_id"], "A")
    text = re.sub(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d)?", "T", text)
    text = re.sub(r"\b\d+(\.\d+)?\s?(s|m|h|min|sec)\b|\b\d+:\d\d(:\d\d)?\b", "D", text)
    return [line for line in text.splitlines()[1:] if not line.startswith(("Updated", "Sidecar", "Arrays"))]


def holders(st: dict) -> set[str]:
    return {e["subject"].removeprefix("job ") for e in st["history"] if e["kind"] == "SIDECAR_START"} | \
        {st["sidecar"].get("job_id")}


# --------------------------------------------------------------------------- the same ends as job mode

def test_carried_mode_ends_as_the_job_sidecar_does_without_a_sidecar_allocation(workdir, cleanup):
    points = [{"kind": k, "i": i, "n": ""} for i, k in enumerate(["ok", "ok", "fail", "ok", "flaky", "ok", "ok", "ok"])]
    common = {"sweep": {"list": points}, "monitor": {"interval": 3, **MONITOR, "retries": {"max": 1, "on": ["FAILED"]}}}
    job = launch(workdir, cleanup, "asjob", {**common, "sidecar": {"mode": "job"}})
    carried = launch(workdir, cleanup, "carried", {**common, "sidecar": {"mode": "carried", "watchdog": "30s"}})
    text = (carried / "array.sbatch").read_text()
    assert "autoexp.sidecar.carried carry" in text and "autoexp.sidecar.carried watchdog" in (
        carried / "sidecar.sbatch").read_text()
    both = {exp: wait_state_done(exp, timeout=240) for exp in (job, carried)}
    a, b = both[job], both[carried]
    assert run_view(b) == run_view(a)
    assert b["runs"]["fail2"]["state"] == "FAILED" and len(b["runs"]["fail2"]["attempts"]) == 2
    assert [t["state"] for t in b["runs"]["flaky4"]["attempts"]] == ["FAILED", "COMPLETED"]  # the poll retried it
    assert event_view(b) == event_view(a)
    assert summary_view(carried, b) == summary_view(job, a)
    # No sidecar allocation: the lease was held by tasks (their ids are "<array>_<task>") and at most
    # by watchdogs of seconds (while no task ran); no sidecar job was submitted. The last task to
    # end wrote the final state, also when another task's end poll held the lease at that moment.
    assert not any(e["kind"] == "SUBMIT_SIDECAR" for e in b["history"])
    (final,) = [e["subject"] for e in b["history"] if e["kind"] == "SIDECAR_STOP"
                and e["details"]["Reason"] == "all runs finished"]
    assert "_" in final, final
    wait_watchdogs_gone(carried)
    rows = sidecar_jobs(carried)
    assert all("_" in h or h in {r[0] for r in rows} for h in holders(b)), (holders(b), rows)
    assert read_state(carried)["watchdog"]["job_id"] in {r[0] for r in rows}, rows
    assert all(r[1] == "COMPLETED" and int(r[2]) < 20 for r in rows), rows  # each: one look, seconds
    # Every task's carrier ended with its task: none is left running.
    assert not subprocess.run(["pgrep", "-u", str(os.getuid()), "-f", f"carried carry {carried}"],
                              capture_output=True).stdout


# --------------------------------------------------------------------------- kill -9 mid-poll

def sleeping(pid: int) -> bool:
    """Whether ``pid`` sleeps in time.sleep: in a poll, only while it waits for the state lock
    (statefile.Lock retries); between polls a carrier waits on an event instead."""
    try:
        return "nanosleep" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def test_kill_9_of_the_lease_holder_mid_poll_loses_nothing(workdir, cleanup):
    points = [{"kind": "long", "i": i, "n": 10} for i in range(4)]
    exp = launch(workdir, cleanup, "kill9", {"sweep": {"list": points}, "sidecar": {"mode": "carried", "watchdog": "30s"}})
    lease = wait_for(lambda: (lambda s: s if "_" in str(s.get("job_id")) and s.get("heartbeat") else None)(
        read_state(exp)["sidecar"]), timeout=120, what="a task to hold the lease")
    holder, pid = lease["job_id"], int(lease["pid"])
    lock = statefile.lock(exp)
    with lock:  # the holder's next poll asks sacct, then waits here for the lock: mid-poll
        wait_for(lambda: sleeping(pid), timeout=30, interval=0.1, what="the holder to wait for the state lock")
        os.killpg(os.getpgid(pid), signal.SIGKILL)  # the whole task: its script, its command, its carrier
    st = wait_state_done(exp, timeout=240)
    assert holder != st["sidecar"]["job_id"] or any(
        e["kind"] == "SIDECAR_START" and e["details"].get("Took over from") for e in st["history"])
    killed = next(n for n, r in st["runs"].items() if r["job_id"] == holder)
    def ended():  # the last task wrote the end before its own allocation ended: wait for accounting
        rows = {row[0]: row[1].split()[0] for row in sacct_rows([a["job_id"] for a in st["arrays"]])}
        return rows if all(s not in ("PENDING", "RUNNING") for s in rows.values()) else None
    truth = wait_for(ended, timeout=60, what="every task to end in accounting")
    for name, run in st["runs"].items():
        assert run["state"] == truth[run["job_id"]], (name, run["state"], truth)
        changes = [(e["details"]["Previous"], e["details"]["Current"]) for e in st["history"]
                   if e["kind"] == "STATE_CHANGE" and e["subject"] == name]
        assert changes[0] == ("PENDING", "RUNNING") and changes[-1][1] == run["state"], changes
        assert all(a[1] == b[0] for a, b in zip(changes, changes[1:])), changes  # none missed, none twice
        if name != killed:
            assert run["state"] == "COMPLETED" and run["metrics"] == {"loss": 0.1}, run  # every line read
    assert st["runs"][killed]["state"] != "COMPLETED"


# --------------------------------------------------------------------------- the watchdog

def test_the_watchdog_finishes_the_state_when_the_last_task_dies_without_writing(workdir, cleanup):
    exp = launch(workdir, cleanup, "watchdog", {"sweep": {"list": [{"kind": "long", "i": 0, "n": 30}]},
                                                 "sidecar": {"mode": "carried", "watchdog": "10s"}})
    wait_for(lambda: "_" in str(read_state(exp)["sidecar"].get("job_id")), timeout=120, what="the task to hold the lease")
    task = read_state(exp)["runs"]["long0"]["job_id"]
    subprocess.run(["scancel", task], check=True, timeout=30)  # SIGTERM to the script, its command and its carrier
    st = wait_state_done(exp, timeout=120)
    assert st["runs"]["long0"]["state"] == "CANCELLED"
    # The task's carrier gave the lease back on SIGTERM; the watchdog took it and wrote the end.
    assert st["sidecar"]["job_id"] in {r[0] for r in sidecar_jobs(exp)}, st["sidecar"]
    wait_watchdogs_gone(exp)


# --------------------------------------------------------------------------- status and cancel

def test_status_shows_the_carrier_and_cancel_stops_the_watchdog_too(workdir, cleanup):
    exp = launch(workdir, cleanup, "cancel", {"sweep": {"list": [{"kind": "long", "i": i, "n": 30} for i in range(2)]},
                                               "sidecar": {"mode": "carried", "watchdog": "5m"}})
    wait_for(lambda: "_" in str(read_state(exp)["sidecar"].get("job_id")), timeout=120, what="a task to hold the lease")
    doc = json.loads(autoexp("status", exp, "--json", check=True).stdout)
    assert doc["health"]["sidecar"] == "alive" and doc["health"]["job_id"] == doc["sidecar"]["job_id"]
    watchdog = read_state(exp)["watchdog"]["job_id"]
    assert "no sidecar was alive" not in autoexp("resume", exp, check=True).stdout  # the carrier is alive
    autoexp("cancel", exp, check=True)
    st = read_state(exp)
    assert st["done"] and {r["state"] for r in st["runs"].values()} == {"CANCELLED"}
    wait_for(lambda: (lambda r: r and r[0][1].startswith("CANCELLED"))(sacct_rows([watchdog])), timeout=60,
             what="the watchdog job to be cancelled with the experiment")
    wait_for(lambda: not subprocess.run(["pgrep", "-u", str(os.getuid()), "-f", f"carried carry {exp}"],
                                        capture_output=True).stdout, timeout=60, what="the carriers to exit")


def test_resume_submits_a_watchdog_that_finishes_the_state(workdir, cleanup):
    exp = launch(workdir, cleanup, "resume", {"sweep": {"list": [{"kind": "long", "i": 0, "n": 30}]},
                                               "sidecar": {"mode": "carried", "watchdog": "10m"}})
    wait_for(lambda: "_" in str(read_state(exp)["sidecar"].get("job_id")), timeout=120, what="the task to hold the lease")
    st = read_state(exp)
    doc = json.loads(autoexp("status", exp, "--json", check=True).stdout)
    assert doc["health"]["sidecar"] == "alive"
    subprocess.run(["scancel", st["watchdog"]["job_id"], st["runs"]["long0"]["job_id"]], check=True, timeout=30)
    wait_for(lambda: read_state(exp)["sidecar"].get("stopped"), timeout=30, what="the carrier to give the lease back")
    wait_for(lambda: (lambda r: r and r[0][1].startswith("CANCELLED"))(sacct_rows([st["runs"]["long0"]["job_id"]])),
             timeout=60, what="accounting to show the task's end")  # else the watchdog's one look is too early
    proc = autoexp("resume", exp, check=True)  # nothing watches now: a watchdog that begins at once
    assert "submitted sidecar job" in proc.stdout, proc.stdout
    assert read_state(exp)["watchdog"]["job_id"] != st["watchdog"]["job_id"]
    final = wait_state_done(exp, timeout=120)
    assert final["runs"]["long0"]["state"] == "CANCELLED" and final["sidecar"]["job_id"].isdigit()
    wait_watchdogs_gone(exp)
