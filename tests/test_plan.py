"""Planning writes the contract's experiment directory, and the scripts do what they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoexp import cli, config as configmod, plan as planmod
from conftest import REPO, read_state, write_config

AWKWARD = ['x"; touch {owned}; echo "', "two words", "$HOME", "`id`", "it's", "a\\b", ";|&<>*?"]


def probe_config(workdir, values, **extra):
    data = {"name": "probe", "command": f"{sys.executable} {REPO / 'tests' / 'argv_probe.py'} --value {{{{ value }}}} --attempt {{{{ attempt }}}}",
            "sweep": {"list": [{"value": v} for v in values]}, "run_name": "r{{ run_index }}",
            "env": {"MY_RUN": "{{ run_name }} at {{ run_dir }}", "MY_ATTEMPT": "a{{ attempt }}"},
            **extra}
    return write_config(workdir, data)


def run_task(exp_dir: Path, task: int, script="array.sbatch", env=None):
    """Run one array task the way Slurm would start it (minus Slurm)."""
    full_env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "99",
                "SLURM_JOB_ID": "100", **(env or {})}
    return subprocess.run(["bash", str(exp_dir / script)], env=full_env, capture_output=True, text=True,
                          timeout=60, cwd=exp_dir)


def test_plan_writes_the_contract_directory(workdir):
    path = write_config(workdir, {"name": "demo", "command": "echo {{ rank }}", "max_parallel": 2,
                                  "sweep": {"grid": {"rank": [1, 2, 3]}}})
    assert cli.main(["plan", str(path), "--scheduler", "local"]) == 0
    exp = workdir / "experiments" / "demo"
    for name in ("config.yaml", "runs.json", "array.sbatch", "sidecar.sbatch", "state.json",
                 "experiment_summary.md", "events.log", "tasks.sh"):
        assert (exp / name).is_file(), name
    runs = json.loads((exp / "runs.json").read_text())
    assert [(r["index"], r["name"], r["params"]) for r in runs] == [
        (0, "rank1", {"rank": 1}), (1, "rank2", {"rank": 2}), (2, "rank3", {"rank": 3})]
    # Nothing per run at plan time: a task makes its run's directory; Slurm's logs go to logs/<script>/.
    assert not any(Path(r["dir"]).exists() for r in runs) and (exp / "logs" / "array").is_dir()
    assert not (exp / ".index").exists()
    state = read_state(exp)
    assert state["schema"] == 1 and state["counts"] == {"PLANNED": 3} and state["arrays"] == []
    assert "#SBATCH --array=0-2%2\n" in (exp / "array.sbatch").read_text()
    assert "| rank2 | PLANNED |" in (exp / "experiment_summary.md").read_text()
    resolved = configmod.read_yaml(exp / "config.yaml")
    assert resolved["site"] and resolved["max_parallel"] == 2
    for script in ("array.sbatch", "sidecar.sbatch", "tasks.sh"):
        assert subprocess.run(["bash", "-n", str(exp / script)]).returncode == 0


def test_parameter_values_reach_the_program_verbatim(workdir, tmp_path):
    owned = tmp_path / "owned"
    values = [v.format(owned=owned) for v in AWKWARD]
    path = probe_config(workdir, values, output_dir=str(workdir / "out dir with 'quote' and $x"))
    assert cli.main(["plan", str(path), "--scheduler", "local"]) == 0
    exp = workdir / "out dir with 'quote' and $x" / "probe"
    for index, value in enumerate(values):
        proc = run_task(exp, index, env={"AUTOEXP_ATTEMPTS": "*:2 3:5"})
        assert proc.returncode == 0, proc.stderr
        record = json.loads((exp / "runs" / f"r{index}" / "probe.json").read_text())
        attempt = "5" if index == 3 else "2"
        assert record["argv"] == ["--value", value, "--attempt", attempt]
        assert record["cwd"] == str(exp / "runs" / f"r{index}")
        assert record["env"]["AUTOEXP_RUN_NAME"] == f"r{index}"
        assert record["env"]["AUTOEXP_RUN_INDEX"] == str(index)
        assert record["env"]["AUTOEXP_EXP_DIR"] == str(exp)
        assert record["env"]["AUTOEXP_RUN_DIR"] == str(exp / "runs" / f"r{index}")
        assert record["env"]["AUTOEXP_ATTEMPT"] == attempt
        assert record["env"]["MY_RUN"] == f"r{index} at {exp / 'runs' / f'r{index}'}"
        assert record["env"]["MY_ATTEMPT"] == f"a{attempt}"
    assert not owned.exists()


def test_env_expands_the_configs_own_references_but_never_a_value(workdir):
    """`${VAR}` written in `env` expands in the task's shell (HF_HOME: ${SCRATCH}/hf); a sweep value
    inserted into `env` stays verbatim, whatever it holds."""
    path = probe_config(workdir, ["$HOME", '`id` "q" \\'], env={
        "MY_DATA": "${HOME}/data", "MY_TAGGED": "{{ value }}-${AUTOEXP_TEST_SUFFIX:-none}-a{{ attempt }}",
        "MY_QUOTED": 'say "hi" \\ `later`'})
    assert cli.main(["plan", str(path), "--scheduler", "local"]) == 0
    exp = workdir / "experiments" / "probe"
    for index, value in enumerate(["$HOME", '`id` "q" \\']):
        proc = run_task(exp, index, env={"HOME": "/home/someone", "AUTOEXP_TEST_SUFFIX": "sfx"})
        assert proc.returncode == 0, proc.stderr
        env = json.loads((exp / "runs" / f"r{index}" / "probe.json").read_text())["env"]
        assert env["MY_DATA"] == "/home/someone/data"
        assert env["MY_TAGGED"] == f"{value}-sfx-a1"
        assert env["MY_QUOTED"] == 'say "hi" \\ `later`'


def test_requeue_counts_as_a_further_attempt(workdir):
    path = probe_config(workdir, ["v"])
    assert cli.main(["plan", str(path), "--scheduler", "local"]) == 0
    exp = workdir / "experiments" / "probe"
    assert run_task(exp, 0, env={"SLURM_RESTART_COUNT": "2"}).returncode == 0
    assert json.loads((exp / "runs" / "r0" / "probe.json").read_text())["env"]["AUTOEXP_ATTEMPT"] == "3"


def test_runs_beyond_max_array_size_are_split(workdir):
    path = probe_config(workdir, [f"v{i}" for i in range(8)], max_parallel=2)
    cfg = configmod.load(path)
    built = planmod.build(cfg, "slurm", max_array_size=3)
    built.write()
    assert [(a.script, a.offset, a.count, a.spec) for a in built.arrays] == [
        ("array_0.sbatch", 0, 3, "0-2%2"), ("array_1.sbatch", 3, 3, "0-2%2"), ("array_2.sbatch", 6, 2, "0-1%2")]
    exp = cfg.exp_dir
    assert run_task(exp, 1, script="array_2.sbatch").returncode == 0  # task 1 of array 2 is run 7
    assert json.loads((exp / "runs" / "r7" / "probe.json").read_text())["argv"][1] == "v7"
    # The task made its run's directory and linked its log there, as Slurm names it (array 99, task 1).
    link = exp / "runs" / "r7" / "slurm-99_1.out"
    assert os.readlink(link) == os.path.join("..", "..", "logs", "array_2", "slurm-99_1.out")
    assert "#SBATCH --output=" + str(exp / "logs" / "array_2" / "slurm-%A_%a.out") in (exp / "array_2.sbatch").read_text()


def test_replanning_replaces_a_planned_experiment_but_not_a_launched_one(workdir, capsys):
    path = write_config(workdir, {"name": "again", "command": "true", "sweep": {"grid": {"x": [1, 2]}}})
    assert cli.main(["plan", str(path), "--scheduler", "local"]) == 0
    assert cli.main(["plan", str(path), "sweep.grid.x=[5]", "--scheduler", "local"]) == 0
    exp = workdir / "experiments" / "again"
    assert [r["name"] for r in json.loads((exp / "runs.json").read_text())] == ["x5"]
    assert list(read_state(exp)["runs"]) == ["x5"]
    state = read_state(exp)
    state["arrays"] = [{"job_id": "1"}]
    (exp / "state.json").write_text(json.dumps(state))
    before = sorted(p.name for p in exp.rglob("*"))
    assert cli.main(["plan", str(path), "--scheduler", "local"]) == 2
    assert "already launched" in capsys.readouterr().err
    assert sorted(p.name for p in exp.rglob("*")) == before
    assert not [p for p in exp.parent.iterdir() if p.name.startswith(".again")]


def test_a_failed_write_leaves_no_directory(workdir, monkeypatch):
    path = write_config(workdir, {"name": "boom", "command": "true", "sweep": {"grid": {"x": [1, 2]}}})
    built = planmod.build(configmod.load(path), "local", 10)

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(planmod.statefile, "write", explode)
    with pytest.raises(OSError):
        built.write()
    assert list((workdir / "experiments").iterdir()) == []


def test_sbatch_lines():
    assert planmod.sbatch_lines({"cpus-per-task": 8, "exclusive": True, "qos": None, "hint": False,
                                 "comment": "two words"}) == [
        "--cpus-per-task=8", "--exclusive", '--comment="two words"']
