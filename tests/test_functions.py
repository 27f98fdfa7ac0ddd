"""Python callables as runs, through submitit, on the real cluster: one array plus the sidecar, return
values and exceptions readable afterwards, retries, and a Checkpointable that outlives its limit."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid

import cloudpickle
import pytest
import submitit

import autoexp
from conftest import autoexp as run_cli, sacct_rows, wait_state_done, write_config

# The tasks cannot import this test module: pickle its functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def config(workdir, name, **keys):
    return write_config(workdir, {"name": f"{name}-{uuid.uuid4().hex[:6]}", "site": "local",
                                  "output_dir": str(workdir / "experiments"), "monitor": {"interval": 1},
                                  "slurm": {"time": "00:05:00"}, **keys})


def score(lr, rank, tag):
    run = autoexp.current_run()
    return {"score": lr * rank, "tag": tag, "params": run.params, "name": run.name, "attempt": run.attempt,
            "cwd": os.getcwd()}


@pytest.mark.core
@pytest.mark.usefixtures("slurm")
def test_a_map_over_six_points_is_one_array_plus_the_sidecar(workdir, cleanup):
    path = config(workdir, "fmap", sweep={"grid": {"lr": [1.0e-3, 1.0e-2, 0.1], "rank": [8, 16], "tag": ["x"]}})
    launched = autoexp.launch_function(score, path)
    cleanup(launched.exp_dir)
    assert len(launched.arrays) == 1 and launched.sidecar
    state = wait_state_done(launched.exp_dir, timeout=300)
    array = launched.arrays[0]

    name = state["experiment"]
    rows = [r for r in sacct_rows([array, launched.sidecar]) if name in r[2]]
    assert sorted(r[0] for r in rows) == sorted([f"{array}_{i}" for i in range(6)] + [launched.sidecar])
    assert {(r[1], r[2]) for r in rows if r[0] != launched.sidecar} == {("COMPLETED", f"autoexp-{name}")}

    results = autoexp.results(launched.exp_dir)
    assert set(results) == set(state["runs"]) and len(results) == 6
    for run_name, run in state["runs"].items():
        value, params = results[run_name], run["params"]
        assert value == {"score": params["lr"] * params["rank"], "tag": "x", "params": params, "name": run_name,
                         "attempt": 1, "cwd": str(launched.exp_dir / "runs" / run_name)}
        assert type(value["params"]["lr"]) is float and type(value["params"]["rank"]) is int
        assert launched.jobs[run_name].result() == value  # submitit's own Job API reads the same pickle
        assert run["state"] == "COMPLETED" and shortened(run["result"], value)
        log = launched.exp_dir / "runs" / run_name / f"slurm-{array}_{run['index']}.out"
        assert f"autoexp: result: {value!r}"[:60] in log.read_text()

    doc = json.loads(run_cli("status", launched.exp_dir, "--json", check=True).stdout)
    assert {n: r["result"] for n, r in doc["runs"].items()} == {n: r["result"] for n, r in state["runs"].items()}


def shortened(text, value) -> bool:
    """state.json keeps a result's repr, cut to 200 characters."""
    return len(text) <= 200 and repr(value).startswith(text.removesuffix("..."))


def flaky(x):
    if autoexp.current_run().attempt == 1:
        raise ValueError(f"x={x} fails on its first attempt")
    return x * 10


@pytest.mark.core
@pytest.mark.usefixtures("slurm")
def test_an_exception_is_readable_and_a_retry_runs_the_call_again(workdir, cleanup):
    launched = autoexp.launch_function(flaky, config(workdir, "flaky", sweep={"list": [{"x": 3}]}))
    cleanup(launched.exp_dir)
    state = wait_state_done(launched.exp_dir, timeout=300)
    (name, run), = state["runs"].items()
    assert run["state"] == "FAILED" and run["error"] == "ValueError: x=3 fails on its first attempt"
    failed = autoexp.results(launched.exp_dir)[name]
    assert isinstance(failed, autoexp.RunFailed) and "ValueError: x=3 fails" in str(failed)
    # the frame of the call itself; its source line only with older cloudpickle (3.1.3 names the code
    # of a function pickled by value "<dynamic-code>", so no file to quote from)
    assert re.search(r'line \d+, in flaky\n(?: .*\n)*ValueError: x=3 fails', failed.traceback)

    retried = autoexp.retry(launched.exp_dir, failed=True)
    assert retried["runs"] == [name]
    time.sleep(2)
    state = wait_state_done(launched.exp_dir, timeout=300)
    run = state["runs"][name]
    assert autoexp.results(launched.exp_dir) == {name: 30}
    assert run["state"] == "COMPLETED" and run["result"] == "30" and "error" not in run
    assert [(a["attempt"], a["state"]) for a in run["attempts"]] == [(1, "FAILED"), (2, "COMPLETED")]
    assert run["attempts"][1]["job_id"] == f"{retried['arrays'][0]}_0"
    assert [(e["name"], e["groups"]) for e in run["events"]] == [
        ("raised", {"error": "ValueError: x=3 fails on its first attempt"}), ("returned", {"value": "30"})]
    shown = run_cli("status", launched.exp_dir, check=True).stdout
    assert "returned (value=30)" in shown
    results = [e["details"] for e in state["history"] if e["kind"] == "RESULT"]
    assert results == [{"Attempt": 1, "Error": "ValueError: x=3 fails on its first attempt"},
                       {"Attempt": 2, "Value": "30"}]


class Steps(submitit.helpers.Checkpointable):
    """Counts one step a second; submitit pickles the count when the time limit's signal comes."""

    def __init__(self):
        self.done, self.attempts = 0, []

    def __call__(self, steps):
        self.attempts.append(autoexp.current_run().attempt)
        while self.done < steps:
            time.sleep(1)
            self.done += 1
        return {"steps": self.done, "attempts": self.attempts}


@pytest.mark.slow
@pytest.mark.core
@pytest.mark.usefixtures("slurm")
def test_a_checkpointable_outlives_its_time_limit_in_several_allocations(workdir, cleanup):
    path = config(workdir, "ckpt", slurm={"time": "00:01:00"}, requeue={"signal": "USR2", "before": 10},
                  sweep={"list": [{"steps": 180}]})
    launched = autoexp.launch_function(Steps(), path)
    cleanup(launched.exp_dir)
    state = wait_state_done(launched.exp_dir, timeout=720)
    (name, run), = state["runs"].items()

    value = autoexp.results(launched.exp_dir)[name]
    assert value["steps"] == 180
    seen = value["attempts"]  # AUTOEXP_ATTEMPT in each allocation that took part
    assert seen[0] == 1 and seen == sorted(set(seen)) and len(seen) >= 3

    attempts = run["attempts"]
    assert run["state"] == "COMPLETED" and attempts[-1]["state"] == "COMPLETED"
    assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert {a["job_id"] for a in attempts} == {f"{launched.arrays[0]}_0"}  # requeued: the same job
    assert {a["state"] for a in attempts[:-1]} <= {"REQUEUED", "PREEMPTED", "NODE_FAIL"}
    assert sum(a["state"] == "REQUEUED" for a in attempts) >= 2
    allocations = sacct_rows([launched.arrays[0]])
    assert [r[1] for r in allocations] == [a["state"] for a in attempts]
    changes = [e["details"]["Current"] for e in state["history"] if e["kind"] == "STATE_CHANGE" and e["subject"] == name]
    assert not {"FAILED", "TIMEOUT"} & set(changes)
    summary = (launched.exp_dir / "experiment_summary.md").read_text()
    assert f"| {name} | COMPLETED |" in summary and f"{len(attempts)} allocations" in summary


def test_a_function_sweep_needs_no_command_and_a_signal_inside_its_time_limit(workdir):
    from autoexp.functions import function_config

    cfg = function_config(config(workdir, "cfg", sweep={"grid": {"x": [1, 2]}}))
    assert cfg["command"] == f"{cfg.get('python') or sys.executable} -u -m autoexp.functions"
    assert cfg["requeue"] == {"signal": "USR2", "before": 60, "max": 10, "by": "command"}
    assert cfg["env"]["SUBMITIT_PREEMPT_SIGNAL"] == "USR2"

    short = config(workdir, "short", slurm={"time": "00:01:00"})
    with pytest.raises(autoexp.InputError, match=r"requeue\.before: 60 s is not shorter than the time limit"):
        function_config(short)
