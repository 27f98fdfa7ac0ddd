"""The Python API a notebook uses: each CLI command is one call returning plain data, and
``autoexp.current_run()`` inside a task."""

from __future__ import annotations

import json
import sys

import pytest

import autoexp
from autoexp.run import VARIABLES
from conftest import autoexp as run_cli, wait_state_done, write_config

PROBE = """\
import json, autoexp
run = autoexp.current_run()
json.dump({"name": run.name, "index": run.index, "params": run.params, "run_dir": str(run.run_dir),
           "exp_dir": str(run.exp_dir), "attempt": run.attempt, "job_id": run.job_id,
           "types": {k: type(v).__name__ for k, v in run.params.items()}}, open("current.json", "w"))
"""


def test_current_run_outside_a_task_is_a_clear_error(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(autoexp.NotInRunError, match=r"works only inside a task autoexp started: AUTOEXP_EXP_DIR"):
        autoexp.current_run()
    assert issubclass(autoexp.NotInRunError, RuntimeError) and issubclass(autoexp.NotInRunError, autoexp.AutoexpError)


@pytest.mark.usefixtures("slurm")
def test_current_run_inside_a_task_has_the_params_typed_as_in_the_config(workdir, cleanup):
    (workdir / "probe.py").write_text(PROBE)
    points = [{"lr": 1.0e-5, "rank": 8, "label": "a b", "flag": True, "layers": [1, 2], "none": None},
              {"lr": 3.0e-4, "rank": 16, "label": "c", "flag": False, "layers": [3], "none": None}]
    path = write_config(workdir, {"name": "probe", "site": "local", "output_dir": str(workdir / "experiments"),
                                  "command": f"{sys.executable} {{{{ config_dir }}}}/probe.py",
                                  "run_name": "r{{ run_index }}", "sweep": {"list": points},
                                  "monitor": {"interval": 1}})
    launched = autoexp.launch(autoexp.load_config(path))
    cleanup(launched.exp_dir)
    wait_state_done(launched.exp_dir)
    for index, point in enumerate(points):
        record = json.loads((launched.exp_dir / "runs" / f"r{index}" / "current.json").read_text())
        assert record == {"name": f"r{index}", "index": index, "params": point,
                          "run_dir": str(launched.exp_dir / "runs" / f"r{index}"), "exp_dir": str(launched.exp_dir),
                          "attempt": 1, "job_id": f"{launched.arrays[0]}_{index}",
                          "types": {"lr": "float", "rank": "int", "label": "str", "flag": "bool", "layers": "list",
                                    "none": "NoneType"}}


@pytest.mark.usefixtures("slurm")
def test_each_command_is_one_call_returning_plain_data(workdir, cleanup):
    path = write_config(workdir, {"name": "api", "site": "local", "output_dir": str(workdir / "experiments"),
                                  "command": "sleep {{ secs }}", "sweep": {"grid": {"secs": [9]}},
                                  "monitor": {"interval": 1}})
    cfg = autoexp.load_config(path, ["sweep.grid.secs=[3,4,5]", "max_parallel=1"])
    assert cfg["max_parallel"] == 1
    built = autoexp.plan_experiment(cfg)
    assert [run.name for run in built.runs] == ["secs3", "secs4", "secs5"]
    assert autoexp.status(built.exp_dir)["counts"] == {"PLANNED": 3}

    launched = autoexp.launch(cfg)
    cleanup(launched.exp_dir)
    exp = launched.exp_dir
    assert exp == built.exp_dir and len(launched.arrays) == 1 and launched.sidecar

    cancelled = autoexp.cancel(exp, ["secs5"])  # max_parallel=1: it waits behind the other two
    assert cancelled["runs"] == ["secs5"] and cancelled["jobs"] == [f"{launched.arrays[0]}_2"]
    wait_state_done(exp)
    doc = autoexp.status(exp)
    assert {n: r["state"] for n, r in doc["runs"].items()} == {"secs3": "COMPLETED", "secs4": "COMPLETED",
                                                              "secs5": "CANCELLED"}
    cli = json.loads(run_cli("status", exp, "--json", check=True).stdout)
    assert cli["runs"] == json.loads(json.dumps(doc["runs"])) and cli["counts"] == doc["counts"]
    assert doc["progress"] == {"runs": 3, "finished": 3, "failed": 0, "cancelled": 1, "active": 0, "held": 0}

    retried = autoexp.retry(exp, ["secs5"])
    assert retried["runs"] == ["secs5"] and len(retried["arrays"]) == 1
    run = wait_state_done(exp)["runs"]["secs5"]
    assert run["state"] == "COMPLETED" and [a["state"] for a in run["attempts"]] == ["CANCELLED", "COMPLETED"]
    assert autoexp.resume(exp)["submitted"] is False  # every run has ended: nothing to watch
