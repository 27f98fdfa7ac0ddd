"""`autoexp status` and `autoexp list`: what a person (or a script) sees of an experiment.

These tests write the state a sidecar would write (runs in given states, a heartbeat of a given
age) and read it back through the command, as users do; the cluster tests in test_commands.py
check the same views against a live sidecar.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import autoexp
from autoexp import clock, model, statefile
from conftest import autoexp as run_cli, read_state, write_config


def planned(workdir: Path, name: str, n_runs: int, interval: float = 60) -> Path:
    """A planned (not launched) experiment of ``n_runs`` runs under workdir/experiments."""
    path = write_config(workdir, {"name": name, "command": "true", "run_name": "run{{ run_index }}",
                                  "sweep": {"grid": {"i": list(range(n_runs))}},
                                  "monitor": {"interval": interval}}, name=f"{name}.yaml")
    return autoexp.plan_experiment(autoexp.load_config(path), scheduler="local").exp_dir


def as_if_running(exp: Path, states: dict[str, str] | None = None, default: str = "COMPLETED",
                  heartbeat_age: float | None = 5, interval: float | None = 60, done: bool = False) -> dict:
    """Write the state a sidecar would have written: runs in ``states`` (others ``default``), its
    heartbeat ``heartbeat_age`` seconds ago (None: never), its interval recorded (None: not)."""
    now = dt.datetime.now(dt.timezone.utc)
    with statefile.locked(exp) as st:
        st["arrays"] = [{"job_id": "900", "tasks": f"0-{len(st['runs']) - 1}", "attempt": 1}]
        for name, run in st["runs"].items():
            state = (states or {}).get(name, default)
            attempt = {"attempt": 1, "job_id": f"900_{run['index']}", "state": state,
                       "log": str(exp / "runs" / name / f"slurm-900_{run['index']}.out")}
            run.update(state=state, job_id=attempt["job_id"], attempts=[attempt], elapsed_s=42,
                       started=clock.now() if state != "PENDING" else None)
            if state == "COMPLETED":
                run["metrics"] = {"loss": 0.25}
        stamp = (now - dt.timedelta(seconds=heartbeat_age)).strftime("%Y-%m-%dT%H:%M:%SZ") \
            if heartbeat_age is not None else None
        st["sidecar"] = {"job_id": "901", "host": "node1", "heartbeat": stamp, "submitted": clock.now()}
        if interval is not None:
            st["sidecar"]["interval"] = interval
        st["done"] = done
    return read_state(exp)


def status_json(exp: Path, *extra) -> dict:
    proc = run_cli("status", exp, "--json", *extra, check=True)
    return json.loads(proc.stdout)


def table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("RUN "))
    return [line.split() for line in lines[start + 1:] if line and not line.startswith("...")]


# --------------------------------------------------------------------------- the view


def test_status_shows_progress_sidecar_health_and_failed_runs_first(workdir):
    exp = planned(workdir, "view", 120)
    as_if_running(exp, {"run7": "FAILED", "run90": "TIMEOUT", "run3": "RUNNING", "run4": "PENDING",
                        "run5": "CANCELLED"})
    proc = run_cli("status", exp, check=True)
    out = proc.stdout
    assert "\x1b[" not in out  # not a terminal: no colour
    head = out.splitlines()[:3]
    assert head[0].startswith("view ") and str(exp) in head[0]
    assert "118/120 finished" in head[1]
    assert all(f"{n} {s}" in head[1] for n, s in [(1, "FAILED"), (1, "TIMEOUT"), (1, "CANCELLED"),
                                                  (1, "RUNNING"), (1, "PENDING"), (115, "COMPLETED")])
    assert head[2].startswith("sidecar: alive") and "job 901 on node1" in head[2]
    rows = table_rows(out)
    assert [r[:2] for r in rows[:5]] == [["run7", "FAILED"], ["run90", "TIMEOUT"], ["run5", "CANCELLED"],
                                         ["run3", "RUNNING"], ["run4", "PENDING"]]
    assert rows[5][:3] == ["run0", "COMPLETED", "900_0"] and "loss=0.25" in rows[5]
    # 120 runs do not fit: the table is cut, and says how to see the rest
    assert len(rows) == 50
    assert out.splitlines()[-1] == "... 70 more runs not shown (70 COMPLETED); --all lists every run"
    assert len(table_rows(run_cli("status", exp, "--all", check=True).stdout)) == 120


def test_stale_sidecar_is_named_with_the_command_that_fixes_it(workdir):
    exp = planned(workdir, "stale", 3)
    as_if_running(exp, {"run0": "RUNNING"}, heartbeat_age=2.5 * 10, interval=10)
    assert status_json(exp)["health"]["sidecar"] == "alive"
    as_if_running(exp, {"run0": "RUNNING"}, heartbeat_age=3 * 10 + 5, interval=10)
    health = status_json(exp)["health"]
    assert health["sidecar"] == "stale" and health["stale_after_s"] == 30
    assert health["fix"] == f"autoexp resume {exp}"
    line = run_cli("status", exp, check=True).stdout.splitlines()[2]
    assert line.startswith("sidecar: STALE") and re.search(r"no heartbeat for 3[5-7]s", line)
    assert line.endswith(f"Fix: autoexp resume {exp}")
    # no interval recorded by the sidecar: the experiment's monitor.interval counts
    exp2 = planned(workdir, "stale2", 2, interval=100)
    as_if_running(exp2, {"run0": "RUNNING"}, heartbeat_age=250, interval=None)
    assert status_json(exp2)["health"]["sidecar"] == "alive"
    as_if_running(exp2, {"run0": "RUNNING"}, heartbeat_age=350, interval=None)
    assert status_json(exp2)["health"]["sidecar"] == "stale"


def test_sidecar_not_started_yet_then_never_started(workdir):
    exp = planned(workdir, "queued", 2)
    as_if_running(exp, default="PENDING", heartbeat_age=None, interval=10)
    assert status_json(exp)["health"]["sidecar"] == "starting"
    with statefile.locked(exp) as st:
        st["sidecar"]["submitted"] = "2020-01-01T00:00:00Z"
    health = status_json(exp)["health"]
    assert health["sidecar"] == "stale" and health["fix"]
    assert "not started (more than 3 polling intervals of 10s): still queued, or lost" in \
        run_cli("status", exp, check=True).stdout


def test_finished_and_planned_experiments(workdir):
    exp = planned(workdir, "fin", 2)
    assert status_json(exp)["health"]["sidecar"] == "not_launched"
    assert "planned, not launched" in run_cli("status", exp, check=True).stdout
    as_if_running(exp, heartbeat_age=10_000, done=True)
    doc = status_json(exp)
    assert doc["health"]["sidecar"] == "finished" and doc["health"]["fix"] is None


def test_json_is_the_state_plus_health_and_progress(workdir):
    exp = planned(workdir, "doc", 6)
    state = as_if_running(exp, {"run1": "FAILED", "run2": "RUNNING", "run3": "CANCELLED"})
    doc = status_json(exp)
    assert {k: v for k, v in doc.items() if k not in ("health", "progress")} == state
    assert doc["progress"] == {"runs": 6, "finished": 5, "failed": 1, "cancelled": 1, "active": 1, "held": 0}
    assert sum(doc["counts"].values()) == len(doc["runs"]) == 6
    assert set(doc["health"]) == {"sidecar", "job_id", "host", "heartbeat", "stopped", "age_s", "interval_s",
                                  "stale_after_s", "fix", "log", "last_error"}
    api = autoexp.status(exp)  # the Python API returns the same document
    for document in (api, doc):
        del document["health"]["age_s"]
    assert api == doc
    assert run_cli("status", exp, "--json", check=True).stdout.count("\n") == 1  # one line: --watch --json


def test_json_of_a_state_written_in_another_layout(workdir):
    """status --json copies the runs' text from state.json as dumps lays it out; any other valid
    JSON (written by hand, by another tool) is parsed and printed the same."""
    exp = planned(workdir, "layout", 4)
    state = as_if_running(exp, {"run1": "FAILED"})
    for text in (json.dumps(state), json.dumps(state, indent=1), json.dumps(state, indent=2)):
        (exp / "state.json").write_text(text)
        doc = status_json(exp)
        assert {k: v for k, v in doc.items() if k not in ("health", "progress")} == state


def test_json_counts_a_staged_experiment_per_stage_in_any_layout(workdir):
    """A pipeline's ``status --json`` has its counts per stage, read from state.json as the sidecar
    writes it (compact lines) or as any other tool writes it."""
    exp = planned(workdir, "staged", 4)
    with statefile.locked(exp) as st:
        for run in st["runs"].values():
            run["stage"] = "train" if run["index"] < 3 else "eval"
    state = as_if_running(exp, {"run1": "FAILED"})
    expected = {"train": {"COMPLETED": 2, "FAILED": 1}, "eval": {"COMPLETED": 1}}
    assert status_json(exp)["stages"] == expected
    (exp / "state.json").write_text(json.dumps(state, indent=2))
    assert status_json(exp)["stages"] == expected


def test_the_table_reads_the_state_without_its_history(workdir):
    exp = planned(workdir, "nohist", 5)
    as_if_running(exp, {"run1": "FAILED"})
    with statefile.locked(exp) as st:
        for i in range(50):
            model.log(st, "STATE_CHANGE", f"run{i % 5}", Previous="PENDING", Current="RUNNING ]\n ]")
    full = statefile.read(exp)
    assert len(full["history"]) > 50
    assert statefile.read(exp, history=False) == {**full, "history": []}
    assert read_state(exp)["history"] == full["history"]


def run_in_terminal(*args, env=None) -> str:
    """Run the CLI with a pseudo-terminal as its stdout, as a person at a terminal does."""
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "autoexp", *map(str, args)], stdout=sub, stderr=sub,
                            env={**os.environ, "TERM": "xterm", **(env or {})})
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(main)
    return b"".join(chunks).decode()


def test_colour_only_on_a_terminal(workdir):
    exp = planned(workdir, "colour", 3)
    as_if_running(exp, {"run0": "FAILED"})
    on_tty = run_in_terminal("status", exp)
    assert "\x1b[31mFAILED" in on_tty and "\x1b[32m" in on_tty
    assert "\x1b[" not in run_in_terminal("status", exp, env={"NO_COLOR": "1"})
    assert "\x1b[" not in run_cli("status", exp, check=True).stdout


def test_watch_redraws_until_every_run_has_ended(workdir):
    exp = planned(workdir, "watch", 2)
    as_if_running(exp, {"run0": "RUNNING"})

    def finish():
        time.sleep(2.5)
        as_if_running(exp, done=True)
    threading.Thread(target=finish).start()
    started = time.monotonic()
    proc = run_cli("status", exp, "--watch", "--every", "0.5", timeout=60, check=True)
    assert time.monotonic() - started < 30
    frames = proc.stdout.split("sidecar: ")[1:]
    assert len(frames) >= 3
    assert frames[0].startswith("alive") and frames[-1].startswith("finished - every run has ended")


def test_no_exp_means_the_newest_and_list_shows_counts(workdir):
    old = planned(workdir, "older", 2)
    as_if_running(old, {"run0": "FAILED"}, done=True)
    new = planned(workdir, "newer", 3)
    os.utime(old / "state.json", (time.time() - 100, time.time() - 100))
    assert status_json(new)["experiment"] == "newer"
    assert json.loads(run_cli("status", "--json", cwd=workdir, check=True).stdout)["experiment"] == "newer"
    assert json.loads(run_cli("status", "older", "--json", cwd=workdir, check=True).stdout)["experiment"] == "older"
    listed = run_cli("list", cwd=workdir, check=True).stdout.splitlines()
    assert listed[0].split()[:5] == ["EXPERIMENT", "RUNS", "FINISHED", "FAILED", "SIDECAR"]
    assert listed[1].split()[:5] == ["newer", "3", "0", "0", "not_launched"]
    assert listed[2].split()[:5] == ["older", "2", "2", "1", "finished"]
    as_json = json.loads(run_cli("list", "--json", cwd=workdir, check=True).stdout)
    assert [(e["experiment"], e["counts"]) for e in as_json] == [("newer", {"PLANNED": 3}),
                                                                  ("older", {"COMPLETED": 1, "FAILED": 1})]


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_exit_2_and_changes_nothing(workdir):
    proc = run_cli("status", "no-such-experiment", cwd=workdir)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "no experiment 'no-such-experiment'" in proc.stderr
    exp = planned(workdir, "bad", 3)
    as_if_running(exp, {"run1": "RUNNING"})
    for args in (("cancel", exp, "run9"), ("retry", exp, "runn1"), ("logs", exp, "nope")):
        before = (exp / "state.json").read_bytes()
        proc = run_cli(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"autoexp: error: {exp}: RUN: no run")
        assert (exp / "state.json").read_bytes() == before
    assert "did you mean 'run1'?" in run_cli("retry", exp, "runn1").stderr
    assert run_cli("retry", exp).returncode == 2  # neither runs nor --failed


def test_a_newer_state_schema_is_refused_by_every_command(workdir):
    exp = planned(workdir, "future", 2)
    as_if_running(exp, {"run0": "RUNNING"})
    data = read_state(exp)
    data["schema"] = 2
    (exp / "state.json").write_text(json.dumps(data))
    before = (exp / "state.json").read_bytes()
    for args in (("status", exp), ("status", exp, "--json"), ("cancel", exp), ("cancel", exp, "run0"),
                 ("retry", exp, "--failed"), ("resume", exp), ("logs", exp, "run0")):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr == f"autoexp: error: {exp / 'state.json'}: schema: schema 2 is not supported by " \
            "this autoexp (it reads schema 1); upgrade autoexp\n"
        assert (exp / "state.json").read_bytes() == before


def test_status_does_not_import_the_planning_stack(workdir):
    """`autoexp status` must start fast: no jinja2, yaml or submitit on its import path."""
    exp = planned(workdir, "light", 2)
    as_if_running(exp)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "autoexp", "status", str(exp)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "autoexp.statusview" in imported
    assert not {"jinja2", "yaml", "submitit", "autoexp.plan", "autoexp.config"} & imported


def test_a_sidecar_poll_does_not_import_the_planner(workdir):
    """The sidecar shares a small node for days: a poll that renders nothing carries no Jinja."""
    exp = planned(workdir, "lean", 2)
    as_if_running(exp, done=True)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "autoexp", "sidecar", str(exp), "--once"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "autoexp.sidecar.poll" in imported
    assert not {"jinja2", "autoexp.plan", "autoexp.usertemplates"} & imported
