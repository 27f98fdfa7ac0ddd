"""Launching on the real Slurm test cluster: one array for the sweep, plus the sidecar."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest
import yaml

import autoexp
from autoexp import slurm
from conftest import REPO, autoexp as run_cli, read_state, sacct_rows, wait_for, wait_state_done, write_config

pytestmark = [pytest.mark.usefixtures("slurm"), pytest.mark.core]


def test_quickstart_is_one_array_plus_the_sidecar(workdir, cleanup):
    out = workdir / "experiments"
    proc = run_cli("launch", REPO / "examples" / "quickstart.yaml", f"output_dir={out}", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    exp = out / "quickstart"
    cleanup(exp)
    state = read_state(exp)
    assert len(state["arrays"]) == 1
    array_id, sidecar_id = state["arrays"][0]["job_id"], state["sidecar"]["job_id"]
    assert re.search(rf"array job\(s\) {array_id}, sidecar job {sidecar_id}", proc.stdout)
    assert {r["state"] for r in state["runs"].values()} <= {"PENDING", "RUNNING", "COMPLETED"}

    def all_logs_finished():
        return all("exited with status 0" in (exp / "runs" / name / f"slurm-{array_id}_{run['index']}.out").read_text()
                   for name, run in state["runs"].items()
                   if (exp / "runs" / name / f"slurm-{array_id}_{run['index']}.out").exists()) and \
            len(list(exp.glob(f"runs/*/slurm-{array_id}_*.out"))) == 8
    wait_for(all_logs_finished, timeout=180, what="8 quickstart tasks")

    rows = wait_for(lambda: (lambda r: r if len(r) == 8 and all(s == "COMPLETED" for _, s, _ in r) else None)(
        [row for row in sacct_rows([array_id]) if row[0].startswith(f"{array_id}_")]),
        timeout=60, what="sacct to show 8 completed tasks")
    assert sorted(int(r[0].split("_")[1]) for r in rows) == list(range(8))
    assert {r[2] for r in rows} == {"autoexp-quickstart"}
    assert [r[2] for r in sacct_rows([sidecar_id])] == ["autoexp-sidecar-quickstart"]
    for name, run in state["runs"].items():
        log = (exp / "runs" / name / f"slurm-{array_id}_{run['index']}.out").read_text()
        params = run["params"]
        assert f"params: rank={params['rank']} lr={params['lr']} run={name} attempt=1 cwd={exp / 'runs' / name}" in log
        assert (exp / "runs" / name / "checkpoint.txt").read_text() == f"rank={params['rank']} lr={params['lr']}\n"


def test_shell_metacharacters_reach_argv_verbatim_on_the_cluster(workdir, cleanup):
    owned = f"/tmp/owned-{uuid.uuid4().hex}"
    value = f'x"; touch {owned}; echo "'
    out = workdir / "out dir 'q' $x"
    path = write_config(workdir, {
        "name": "inject", "output_dir": str(out),
        "command": f"{sys.executable} {REPO / 'tests' / 'argv_probe.py'} {{{{ value }}}}",
        "sweep": {"list": [{"value": value}, {"value": "`touch " + owned + "`"}, {"value": "$(touch " + owned + ")"}]},
        "run_name": "r{{ run_index }}"})
    proc = run_cli("launch", path, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    exp = out / "inject"
    cleanup(exp)
    for index, expected in enumerate([value, "`touch " + owned + "`", "$(touch " + owned + ")"]):
        probe = exp / "runs" / f"r{index}" / "probe.json"
        wait_for(probe.exists, timeout=120, what=f"task {index} to run")
        assert json.loads(probe.read_text())["argv"] == [expected]
    array_id = read_state(exp)["arrays"][0]["job_id"]
    assert (exp / "runs" / "r0" / f"slurm-{array_id}_0.out").exists()
    assert not os.path.exists(owned)


@pytest.mark.parametrize("refused,script", [("slurm", "array.sbatch"), ("sidecar", "sidecar.sbatch")])
def test_a_refused_submission_is_exit_1_and_leaves_nothing_submitted(workdir, refused, script):
    name = f"refused-{refused}-{uuid.uuid4().hex[:8]}"
    path = write_config(workdir, {"name": name, "command": "sleep 30", "sweep": {"grid": {"x": [1, 2]}},
                                  refused: {"partition": "no-such-partition"}})
    proc = run_cli("launch", path, cwd=workdir)
    assert proc.returncode == 1
    assert f"sbatch refused {script}" in proc.stderr and "invalid partition" in proc.stderr.lower()
    assert len(proc.stderr.strip().splitlines()) == 1
    state = read_state(workdir / "experiments" / name)
    assert state["arrays"] == [] and state["sidecar"] == {} and state["counts"] == {"PLANNED": 2}

    def queue_empty():
        names = f"autoexp-{name},autoexp-sidecar-{name}"
        return subprocess.run(["squeue", "-h", "-n", names], capture_output=True, text=True,
                              timeout=30).stdout.strip() == ""
    wait_for(queue_empty, timeout=30, what="every job of the refused launch to be gone")


def test_more_runs_than_max_array_size_go_in_several_arrays(workdir, cleanup, monkeypatch):
    monkeypatch.setattr(slurm, "cluster_max_array_size", lambda: 4)
    path = write_config(workdir, {"name": "split", "command": "echo {{ x }}", "max_parallel": 3,
                                  "sweep": {"grid": {"x": list(range(10))}}})
    result = autoexp.launch(autoexp.load_config(path), scheduler="slurm")
    cleanup(result.exp_dir)
    assert len(result.arrays) == 3 and result.sidecar
    state = read_state(result.exp_dir)
    assert [(a["script"], a["tasks"]) for a in state["arrays"]] == [
        ("array_0.sbatch", "0-3"), ("array_1.sbatch", "0-3"), ("array_2.sbatch", "0-1")]
    last = state["arrays"][2]["job_id"]
    out = result.exp_dir / "runs" / "x9" / f"slurm-{last}_1.out"
    # Slurm creates the log when the task starts; its output follows.
    wait_for(lambda: out.exists() and "\n9\n" in out.read_text(), timeout=180,
             what="the last run of the third array to print 9")


def test_a_task_makes_its_run_directory_and_links_the_log_slurm_writes(workdir, cleanup):
    """Launch makes no run directory; the task makes it and links there the log Slurm writes in
    logs/array/, which is the log the state records (and the sidecar reads)."""
    path = write_config(workdir, {"name": "ownlog", "command": "echo hello {{ x }}; pwd",
                                  "sweep": {"grid": {"x": [1, 2]}}, "slurm": {"hold": True}})
    result = autoexp.launch(autoexp.load_config(path), scheduler="slurm")
    cleanup(result.exp_dir)
    exp, (array_id,) = result.exp_dir, result.arrays
    assert not list((exp / "runs").iterdir()) and (exp / "logs" / "array").is_dir()
    subprocess.run(["scontrol", "release", array_id], check=True, timeout=30)
    st = wait_state_done(exp, timeout=180)
    for name, run in st["runs"].items():
        real = exp / "logs" / "array" / f"slurm-{array_id}_{run['index']}.out"
        link = exp / "runs" / name / real.name
        assert run["state"] == "COMPLETED" and run["attempts"][0]["log"] == str(real)
        assert link.is_symlink() and link.resolve() == real.resolve()
        assert not os.path.isabs(os.readlink(link))
        text = real.read_text()
        assert f"hello {run['params']['x']}\n{exp / 'runs' / name}\n" in text and "exited with status 0" in text


def test_dry_run_submits_nothing(workdir):
    path = write_config(workdir, {"name": "dry", "command": "true", "sweep": {"grid": {"x": [1, 2, 3]}}})
    proc = run_cli("launch", path, "--dry-run", cwd=workdir)
    assert proc.returncode == 0
    assert "nothing submitted" in proc.stdout and "--array=0-2" in proc.stdout and "sidecar.sbatch" in proc.stdout
    assert not (workdir / "experiments" / "dry").exists()


def test_local_site_scripts_pass_sbatch_test_only(workdir):
    path = write_config(workdir, {"name": "testonly", "site": "local", "command": "true",
                                  "sweep": {"grid": {"x": [1, 2, 3]}}, "max_parallel": 2})
    assert run_cli("plan", path, cwd=workdir).returncode == 0
    exp = workdir / "experiments" / "testonly"
    for script in ("array.sbatch", "sidecar.sbatch"):
        proc = subprocess.run(["sbatch", "--test-only", str(exp / script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr


def test_the_stock_sites_srun_setup_works_with_and_without_cpus_per_task(workdir, cleanup):
    """LUMI's and the JSC sites' setup line hands --cpus-per-task on to srun; without one, srun must
    still start (Slurm 22.05 refuses an empty SRUN_CPUS_PER_TASK, 24.11 does not)."""
    setups = [[line for line in yaml.safe_load((REPO / "site_configs" / f"{site}.yaml").read_text())["setup"]
               if "SRUN_CPUS_PER_TASK" in line] for site in ("lumi", "jsc")]
    assert setups[0] == setups[1] and len(setups[0]) == 1
    exps = {}
    for cpus in (2, None):
        name = f"srun-cpus-{cpus}"
        path = write_config(workdir, {"name": name, "output_dir": str(workdir / "out"), "launcher": ["srun"],
                                      "setup": setups[0], "command": "env", "slurm": {"cpus-per-task": cpus}})
        assert run_cli("launch", path, cwd=workdir).returncode == 0
        exps[cpus] = workdir / "out" / name
        cleanup(exps[cpus])
    for cpus, exp in exps.items():
        state = wait_state_done(exp, timeout=180)
        (run,) = state["runs"].values()
        assert run["state"] == "COMPLETED", run
        log = open(run["attempts"][0]["log"]).read()
        assert (f"SLURM_CPUS_PER_TASK={cpus}" in log) == (cpus is not None)
        assert (f"SRUN_CPUS_PER_TASK={cpus}" in log) == (cpus is not None)
