"""The sidecar on the real Slurm test cluster: after it exits, state.json, experiment_summary.md
and events.log agree with sacct, whatever happened on the way (kill -9, a failing sacct, a node
going down, its own time limit).

Runs are short bash loops in ``job.sh``; ``monitor.interval`` is 1 s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid

import pytest

from autoexp import report
from conftest import autoexp as run_cli, read_state, wait_for, wait_state_done, write_config

pytestmark = [pytest.mark.usefixtures("slurm"), pytest.mark.core]

JOB = r"""#!/bin/bash
# job.sh KIND: what each test run does
case $1 in
ok)    for i in 1 2; do echo "step $i loss: 0.$((5 - i))"; sleep 1; done ;;
fail)  echo "loss: 1.5"; sleep 1; echo "Traceback: boom" >&2; exit 3 ;;
nan)   echo "loss: 2.0"; sleep 1; echo "loss: nan"; sleep 60 ;;
ckpt)  echo "loss: 0.3"; sleep 1; printf "saved checkp"; sleep 1.5; echo "oint /ck/$AUTOEXP_RUN_NAME"; sleep 1 ;;
ckpt4) for i in 1 2 3 4; do echo "saved checkpoint /ck/$AUTOEXP_RUN_NAME/$i"; sleep 2; done ;;
long)  for i in $(seq 1 12); do echo "saved checkpoint /ck/$AUTOEXP_RUN_NAME/$i"; sleep 5; done ;;
nodefail) if [ "$AUTOEXP_ATTEMPT" = 1 ]; then echo "first attempt waits"; sleep 120; else echo "attempt $AUTOEXP_ATTEMPT ok"; fi ;;
oom)   echo "CUDA out of memory (attempt $AUTOEXP_ATTEMPT)"; sleep 30 ;;
silent) echo "started"; sleep 30 ;;
true)  : ;;
esac
"""


def launch(workdir, cleanup, data: dict, env: dict | None = None):
    """Write job.sh and the config, launch, register the jobs for cleanup; the experiment dir."""
    (workdir / "job.sh").write_text(JOB)
    name = f"{data.pop('name')}-{uuid.uuid4().hex[:6]}"
    config = {"name": name, "output_dir": str(workdir / "exp"),
              "command": "bash {{ config_dir }}/job.sh {{ kind }}",
              "slurm": {"time": "00:05:00", "mem": "100M"},
              "sidecar": {"mem": "200M", "time": "00:10:00"},
              "monitor": {"interval": 1}}
    for key, value in data.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    proc = run_cli("launch", write_config(workdir, config), cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "exp" / name
    cleanup(exp)
    return exp


def sacct_latest(job_ids) -> dict[str, dict]:
    """The latest allocation of every job and array task, straight from sacct, in UTC."""
    proc = subprocess.run(["sacct", "-X", "-n", "-P", "-D", "--format=JobID,State,Start,End,ExitCode",
                           f"--jobs={','.join(job_ids)}"], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "TZ": "UTC", "SLURM_TIME_FORMAT": "%Y-%m-%dT%H:%M:%S"})
    rows = {}
    for line in proc.stdout.splitlines():
        job_id, state, start, end, exit_code = line.split("|")
        rows[job_id] = {"state": state.split()[0], "start": start, "end": end, "exit_code": exit_code}
    return rows


def wait_sidecars_ended(exp) -> dict:
    """sacct's rows of every sidecar job of the experiment once they all ended on their own."""
    def ended():
        ids = sidecar_jobs(exp)
        rows = sacct_latest(ids)
        return rows if len(rows) == len(ids) and all(r["state"] not in ("RUNNING", "PENDING") for r in rows.values()) \
            else None
    return wait_for(ended, timeout=60, what="the sidecar jobs to end")


def sidecar_jobs(exp) -> list[str]:
    st = read_state(exp)
    return sorted({e["subject"].split()[1] for e in st["history"] if e["kind"] == "SUBMIT_SIDECAR"}, key=int)


def blocks(exp) -> list[dict]:
    """events.log parsed back into entries: kind, subject, details."""
    found = []
    for block in (exp / "events.log").read_text().split("\n\n"):
        if not block.strip():
            continue
        head, *rest = block.splitlines()
        match = re.match(r"^\[(.+?)\] (\w+): (.*)$", head)
        assert match, f"malformed events.log block: {block!r}"
        found.append({"kind": match.group(2), "subject": match.group(3),
                      "details": dict(line.split(": ", 1) for line in rest)})
    return found


def summary_rows(exp) -> dict[str, list[str]]:
    rows = {}
    for line in (exp / "experiment_summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 6 and cells[0] not in ("Run Name",):
            rows[cells[0]] = cells
    return rows


def resume_to_the_end(exp, workdir) -> dict:
    """`autoexp resume` until it submits a new sidecar, then wait for the end: the final state,
    checked against sacct."""
    def resumed():
        proc = run_cli("resume", exp, cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        return "submitted sidecar job" in proc.stdout
    wait_for(resumed, timeout=30, interval=2, what="autoexp resume to submit a new sidecar")
    wait_state_done(exp, timeout=120)
    wait_sidecars_ended(exp)
    return assert_agrees_with_sacct(exp)


def assert_agrees_with_sacct(exp) -> dict:
    """state.json, the summary table and events.log tell what sacct tells, run by run."""
    st = read_state(exp)
    truth = sacct_latest([a["job_id"] for a in st["arrays"]])
    table = summary_rows(exp)
    log = blocks(exp)
    for name, run in st["runs"].items():
        row = truth[run["job_id"]]
        assert run["state"] == row["state"], (name, run["state"], row)
        assert run["started"] == (row["start"] + "Z" if row["start"] not in ("Unknown", "None") else None), name
        assert run["completed"] == row["end"] + "Z", name
        assert run["exit_code"] == row["exit_code"], name
        assert table[name][1:5] == [run["state"], run["job_id"], report.human_time(run["started"]),
                                    report.human_time(run["completed"])]
        last = [b for b in log if b["kind"] in ("STATE_CHANGE",) and b["subject"] == name][-1]
        assert last["details"]["Current"] == run["state"], (name, last)
    assert st["done"] is True
    kinds = [b["kind"] for b in log]
    assert kinds[-2:] == ["ALL_COMPLETE", "SIDECAR_STOP"], kinds[-5:]
    assert kinds.count("ALL_COMPLETE") == 1
    return st


def polls_of(st) -> list[int]:
    """The polls each STATUS_CHECK stands for (itself and the quiet ones before it)."""
    return [int((e.get("details") or {}).get("Polls", 1)) for e in st["history"] if e["kind"] == "STATUS_CHECK"]


def changes(st, name):
    return [(e["details"]["Previous"], e["details"]["Current"]) for e in st["history"]
            if e["kind"] == "STATE_CHANGE" and e["subject"] == name]


def test_seed_scenario_ends_on_its_own_and_agrees_with_sacct(workdir, cleanup):
    exp = launch(workdir, cleanup, {
        "name": "seed",
        "sweep": {"list": [{"kind": "ok", "n": i} for i in range(5)] +
                  [{"kind": "fail", "n": ""}, {"kind": "nan", "n": ""}, {"kind": "ckpt", "n": ""}]},
        "run_name": "{{ kind }}{{ n }}",
        "monitor": {"events": [{"name": "nan_loss", "pattern": r"loss[=:]\s*nan", "action": "cancel"},
                               {"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}],
                    "metrics": {"loss": r"loss[=:]\s*(?P<value>[-+0-9.eE]+)"}},
        "notify": {"mail": "me@example.org"}})
    assert "--mail-type=END" in (exp / "sidecar.sbatch").read_text()
    wait_state_done(exp, timeout=120)
    sidecars = wait_sidecars_ended(exp)
    assert [r["state"] for r in sidecars.values()] == ["COMPLETED"]  # it ended on its own, exit 0
    st = assert_agrees_with_sacct(exp)
    runs = st["runs"]
    assert {n: r["state"] for n, r in runs.items()} == {
        **{f"ok{i}": "COMPLETED" for i in range(5)}, "fail": "FAILED", "nan": "CANCELLED", "ckpt": "COMPLETED"}
    assert runs["ok0"]["metrics"] == {"loss": 0.3} and runs["fail"]["metrics"] == {"loss": 1.5}
    assert [(e["name"], e["groups"]) for e in runs["ckpt"]["events"]] == [("checkpoint", {"path": "/ck/ckpt"})]
    assert [e["name"] for e in runs["nan"]["events"]] == ["nan_loss"]
    assert runs["nan"]["attempts"][0]["cancelled"] == "event nan_loss"
    assert runs["nan"]["elapsed_s"] < 30  # cancelled by its event, not run to the end
    cancel = [b for b in blocks(exp) if b["kind"] == "CANCEL"]
    assert [(b["subject"], b["details"]["Reason"]) for b in cancel] == [("nan", "event nan_loss")]
    notes = summary_rows(exp)
    assert "log: logs/array/slurm-" in notes["fail"][5] and "exit 3:0" in notes["fail"][5]
    assert "checkpoint (path=/ck/ckpt)" in notes["ckpt"][5] and "nan_loss" in notes["nan"][5]
    assert "✗ FAILED: 1 runs" in (exp / "experiment_summary.md").read_text()
    for name in runs:
        assert changes(st, name)[0] == ("PENDING", "RUNNING")
    checks = [b for b in blocks(exp) if b["kind"] == "STATUS_CHECK"]
    assert checks and all(re.match(r"^8 runs - ", b["details"]["Result"]) for b in checks)


def test_kill_9_then_resume_misses_nothing_and_counts_nothing_twice(workdir, cleanup):
    exp = launch(workdir, cleanup, {
        "name": "kill9", "sweep": {"grid": {"kind": ["ckpt4"], "i": list(range(6))}},
        "run_name": "r{{ i }}", "max_parallel": 3,
        "monitor": {"events": [{"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}]}})
    first = wait_for(lambda: (lambda s: s if s["sidecar"].get("pid") and any(
        e["kind"] == "LOG_EVENT" for e in s["history"]) else None)(read_state(exp)), timeout=90,
        what="the sidecar to record a first event")
    if first["sidecar"]["host"] != socket.gethostname():
        pytest.skip("the sidecar runs on another host: cannot kill -9 it from here")
    os.kill(first["sidecar"]["pid"], signal.SIGKILL)
    killed = first["sidecar"]["job_id"]
    wait_for(lambda: sacct_latest([killed]).get(killed, {}).get("state") not in (None, "RUNNING"), timeout=60,
             what="the killed sidecar to end")
    time.sleep(3)  # runs go on meanwhile; a few transitions happen while nobody watches

    st = resume_to_the_end(exp, workdir)
    for name, run in st["runs"].items():
        assert run["state"] == "COMPLETED"
        # the same as an undisturbed run: every transition once, every checkpoint once and in order
        assert changes(st, name) == [("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")], name
        assert [e["groups"]["path"] for e in run["events"]] == [f"/ck/{name}/{i}" for i in range(1, 5)]
        assert sum(1 for e in st["history"] if e["kind"] == "LOG_EVENT" and e["subject"] == name) == 4
    starts = [e for e in st["history"] if e["kind"] == "SIDECAR_START"]
    assert len(starts) == 2 and starts[1]["subject"] != starts[0]["subject"]


SACCT_WRAPPER = """#!/bin/bash
# fault injection: hang or fail as the flag file says, while it exists; count every call
echo "$$" >> {calls}
case "$(cat {flag} 2>/dev/null)" in
hang) exec sleep 600 ;;
fail) echo "sacct: error: Problem talking to the database: Connection refused" >&2; exit 1 ;;
esac
exec {real} "$@"
"""


def sacct_wrapper(directory, flag=None):
    directory.mkdir()
    calls = directory / "calls"
    (directory / "sacct").write_text(SACCT_WRAPPER.format(calls=calls, flag=flag or directory / "never",
                                                          real=shutil.which("sacct")))
    (directory / "sacct").chmod(0o755)
    return {"PATH": f"{directory}:{os.environ['PATH']}"}, calls


def test_hanging_then_failing_sacct_is_retried_logged_and_caught_up(workdir, cleanup):
    flag = workdir / "sacct-broken"
    flag.write_text("hang")
    env, calls = sacct_wrapper(workdir / "bin", flag)
    exp = launch(workdir, cleanup, {"name": "sacctfail", "sweep": {"list": [{"kind": "ok"}, {"kind": "fail"}]},
                                    "run_name": "{{ kind }}"}, env=env)

    def errors(n):
        def logged():
            st = read_state(exp)  # valid JSON at every read
            return sum(1 for e in st["history"] if e["kind"] == "SCHEDULER_ERROR") >= n
        return logged
    wait_for(errors(1), timeout=60, interval=0.2, what="the hanging sacct to time out")
    flag.write_text("fail")
    wait_for(errors(3), timeout=60, interval=0.2, what="three SCHEDULER_ERROR entries")
    st = read_state(exp)
    assert {r["state"] for r in st["runs"].values()} == {"PENDING"}  # nothing invented meanwhile
    assert st["sidecar"]["heartbeat"]  # still polling (logs, heartbeat) while sacct is down
    time.sleep(5)  # the runs finish while sacct is down
    flag.unlink()
    wait_state_done(exp, timeout=90)
    assert [r["state"] for r in wait_sidecars_ended(exp).values()] == ["COMPLETED"]
    st = assert_agrees_with_sacct(exp)
    assert st["runs"]["ok"]["state"] == "COMPLETED" and st["runs"]["fail"]["state"] == "FAILED"
    assert changes(st, "ok") == [("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]  # caught up, none missed
    errors = [e for e in st["history"] if e["kind"] == "SCHEDULER_ERROR"]
    assert "did not answer within 20s" in errors[0]["details"]["Error"]
    assert "Problem talking to the database" in errors[-1]["details"]["Error"]
    assert [e["kind"] for e in st["history"]].count("SCHEDULER_OK") == 1
    assert len(calls.read_text().split()) < sum(polls_of(st))  # backed off: not one query per second all along


def test_one_sacct_call_per_poll_for_the_whole_experiment(workdir, cleanup):
    env, calls = sacct_wrapper(workdir / "bin")
    exp = launch(workdir, cleanup, {"name": "onecall", "sweep": {"grid": {"kind": ["true"], "i": list(range(300))}},
                                    "run_name": "r{{ i }}"}, env=env)
    wait_state_done(exp, timeout=240)
    wait_sidecars_ended(exp)
    st = assert_agrees_with_sacct(exp)
    assert st["counts"] == {"COMPLETED": 300}
    assert len(calls.read_text().split()) == sum(polls_of(st))


def test_retry_action_respects_max_and_stall_cancels(workdir, cleanup):
    exp = launch(workdir, cleanup, {
        "name": "retry", "sweep": {"list": [{"kind": "oom"}, {"kind": "silent"}]}, "run_name": "{{ kind }}",
        "monitor": {"events": [{"name": "oom", "pattern": "CUDA out of memory", "action": "retry"}],
                    "stall_after": "4s", "stall_action": "cancel", "retries": {"max": 1}}})
    wait_state_done(exp, timeout=120)
    wait_sidecars_ended(exp)
    st = assert_agrees_with_sacct(exp)
    oom, silent = st["runs"]["oom"], st["runs"]["silent"]
    # attempt 1 is cancelled and retried; attempt 2 hits the limit of one retry, then stalls
    assert [(a["attempt"], a["state"]) for a in oom["attempts"]] == [(1, "CANCELLED"), (2, "CANCELLED")]
    assert [(e["name"], e["attempt"]) for e in oom["events"]] == [("oom", 1), ("oom", 2), ("stalled", 2)]
    retries = [e for e in st["history"] if e["kind"] == "RETRY"]
    assert len(retries) == 1 and retries[0]["details"]["Reason"] == "event oom"
    assert retries[0]["details"]["Tasks"] == "0"  # only the affected run, as its own array
    assert [e["kind"] for e in st["history"] if e["subject"] == "oom"].count("RETRY_SKIPPED") == 1
    assert (exp / "runs" / "oom" / f"slurm-{st['arrays'][1]['job_id']}_0.out").read_text().count("CUDA out of memory (attempt 2)") == 1
    assert [e["name"] for e in silent["events"]] == ["stalled"]
    assert silent["state"] == "CANCELLED" and silent["attempts"][0]["cancelled"] == "event stalled"


def scontrol_update(*words) -> subprocess.CompletedProcess:
    argv = ["scontrol", "update", *words]
    if os.geteuid() != 0:
        argv = ["sudo", "-n", "/usr/bin/scontrol", "update", *words]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def can_set_nodes() -> str | None:
    if os.geteuid() == 0:
        return None
    if not shutil.which("sudo"):
        return "setting a node DOWN needs root, and sudo is not installed"
    proc = subprocess.run(["sudo", "-n", "-l", "/usr/bin/scontrol", "update", "nodename=node2", "state=resume"],
                          capture_output=True, text=True, timeout=30)
    return None if proc.returncode == 0 else "setting a node DOWN needs root or `sudo -n /usr/bin/scontrol update`"


def test_node_down_runs_come_back_as_a_new_attempt(workdir, cleanup):
    problem = can_set_nodes()
    if problem:
        pytest.skip(problem)
    exp = launch(workdir, cleanup, {
        "name": "nodefail", "sweep": {"grid": {"kind": ["nodefail"], "i": [0, 1]}}, "run_name": "r{{ i }}",
        "slurm": {"nodelist": "node2", "no-requeue": True}, "sidecar": {"nodelist": "node2"},
        "monitor": {"retries": {"max": 1, "on": ["NODE_FAIL"]}}})
    wait_for(lambda: all(r["state"] == "RUNNING" for r in read_state(exp)["runs"].values()), timeout=90,
             what="both runs to run on node2")
    try:
        down = scontrol_update("nodename=node2", "state=down", "reason=autoexp-sidecar-test")
        assert down.returncode == 0, down.stderr
    finally:
        up = scontrol_update("nodename=node2", "state=resume")
    assert up.returncode == 0, up.stderr
    wait_state_done(exp, timeout=150)
    wait_sidecars_ended(exp)
    st = assert_agrees_with_sacct(exp)
    for name, run in st["runs"].items():
        assert [(a["attempt"], a["state"]) for a in run["attempts"]] == [(1, "NODE_FAIL"), (2, "COMPLETED")]
        assert "attempt 2 ok" in open(run["attempts"][1]["log"]).read()
    assert len(st["arrays"]) == 2 and st["arrays"][1]["tasks"] == "0-1"  # one new array of both
    assert [e["details"]["Reason"] for e in st["history"] if e["kind"] == "RETRY"] == ["state NODE_FAIL"]
    # the sidecar was on node2 too: Slurm requeued it (--requeue) and it caught up from sacct
    sidecar = st["sidecar"]["job_id"]
    proc = subprocess.run(["sacct", "-X", "-n", "-P", "-D", "--format=State", f"--jobs={sidecar}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["NODE_FAIL", "COMPLETED"]
    assert [e["subject"] for e in st["history"] if e["kind"] == "SIDECAR_START"] == [f"job {sidecar}"] * 2


def test_chain_mode_one_poll_per_job(workdir, cleanup):
    exp = launch(workdir, cleanup, {"name": "chain", "sweep": {"list": [{"kind": "ckpt4"}]}, "run_name": "c",
                                    "sidecar": {"mode": "chain"}, "monitor": {"interval": 2, "events": [
                                        {"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}]}})
    wait_state_done(exp, timeout=120)
    # the last chain job releases the lease in a write of its own, just after the one that says done
    st = wait_for(lambda: (lambda s: s if s["sidecar"].get("stopped") else None)(read_state(exp)), timeout=30,
                  what="the last chain job to release the lease")
    assert st["sidecar"].get("stopped")
    assert [e["groups"]["path"] for e in st["runs"]["c"]["events"]] == [f"/ck/c/{i}" for i in range(1, 5)]
    polls = [e for e in st["history"] if e["kind"] == "STATUS_CHECK"]
    assert len(polls) >= 3
    # one SUBMIT_SIDECAR (launch's): the chain's own submissions are not logged one by one
    assert [e["kind"] for e in st["history"]].count("SUBMIT_SIDECAR") == 1

    def chain_jobs():
        proc = subprocess.run(["sacct", "-X", "-n", "-P", f"--name=autoexp-sidecar-{st['experiment']}",
                               "--format=JobID,State,Start,End", f"--starttime={st['created'][:-1]}"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "TZ": "UTC"})
        rows = [line.split("|") for line in proc.stdout.splitlines()]
        return rows if len(rows) == len(polls) and all(r[1] == "COMPLETED" for r in rows) else None
    rows = wait_for(chain_jobs, timeout=60, what="as many chain jobs as polls, all ended")  # one poll per job
    spans = sorted((r[2], r[3]) for r in rows)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # one after the other


@pytest.mark.slow
def test_time_limit_hand_over_keeps_watching(workdir, cleanup):
    exp = launch(workdir, cleanup, {
        "name": "handover", "sweep": {"grid": {"kind": ["long"], "i": [0, 1]}}, "run_name": "r{{ i }}",
        "max_parallel": 1, "sidecar": {"time": "00:01:00"}, "notify": {"mail": "me@example.org"},
        "slurm": {"time": "00:10:00"},
        "monitor": {"interval": 2, "events": [{"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}]}})
    wait_state_done(exp, timeout=400)
    rows = wait_sidecars_ended(exp)
    st = assert_agrees_with_sacct(exp)
    assert len(rows) >= 3 and all(r["state"] == "COMPLETED" for r in rows.values())
    spans = sorted((r["start"], r["end"]) for r in rows.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two at once
    for name, run in st["runs"].items():
        assert [e["groups"]["path"] for e in run["events"]] == [f"/ck/{name}/{i}" for i in range(1, 13)]
        assert changes(st, name) == [("PENDING", "RUNNING"), ("RUNNING", "COMPLETED")]
    stops = [e for e in st["history"] if e["kind"] == "SIDECAR_STOP"]
    assert all("handed over" in e["details"]["Reason"] for e in stops[:-1])
    assert stops[-1]["details"]["Reason"] == "all runs finished"
    last = sidecar_jobs(exp)[-1]
    mail = {job: subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
            for job in sidecar_jobs(exp)}
    assert "MailType=END" in mail[last]  # only the sidecar that saw the end mails the user
    assert all("MailType=END" not in text for job, text in mail.items() if job != last and text)
