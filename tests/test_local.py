"""The local scheduler: the same scripts, environment, logs and max_parallel cap, without Slurm."""

from __future__ import annotations

import datetime as dt
import json
import sys

import autoexp
from autoexp.local import LocalScheduler
from conftest import REPO, read_state, wait_for, write_config


def test_local_backend_runs_the_array_with_its_cap(workdir):
    path = write_config(workdir, {
        "name": "loc", "max_parallel": 2, "run_name": "r{{ run_index }}",
        "command": f"{sys.executable} {REPO / 'tests' / 'argv_probe.py'} {{{{ value }}}} && sleep 1",
        "sweep": {"list": [{"value": f"v {i}"} for i in range(5)]}})
    result = autoexp.launch(autoexp.load_config(path), scheduler="local")
    exp = result.exp_dir
    sched = LocalScheduler(exp)
    array_id = result.arrays[0]

    def finished():
        records = sched.query([array_id], dt.datetime.now(dt.timezone.utc))
        return records if len(records) == 5 and all(r.terminal for r in records) else None
    records = wait_for(finished, timeout=60, what="local tasks")
    assert {r.state for r in records} == {"COMPLETED"}
    assert sorted(r.job_id for r in records) == [f"{array_id}_{i}" for i in range(5)]
    for i in range(5):
        run_dir = exp / "runs" / f"r{i}"
        probe = json.loads((run_dir / "probe.json").read_text())
        assert probe["argv"] == [f"v {i}"] and probe["cwd"] == str(run_dir)
        assert probe["env"]["AUTOEXP_RUN_INDEX"] == str(i)
        assert "probe" in (run_dir / f"slurm-{array_id}_{i}.out").read_text()
    # never more than two at once: every task overlaps with at most one other
    spans = [(r.started, r.completed) for r in records]
    for start, end in spans:
        overlapping = [s for s, e in spans if s < end and e > start]
        assert len(overlapping) <= 2
    assert read_state(exp)["scheduler"] == "local"


def test_local_cancel_stops_running_and_pending_tasks(workdir):
    path = write_config(workdir, {"name": "loccancel", "max_parallel": 1, "command": "sleep 30",
                                  "sweep": {"grid": {"x": [1, 2]}}})
    result = autoexp.launch(autoexp.load_config(path), scheduler="local")
    sched = LocalScheduler(result.exp_dir)
    now = dt.datetime.now(dt.timezone.utc)
    wait_for(lambda: any(r.state == "RUNNING" for r in sched.query(result.arrays, now)), timeout=30,
             what="a running task")
    sched.cancel(result.arrays)
    records = wait_for(lambda: (lambda rs: rs if all(r.terminal for r in rs) else None)(sched.query(result.arrays, now)),
                       timeout=30, what="cancelled tasks")
    assert {r.state for r in records} == {"CANCELLED"}


def test_a_lost_submission_is_found_by_its_tag_not_made_twice(workdir):
    """Intents (actions.settle_intents) with the local scheduler: one that was submitted is recorded
    as if its answer had come, one that never was is dropped; neither is submitted again."""
    from autoexp import actions, clock, model, statefile
    from autoexp.scheduler import Submission

    path = write_config(workdir, {"name": "lost", "command": "true", "sweep": {"grid": {"x": [1, 2]}}})
    exp = autoexp.plan_experiment(autoexp.load_config(path), scheduler="local").exp_dir
    sched = LocalScheduler(exp)
    made = model.new_intent("a1b2c3", "array.sbatch", 0, [(0, "x1", 1)], "0", "launch")
    never = model.new_intent("d4e5f6", "array.sbatch", 0, [(1, "x2", 1)], "1", "launch")
    late = dict(never, time=clock.iso(clock.epoch(never["time"]) - 120))  # a minute on, still unknown
    job = sched.submit(Submission(exp / "array.sbatch", array="0", tag="a1b2c3"))  # its answer "lost"
    with statefile.locked(exp) as st:
        st["intents"] = [made, never]
        assert actions.settle_intents(exp, st, sched) == {"x2"}  # too young to call it never made
        assert st["intents"] == [never]
        st["intents"] = [late]
        assert actions.settle_intents(exp, st, sched) == set()
    st = read_state(exp)
    assert st["intents"] == [] and [a["job_id"] for a in st["arrays"]] == [job]
    assert st["runs"]["x1"]["attempts"][0]["job_id"] == f"{job}_0" and st["runs"]["x2"]["attempts"] == []
    assert [e["kind"] for e in st["history"][-3:]] == ["SUBMIT_ARRAY", "SUBMIT_FOUND", "SUBMIT_NOT_MADE"]
    assert len(list((exp / ".local" / "jobs").glob("*.json"))) == 1  # nothing submitted again
