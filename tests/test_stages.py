"""Multi-stage experiments (issue 11): stages over one sweep, per-run ordering with Slurm's
aftercorr, SKIPPED later stages, retries followed, a prepare step, start spacing; on the real
cluster, and the example on the local scheduler."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

import autoexp
from autoexp import clock
from autoexp.errors import InputError
from conftest import REPO, autoexp as run_cli, read_state, sacct_rows, wait_for, wait_state_done, write_config

PIPELINE = REPO / "examples" / "pipeline.yaml"
slurm_only = pytest.mark.usefixtures("slurm")
pytestmark = pytest.mark.core  # the cluster tests among them run on Slurm 24.11 too (tests/run-24.sh)


def staged(name: str, train: str, evaluate: str = "echo eval {{ run_name }}", **extra) -> dict:
    """A small staged config: points x=1..3, train then eval after it."""
    return {"name": name, "sweep": {"grid": {"x": [1, 2, 3]}}, "monitor": {"interval": 2},
            "slurm": {"time": "00:05:00"},
            "stages": {"train": {"command": train}, "eval": {"after": "train", "command": evaluate}}, **extra}


# --------------------------------------------------------------------------- config and plan

@pytest.mark.parametrize("change,words", [
    ({"command": "echo"}, ["command", "either command or stages"]),
    ({"stages": {"eval": {"after": "train", "command": "echo"}}}, ["stages.eval.after", "not another stage"]),
    ({"stages": {"train": {"command": "echo", "axis": {"t": [1, 2]}}, "eval": {"after": "train", "command": "e"}}},
     ["stages.eval.after", "has an axis"]),
    ({"stages": {"train": {"comand": "echo"}}}, ["stages.train.comand", "did you mean 'command'"]),
    ({"stages": {"train": {"command": "echo", "skip": [{"x": 1}, {"x": 2}, {"x": 3}]}}},
     ["stages.train", "no sweep point runs this stage"]),
    ({"start_spacing": "soon"}, ["start_spacing", "not a duration"]),
])
def test_bad_stage_config_names_the_key(workdir, change, words):
    data = {"name": "bad", "sweep": {"grid": {"x": [1, 2, 3]}}, "stages": {"train": {"command": "echo"}}}
    data.update(change)
    path = write_config(workdir, data)
    with pytest.raises(InputError) as err:
        autoexp.plan_experiment(autoexp.load_config(path), scheduler="local", write=False)
    for word in words:
        assert word in str(err.value)
    proc = run_cli("plan", path, cwd=workdir, env={"AUTOEXP_SCHEDULER": "local"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and not (workdir / "experiments").exists()


def test_the_pipeline_plans_a_unit_per_stage_point_and_axis_value(workdir):
    built = autoexp.plan_experiment(autoexp.load_config(PIPELINE, [f"output_dir={workdir}"]), scheduler="local")
    st = read_state(built.exp_dir)
    names = list(st["runs"])
    assert names[:3] == ["prepare", "lr1e-05+train", "lr5e-05+train"]  # the control point is not trained
    evals = [n for n in names if st["runs"][n].get("stage") == "eval"]
    assert len(evals) == 3 * 2 * 2 and "control+eval+checkpoint=2+task=piqa" in evals
    assert st["runs"]["lr5e-05+eval+checkpoint=1+task=arc"]["after"] == ["prepare", "lr5e-05+train"]
    assert st["runs"]["control+eval+checkpoint=1+task=arc"]["after"] == ["prepare"]
    # task i of every eval array is point i, as it is in the train array: aftercorr pairs them
    plan = {a["script"]: a for a in st["plan"]["arrays"]}
    assert plan["train.sbatch"]["spec"] == "0-1" and plan["eval_0.sbatch"]["spec"] == "0-2"
    for name in evals:
        run = st["runs"][name]
        array = next(a for a in st["plan"]["arrays"] if a["offset"] <= run["index"] < a["offset"] + a["count"]
                     and a["stage"] == "eval")
        train = st["runs"].get(f"{run['point']}+train")
        if train:
            assert run["index"] - array["offset"] == train["index"] - plan["train.sbatch"]["offset"]
    assert "start_spacing" in (built.exp_dir / "train.sbatch").read_text()
    assert "start_spacing" not in (built.exp_dir / "prepare.sbatch").read_text()


def test_the_pipeline_finishes_on_the_local_scheduler(workdir):
    env = {"AUTOEXP_SCHEDULER": "local"}
    proc = run_cli("launch", PIPELINE, f"output_dir={workdir}", "monitor.interval=1", cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "pipeline"
    st = wait_state_done(exp, timeout=240)
    assert {r["state"] for r in st["runs"].values()} == {"COMPLETED"}, st["counts"]
    summary = (exp / "experiment_summary.md").read_text()
    assert "## Stage: train" in summary and "## Stage: eval" in summary
    eval_rows = [line for line in summary.split("## Stage: eval")[1].split("##")[0].splitlines()
                 if line.startswith("| ") and "COMPLETED" in line]
    assert len(eval_rows) == 12  # a row per run x task x checkpoint
    control = (exp / "runs" / "control").glob("slurm-*.out")
    assert all("evaluating the base model" in log.read_text() for log in control)
    _assert_spacing(exp, 1.0)


def _starts(exp) -> list[int]:
    found = []
    for log in exp.glob("runs/*/slurm-*.out"):
        found += [int(m) for m in re.findall(r"start_spacing: the command begins at (\d+) ms", log.read_text())]
    return sorted(found)


def _assert_spacing(exp, seconds: float) -> None:
    starts = _starts(exp)
    assert starts
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= seconds * 1000 - 5, gaps  # date's milliseconds: a few ms of rounding


# --------------------------------------------------------------------------- on the cluster

def _squeue(ids) -> list[str]:
    proc = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True,
                          timeout=60)
    return proc.stdout.split()


def _times(job_ids) -> dict[str, tuple[str, str]]:
    return {row[0]: (row[1], row[2]) for row in sacct_rows(job_ids, fields="JobID,Start,End")}


@slurm_only
def test_the_pipeline_on_slurm_one_array_per_stage_and_axis_value(workdir, cleanup):
    exp = workdir / "pipeline"
    cleanup(exp)
    proc = run_cli("launch", PIPELINE, f"output_dir={workdir}", "monitor.interval=2", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    st = wait_state_done(exp, timeout=300)
    assert {r["state"] for r in st["runs"].values()} == {"COMPLETED"}, st["counts"]
    # sbatch calls: prepare, train, and per eval axis value one for the trained points and one
    # for the control (it waits for nothing but prepare), plus the sidecar: nothing per task.
    scripts = [a["script"] for a in st["arrays"]]
    assert scripts.count("prepare.sbatch") == 1 and scripts.count("train.sbatch") == 1
    assert len([s for s in scripts if s.startswith("eval_")]) == 4 * 2 and len(scripts) == 10
    times = _times([a["job_id"] for a in st["arrays"]])
    prepare_end = times[st["runs"]["prepare"]["job_id"]][1]
    for name, run in st["runs"].items():
        if run.get("stage") == "train":
            assert times[run["job_id"]][0] >= prepare_end
        if run.get("stage") == "eval" and run["point"] != "control":
            assert times[run["job_id"]][0] >= times[st["runs"][f"{run['point']}+train"]["job_id"]][1]
    doc = json.loads(run_cli("status", exp, "--json", check=True).stdout)
    assert doc["stages"] == {"prepare": {"COMPLETED": 1}, "train": {"COMPLETED": 2}, "eval": {"COMPLETED": 12}}
    log = run_cli("logs", exp, "lr1e-05", "train", check=True).stdout
    assert "saved checkpoint" in log and "checkpoint-2.txt" in log
    ambiguous = run_cli("logs", exp, "lr1e-05", "eval")
    assert ambiguous.returncode == 2 and "name one" in ambiguous.stderr
    assert "accuracy" in run_cli("logs", exp, "lr1e-05", "eval+checkpoint=2+task=arc", check=True).stdout
    log = autoexp.log_path(exp, "control", stage="eval+checkpoint=1+task=piqa")  # in logs/eval_<k>/, linked
    assert log.parent.parent == exp / "logs" and (exp / "runs" / "control" / log.name).resolve() == log.resolve()
    assert "SUBMIT_ARRAY: eval_3.sbatch" in (exp / "events.log").read_text()


@slurm_only
def test_a_failed_training_skips_its_evaluation_while_others_run_on(workdir, cleanup):
    train = ('if [ {{ x }} = 2 ] && [ "$AUTOEXP_ATTEMPT" = 1 ]; then exit 3; fi; '
             'if [ {{ x }} = 3 ]; then sleep 25; fi; echo trained {{ x }}')
    path = write_config(workdir, staged("skips", train))
    proc = run_cli("launch", path, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    exp = workdir / "experiments" / "skips"
    cleanup(exp)
    st = wait_state_done(exp, timeout=300)
    runs = st["runs"]
    assert runs["x2+train"]["state"] == "FAILED"
    assert runs["x2+eval"]["state"] == "SKIPPED" and runs["x2+eval"]["attempts"] == []
    assert "x2+train FAILED" in runs["x2+eval"]["skipped"]
    assert runs["x1+eval"]["state"] == runs["x3+eval"]["state"] == "COMPLETED"
    times = _times([a["job_id"] for a in st["arrays"]])
    # per-run ordering: x1's evaluation ran while x3 still trained
    assert times[runs["x1+eval"]["job_id"]][0] < times[runs["x3+train"]["job_id"]][1]
    assert times[runs["x3+eval"]["job_id"]][0] >= times[runs["x3+train"]["job_id"]][1]
    assert _squeue([a["job_id"] for a in st["arrays"]]) == []  # nothing left waiting
    summary = (exp / "experiment_summary.md").read_text()
    assert "## Stage: train" in summary and "## Stage: eval" in summary
    assert re.search(r"\| x2\+eval \| SKIPPED .*skipped: waited for x2\+train FAILED", summary)
    assert "SKIP: x2+eval" in (exp / "events.log").read_text()

    # retried by the run's name (every stage of it), from Python: the evaluation follows the retry
    retried = autoexp.retry(exp, ["x2"])
    assert retried["runs"] == ["x2+train", "x2+eval"]
    st = wait_state_done(exp, timeout=300)
    runs = st["runs"]
    assert runs["x2+train"]["state"] == runs["x2+eval"]["state"] == "COMPLETED"
    assert "skipped" not in runs["x2+eval"]
    times = _times([a["job_id"] for a in st["arrays"]])
    assert times[runs["x2+eval"]["job_id"]][0] >= times[runs["x2+train"]["job_id"]][1]


@slurm_only
def test_a_retried_training_gets_its_evaluation_after_the_retry(workdir, cleanup):
    train = 'if [ {{ x }} = 2 ] && [ "$AUTOEXP_ATTEMPT" = 1 ]; then sleep 4; exit 1; fi; echo trained'
    data = staged("follows", train)
    data["stages"]["train"]["monitor"] = {"retries": {"max": 1, "on": ["FAILED"]}}
    path = write_config(workdir, data)
    assert run_cli("launch", path, cwd=workdir).returncode == 0
    exp = workdir / "experiments" / "follows"
    cleanup(exp)
    st = wait_state_done(exp, timeout=300)
    runs = st["runs"]
    assert {r["state"] for r in runs.values()} == {"COMPLETED"}, st["counts"]
    assert len(runs["x2+train"]["attempts"]) == 2
    evaluation = runs["x2+eval"]["attempts"]
    assert len(evaluation) == 1  # the task that waited on the failed attempt was withdrawn, not counted
    assert evaluation[0]["after_jobs"]["x2+train"] == runs["x2+train"]["attempts"][1]["job_id"]
    times = _times([a["job_id"] for a in st["arrays"]])
    assert times[evaluation[0]["job_id"]][0] >= times[runs["x2+train"]["attempts"][1]["job_id"]][1]


@slurm_only
def test_a_failing_prepare_starts_no_run_and_leaves_nothing_queued(workdir, cleanup):
    data = staged("noprep", "echo trained", prepare={"command": "echo preparing; exit 4"})
    path = write_config(workdir, data)
    assert run_cli("launch", path, cwd=workdir).returncode == 0
    exp = workdir / "experiments" / "noprep"
    cleanup(exp)
    st = wait_state_done(exp, timeout=180)
    runs = st["runs"]
    assert runs["prepare"]["state"] == "FAILED"
    assert all(r["state"] == "SKIPPED" and not r["attempts"] for n, r in runs.items() if n != "prepare")
    ids = [a["job_id"] for a in st["arrays"]]
    assert _squeue(ids) == []
    started = [row for row in sacct_rows(ids, fields="JobID,State,Start") if row[2] not in ("Unknown", "None")
               and not row[0].startswith(runs["prepare"]["job_id"].split("_")[0])]
    assert started == []  # no task of a stage ever started
    doc = json.loads(run_cli("status", exp, "--json", check=True).stdout)
    assert "prepare step ended FAILED" in doc["ended_by"]
    assert "ended early: the prepare step ended FAILED" in run_cli("status", exp, check=True).stdout


@slurm_only
def test_eight_tasks_released_together_begin_three_seconds_apart(workdir, cleanup):
    path = write_config(workdir, {"name": "spaced", "command": "echo began $(date +%s.%N)",
                                  "sweep": {"grid": {"x": list(range(8))}}, "start_spacing": "3s",
                                  "monitor": {"interval": 2}, "slurm": {"time": "00:05:00"}})
    assert run_cli("launch", path, cwd=workdir).returncode == 0
    exp = workdir / "experiments" / "spaced"
    cleanup(exp)
    st = wait_state_done(exp, timeout=300)
    assert st["counts"] == {"COMPLETED": 8}
    _assert_spacing(exp, 3.0)
    assert len(_starts(exp)) == 8 and len(st["arrays"]) == 1  # no extra submission
    begun = sorted(float(m) for log in exp.glob("runs/*/slurm-*.out")
                   for m in re.findall(r"began (\d+\.\d+)", log.read_text()))
    # The commands' own clocks: apart by the spacing, give or take the moment a shell takes to start
    # each one (a tenth of a second or two on a loaded 2-core machine).
    assert all(b - a >= 2.5 for a, b in zip(begun, begun[1:])), begun


def test_single_stage_config_keeps_its_plan(workdir):
    built = autoexp.plan_experiment(autoexp.load_config(REPO / "examples" / "quickstart.yaml",
                                                        [f"output_dir={workdir}"]), scheduler="local")
    st = read_state(built.exp_dir)
    assert not any("stage" in run for run in st["runs"].values())
    assert "stage" not in st["plan"]["arrays"][0]
    assert yaml.safe_load((built.exp_dir / "config.yaml").read_text()).get("stages") is None
    assert (built.exp_dir / "logs" / "array").is_dir() and not (built.exp_dir / ".index").exists()


# --------------------------------------------------------------------------- per-checkpoint triggers

def triggered(name: str, points: int = 4, **extra) -> dict:
    """Training prints two checkpoints (the files exist first); x<points+1> fails before any."""
    train = (f'if [ {{{{ x }}}} = {points + 1} ]; then exit 3; fi; '
             'for k in 1 2; do sleep 3; echo "ck {{ x }} $k" > ckpt-$k.txt; echo "saved checkpoint ckpt-$k.txt"; done')
    return {"name": name, "sweep": {"grid": {"x": list(range(1, points + 2))}}, "monitor": {"interval": 2},
            "slurm": {"time": "00:05:00"},
            "stages": {"train": {"command": train, "monitor": {"events": [
                {"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}]}},
                "eval": {"on": {"stage": "train", "event": "checkpoint", "exists": "path"},
                         "command": 'echo "evaluating {{ run_name }} {{ path }}: $(cat {{ path }})"; '
                                    f'{sys.executable} -c "import autoexp; r = autoexp.current_run(); '
                                    'print(\'current\', r.name, r.params)"'}}, **extra}


def _assert_each_checkpoint_once(st: dict, points: int) -> None:
    evals = {n: r for n, r in st["runs"].items() if r.get("stage") == "eval"}
    assert sorted((r["point"], r["axis"]["path"]) for r in evals.values()) == \
        sorted((f"x{x}", f"ckpt-{k}.txt") for x in range(1, points + 1) for k in (1, 2))
    assert all(r["state"] == "COMPLETED" and len(r["attempts"]) == 1 for r in evals.values())
    for run in evals.values():
        k = run["axis"]["path"][5]
        log = open(run["attempts"][0]["log"]).read()
        assert f"evaluating {run['point']} ckpt-{k}.txt: ck {run['point'][1:]} {k}" in log
        assert f"current {run['point']}+eval+{k} {{'x': {run['point'][1:]}}}" in log


def test_each_checkpoint_is_evaluated_once_on_the_local_scheduler(workdir):
    path = write_config(workdir, triggered("ckpt-local", monitor={"interval": 1}))
    assert run_cli("launch", path, cwd=workdir, env={"AUTOEXP_SCHEDULER": "local"}).returncode == 0
    st = wait_state_done(workdir / "experiments" / "ckpt-local", timeout=180)
    _assert_each_checkpoint_once(st, 4)
    assert st["runs"]["x5+train"]["state"] == "FAILED"


@slurm_only
def test_sidecar_killed_while_submitting_evaluations_neither_misses_nor_doubles(workdir, cleanup, tmp_path):
    # A real sbatch that takes its time to return: the first evaluation batch is accepted by Slurm,
    # then the sidecar is killed -9 before it can record the job id (its intent is in the state).
    calls = tmp_path / "sbatch.calls"
    wrapper = tmp_path / "bin" / "sbatch"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/bash\nout=$(/usr/bin/sbatch "$@") || exit $?\necho "$*" >> {calls}\necho "$out"\n'
                       'case "$*" in *--job-name=autoexp-ckpt-eval.*) sleep 6 ;; esac\n')
    wrapper.chmod(0o755)
    env = {"PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    path = write_config(workdir, triggered("ckpt"))
    assert run_cli("launch", path, cwd=workdir, env=env).returncode == 0
    exp = workdir / "experiments" / "ckpt"
    cleanup(exp)

    def submitting():  # the intent of an evaluation array, written before its sbatch
        st = read_state(exp)
        intents = [i for i in st.get("intents") or [] if i["script"] == "eval.sbatch"]
        return (st["sidecar"], intents[0]) if intents and st["sidecar"].get("pid") else None
    lease, intent = wait_for(submitting, timeout=120, interval=0.05, what="the sidecar to submit evaluations")
    tagged = f"--job-name=autoexp-ckpt-eval.{intent['tag']}"
    wait_for(lambda: tagged in calls.read_text(), timeout=30, interval=0.05, what="Slurm to accept the array")
    os.kill(lease["pid"], 9)
    wait_for(lambda: not _squeue([lease["job_id"]]), timeout=60, what="the killed sidecar's job to end")
    assert run_cli("resume", exp, cwd=workdir, env=env).returncode == 0
    st = wait_state_done(exp, timeout=300)
    _assert_each_checkpoint_once(st, 4)
    assert st["runs"]["x5+train"]["state"] == "FAILED"  # it saved no checkpoint: nothing evaluated
    summary = (exp / "experiment_summary.md").read_text()
    assert "## Stage: train" in summary and "| Run | Path | Status |" in summary.split("## Stage: eval")[1]
    for run in (r for r in st["runs"].values() if r.get("stage") == "eval"):  # after its checkpoint was written
        written = os.stat(exp / "runs" / run["point"] / run["axis"]["path"]).st_mtime
        assert _times([run["job_id"]])[run["job_id"]][0] >= clock.iso(written)[:19]
    # every evaluation array went to sbatch once: the one submitted before the kill was found
    # again (SUBMIT_FOUND), not submitted a second time
    lines = calls.read_text().splitlines()
    assert sum(tagged in line for line in lines) == 1
    assert any(e["kind"] == "SUBMIT_FOUND" for e in st["history"])
    batches = {line.split("--job-name=")[1].split()[0] for line in lines if "--job-name=autoexp-ckpt-eval." in line}
    assert len(batches) == sum(a["script"] == "eval.sbatch" for a in st["arrays"])
    rows = sacct_rows([a["job_id"] for a in st["arrays"] if a["script"] == "eval.sbatch"])
    assert len([r for r in rows if "_" in r[0]]) == 8  # eight evaluation tasks ran in all
    # sbatch calls: train, the sidecar and its successor, one per poll that found checkpoints
    assert len(lines) == 1 + 2 + len(batches) and len(batches) <= 2 * 4
