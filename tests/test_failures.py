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
import json
import os
import shutil
import subprocess
import threading
import time
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
    exp = Path(config["output_dir"]) / name
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
        assert proc.returncode in (0, 1), proc.stderr  # 1: the controller does not answer now; again later
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
        "sweep": {"grid": {"i": [0, 1, 2]}}, "monitor": {"retries": {"max": 12, "on": ["FAILED"]}}},
        fault="kill")
    name = exp.name
    try:
        st = keep_resuming(exp, env, timeout=900)
        kills = (workdir / "kills").read_text().splitlines()
        assert len(kills) >= 12, kills  # every retry round's sidecar was killed right after its sbatch
        found = [e for e in st["history"] if e["kind"] == "SUBMIT_FOUND"]
        assert len(found) == len(kills), (len(found), kills)  # each lost answer found by the next sidecar
        assert_every_allocation_recorded_once(exp, name, since, most=13)
        for run in st["runs"].values():
            assert [a["attempt"] for a in run["attempts"]] == list(range(1, 14)) and run["state"] == "FAILED"
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


def test_cancel_with_a_dead_sidecar_asks_sacct_first(workdir, cleanup):
    """Run 0 completes after its sidecar was scancelled: `autoexp cancel` must not call it CANCELLED."""
    exp, _ = launch(workdir, cleanup, "deadcancel", {
        "command": "[ {{ i }} = 0 ] || sleep 120", "sweep": {"grid": {"i": [0, 1, 2]}}})
    st = read_state(exp)
    sidecar = st["sidecar"]["job_id"]
    subprocess.run(["scancel", sidecar], check=True, timeout=60)
    array = st["arrays"][0]["job_id"]

    def run0_completed():
        out = subprocess.run(["sacct", "-X", "-n", "-P", "--format=JobID,State", f"--jobs={array}_0"],
                             capture_output=True, text=True, timeout=60).stdout
        return "COMPLETED" in out
    wait_for(run0_completed, timeout=120, what="run 0 to complete in sacct")
    proc = run_cli("cancel", exp, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    runs = read_state(exp)["runs"]
    assert runs["i0"]["state"] == "COMPLETED", runs["i0"]
    assert runs["i1"]["state"] == runs["i2"]["state"] == "CANCELLED"


LOG_OF = '"$AUTOEXP_EXP_DIR/logs/array/slurm-${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.out"'  # the real log (runs/<run>/ has a link)


def test_fifo_and_dev_zero_logs_neither_block_nor_starve_the_sidecar(workdir, cleanup):
    """Run 0 replaces its log by a FIFO, run 1 by a symlink to /dev/zero; runs 2-3 keep logging and
    complete: their states stay current, and the experiment ends."""
    exp, _ = launch(workdir, cleanup, "badlogs", {
        "command": "case {{ i }} in 0) rm -f " + LOG_OF + "; mkfifo " + LOG_OF + "; sleep 25 ;; "
                   "1) rm -f " + LOG_OF + "; ln -s /dev/zero " + LOG_OF + "; sleep 25 ;; "
                   "*) for s in 1 2 3; do echo \"loss: 0.$s\"; sleep 1; done ;; esac",
        "sweep": {"grid": {"i": [0, 1, 2, 3]}},
        "monitor": {"metrics": {"loss": r"loss: (?P<value>[0-9.]+)"}}})
    st = wait_for(lambda: (lambda s: s if s["runs"]["i2"]["state"] == s["runs"]["i3"]["state"] == "COMPLETED"
                           and s["runs"]["i0"]["state"] == "RUNNING" else None)(read_state(exp)),
                  timeout=120, what="runs 2-3 COMPLETED while the FIFO run still runs")
    assert st["runs"]["i2"]["metrics"]["loss"] == 0.3
    st = wait_for(lambda: (lambda s: s if s.get("done") else None)(read_state(exp)), timeout=180,
                  what="the experiment to end")
    assert all(run["state"] == "COMPLETED" for run in st["runs"].values()), st["counts"]
    skipped = {e["subject"]: e["details"]["Reason"] for e in st["history"] if e["kind"] == "LOG_SKIPPED"}
    assert "a FIFO" in skipped["i0"] and "a character device" in skipped["i1"], skipped


SMALL_FS = Path("/mnt/autoexp-small")


def test_disk_full_while_the_sidecar_writes_then_freed(workdir, cleanup):
    """The experiment directory's file system fills up mid-way: state.json stays valid, the sidecar
    stays alive, and once space returns it records the end."""
    if not os.path.ismount(SMALL_FS):
        pytest.fail(f"{SMALL_FS} is not mounted: run the tests through tests/run.sh")
    out = SMALL_FS / uuid.uuid4().hex[:8]
    out.mkdir()
    filler = out / "filler"
    try:
        exp, _ = launch(workdir, cleanup, "diskfull", {
            "output_dir": str(out), "command": "sleep $(( 12 + {{ i }} ))", "sweep": {"grid": {"i": [0, 1, 2]}}})
        wait_for(lambda: all(r["state"] == "RUNNING" for r in read_state(exp)["runs"].values()), timeout=120,
                 what="every run RUNNING")
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * (1 << 20))
                    fh.flush()
            except OSError:
                pass
        sidecar = read_state(exp)["sidecar"]["job_id"]
        time.sleep(25)  # the runs end meanwhile; every write of the sidecar fails
        json.loads((exp / "state.json").read_text())
        state = subprocess.run(["sacct", "-X", "-n", "-P", "--format=State", f"--jobs={sidecar}"],
                               capture_output=True, text=True, timeout=60).stdout.split()
        assert state and state[0] == "RUNNING", f"the sidecar died on a full disk: {state}"
        filler.unlink()
        st = wait_for(lambda: (lambda s: s if s.get("done") else None)(read_state(exp)), timeout=120,
                      what="the sidecar to record the end once space returned")
        assert all(run["state"] == "COMPLETED" for run in st["runs"].values()), st["counts"]
    finally:
        filler.unlink(missing_ok=True)
        shutil.rmtree(out, ignore_errors=True)


REMEDY_JOB = r"""#!/bin/bash
# remedy.sh KIND BATCH_SIZE
case $1 in
oom)      echo "mem ${SLURM_MEM_PER_NODE}M batch $2"
          if [ "$2" -gt 32 ]; then echo "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"; exit 1; fi
          echo "batch $2 fits" ;;
timeout)  [ "$AUTOEXP_ATTEMPT" -ge 3 ] || sleep 300; echo "attempt $AUTOEXP_ATTEMPT in time" ;;
nodefail) [ "$AUTOEXP_ATTEMPT" != 1 ] || sleep 400; echo "attempt $AUTOEXP_ATTEMPT on $SLURMD_NODENAME" ;;
ok)       echo ok ;;
esac
"""


def scontrol_update(*words):
    return subprocess.run(["sudo", "-n", "/usr/bin/scontrol", "update", *words], capture_output=True, text=True,
                          timeout=60)


def test_retries_change_what_failed_oom_timeout_node_fail(workdir, cleanup):
    """8 runs on node2: 3 run out of GPU memory (only the log says so; Slurm says FAILED) and are
    retried with twice the memory and half the batch; node2 then goes down under 3 long runs, which
    are retried without node2 (one array: one resource set); 2 of those then time out on node1 and
    are retried with twice the time, still without node2; 2 runs succeed at once. Each attempt
    records what it was given and why."""
    (workdir / "remedy.sh").write_text(REMEDY_JOB)
    kinds = ["oom", "oom", "oom", "timeout", "timeout", "nodefail", "ok", "ok"]
    exp, _ = launch(workdir, cleanup, "remedies", {
        "command": "bash {{ config_dir }}/remedy.sh {{ kind }} {{ batch_size }}",
        "sweep": {"list": [{"i": i, "kind": kind, "batch_size": 64} for i, kind in enumerate(kinds)]},
        "run_name": "r{{ i }}_{{ kind }}",
        "slurm": {"time": "00:01:00", "mem": "100M", "exclude": "node1", "no-requeue": True},
        "sidecar": {"nodelist": "node1"},
        "monitor": {"retries": {"max": 2, "rules": {
            "OUT_OF_MEMORY": {"mem": 2, "params": {"batch_size": "{{ batch_size // 2 }}"}},
            "TIMEOUT": {"time": 2},
            "NODE_FAIL": {"exclude_node": True}}}}})
    name = exp.name
    long_runs = ["r3_timeout", "r4_timeout", "r5_nodefail"]
    try:
        def ready():
            runs = read_state(exp)["runs"]
            return all(runs[f"r{i}_oom"]["state"] == "COMPLETED" for i in (0, 1, 2)) \
                and all(runs[n]["state"] == "RUNNING" and runs[n]["nodes"] == "node2" for n in long_runs)
        wait_for(ready, timeout=120, what="the OOM runs retried and completed while 3 runs run on node2")
        try:
            down = scontrol_update("nodename=node2", "state=down", "reason=autoexp-remedies-test")
            assert down.returncode == 0, down.stderr
        finally:
            up = scontrol_update("nodename=node2", "state=resume")
        assert up.returncode == 0, up.stderr
        st = wait_for(lambda: (lambda s: s if s.get("done") else None)(read_state(exp)), timeout=300,
                      what="the experiment to end")
    finally:
        cancel_leftovers(name)
    runs = st["runs"]
    assert all(run["state"] == "COMPLETED" for run in runs.values()), st["counts"]
    for i in (0, 1, 2):
        first, second = runs[f"r{i}_oom"]["attempts"]
        assert first["state"] == "FAILED" and first["failure"] == "OUT_OF_MEMORY"
        assert second["given"]["mem"] == "200M" and second["given"]["params"] == {"batch_size": 32}
        assert second["given"]["why"] == "OUT_OF_MEMORY: mem 100M x 2; batch_size 64 -> 32"
        log = Path(second["log"]).read_text()
        assert "mem 200M batch 32" in log and "batch 32 fits" in log
    for name_ in long_runs:
        attempts = runs[name_]["attempts"]
        assert attempts[0]["state"] == "NODE_FAIL"
        assert attempts[1]["given"] == {"exclude": "node2", "why": "NODE_FAIL: without node2"}
        assert attempts[1]["nodes"] == "node1"
    assert len({runs[n]["attempts"][1]["job_id"].split("_")[0] for n in long_runs}) == 1  # one array
    assert len(runs["r5_nodefail"]["attempts"]) == 2
    assert "attempt 2 on node1" in Path(runs["r5_nodefail"]["attempts"][1]["log"]).read_text()
    for i in (3, 4):
        attempts = runs[f"r{i}_timeout"]["attempts"]
        assert [a["state"] for a in attempts] == ["NODE_FAIL", "TIMEOUT", "COMPLETED"]
        assert "DUE TO TIME LIMIT" in Path(attempts[1]["log"]).read_text()  # slurmstepd's line, in the run's log
        assert attempts[2]["given"] == {"exclude": "node2", "time": "0-00:02:00",
                                        "why": "TIMEOUT: time 00:01:00 x 2"}
        assert attempts[2]["nodes"] == "node1"
    assert all(len(runs[f"r{i}_ok"]["attempts"]) == 1 for i in (6, 7))
    # one array per resource set: the three OOM retries went out together
    oom_jobs = {runs[f"r{i}_oom"]["attempts"][1]["job_id"].split("_")[0] for i in (0, 1, 2)}
    assert len(oom_jobs) == 1
    assert {a["tasks"] for a in st["arrays"] if a["job_id"] in oom_jobs} == {"0-2"}
    summary = (exp / "experiment_summary.md").read_text()
    assert "given mem=200M batch_size=32 (OUT_OF_MEMORY)" in summary
    assert "given time=0-00:02:00 exclude=node2 (TIMEOUT)" in summary
    status = run_cli("status", exp, cwd=workdir)
    assert "mem=200M" in status.stdout and "exclude=node2" in status.stdout, status.stdout


FAULT_HELPER = "/usr/local/sbin/autoexp-test-slurm-fault"
DBD_DOWN = 180  # s: accounting away for the three minutes


def slurm_fault(*args: str) -> None:
    """Through the root helper tests/run.sh installs: stop slurmdbd for a while, restart slurmctld."""
    proc = subprocess.run(["sudo", "-n", FAULT_HELPER, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"sudo {FAULT_HELPER} {' '.join(args)}: {proc.stderr} (run through tests/run.sh)"


def test_accounting_down_three_minutes_the_sidecar_keeps_its_lease_and_catches_up(workdir, cleanup):
    """slurmdbd stopped while runs run and end: the sidecar says so (SCHEDULER_ERROR), keeps its
    lease (status calls it alive throughout), and once accounting is back (SCHEDULER_OK) its final
    state is what sacct says."""
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    exp, _ = launch(workdir, cleanup, "dbddown", {
        "command": "sleep {{ 20 + 30 * i }}", "sweep": {"grid": {"i": [0, 1, 2, 3]}}, "monitor": {"interval": 2}})
    name = exp.name
    try:
        wait_for(lambda: read_state(exp)["sidecar"].get("heartbeat")
                 and any(r["state"] == "RUNNING" for r in read_state(exp)["runs"].values()),
                 timeout=180, what="runs running under a live sidecar")
        lease = read_state(exp)["sidecar"]["job_id"]
        slurm_fault("dbd-down", str(DBD_DOWN))
        down_until = time.monotonic() + DBD_DOWN
        wait_for(lambda: any(e["kind"] == "SCHEDULER_ERROR" for e in read_state(exp)["history"]),
                 timeout=120, what="the sidecar to say accounting does not answer")
        health = []
        while time.monotonic() < down_until - 10:
            health.append(json.loads(run_cli("status", exp, "--json", check=True).stdout)["health"]["sidecar"])
            time.sleep(10)
        assert set(health) == {"alive"}, health
        st = wait_for(lambda: (lambda s: s if s.get("done") else None)(read_state(exp)),
                      timeout=DBD_DOWN + 300, interval=2, what="the experiment to finish after the outage")
        kinds = [e["kind"] for e in st["history"]]
        assert "SCHEDULER_OK" in kinds[kinds.index("SCHEDULER_ERROR"):]
        assert st["sidecar"]["job_id"] == lease  # no other sidecar took over
        assert st["counts"] == {"COMPLETED": 4}
        assert_every_allocation_recorded_once(exp, name, since, most=1)
    finally:
        slurm_fault("up")
        cancel_leftovers(name)


def test_slurmctld_restarted_mid_way_the_runs_and_the_sidecar_go_on(workdir, cleanup):
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    exp, _ = launch(workdir, cleanup, "ctldrestart", {
        "command": "sleep {{ 15 + 10 * i }}", "sweep": {"grid": {"i": [0, 1, 2, 3]}}, "monitor": {"interval": 2}})
    name = exp.name
    try:
        wait_for(lambda: any(r["state"] == "RUNNING" for r in read_state(exp)["runs"].values()),
                 timeout=180, what="runs running")
        lease = read_state(exp)["sidecar"]["job_id"]
        slurm_fault("ctld-restart")
        st = wait_for(lambda: (lambda s: s if s.get("done") else None)(read_state(exp)),
                      timeout=300, interval=2, what="the experiment to finish after the restart")
        assert st["counts"] == {"COMPLETED": 4}
        assert st["sidecar"]["job_id"] == lease  # the same sidecar job saw it through
        assert_every_allocation_recorded_once(exp, name, since, most=1)
    finally:
        slurm_fault("up")
        cancel_leftovers(name)
