"""`requeue`: the array script forwards the time-limit signal to the command and requeues the task.

The first tests run the rendered array script with bash as Slurm would start it, send the signal to
the batch shell only (what ``--signal=B:...`` does) and put a recording ``scontrol`` on PATH; the
last one runs a command sweep on the real cluster through several allocations.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import autoexp
from autoexp import config as configmod, plan as planmod
from conftest import sacct_rows, wait_for, wait_state_done, write_config

TRAIN = """\
import os, signal, sys, time
target, path = int(sys.argv[1]), os.path.join(os.environ["AUTOEXP_RUN_DIR"], "step")
step = int(open(path).read()) if os.path.exists(path) else 0
print(f"attempt {os.environ['AUTOEXP_ATTEMPT']} resumes at step {step}", flush=True)
stop = []
signal.signal(signal.SIGUSR1, lambda *_: stop.append(1))
while step < target and not stop:
    time.sleep(float(os.environ.get("STEP_S", "1")))
    step += 1
open(path, "w").write(str(step))
print(f"{'saved' if step < target else 'finished'} at step {step}", flush=True)
"""


def sweep_config(workdir, requeue, **keys):
    (workdir / "train.py").write_text(TRAIN)
    return write_config(workdir, {"name": "rq", "site": "local", "output_dir": str(workdir / "experiments"),
                                  "command": f"{sys.executable} {{{{ config_dir }}}}/train.py {{{{ steps }}}}",
                                  "sweep": {"list": [{"steps": 1000}]}, "requeue": requeue, **keys})


def planned(path) -> Path:
    built = planmod.build(configmod.load(path), "slurm", 1000)
    return built.write()


@pytest.fixture
def fake_scontrol(workdir):
    """An ``scontrol`` that records its arguments in ``scontrol.calls``."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {workdir}/scontrol.calls\n')
    (bin_dir / "scontrol").chmod(0o755)
    return bin_dir


def start_task(exp: Path, bin_dir: Path, restarts: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_ARRAY_JOB_ID": "99", "SLURM_JOB_ID": "100", "SLURM_RESTART_COUNT": str(restarts),
           "STEP_S": "0.1"}
    log = open(exp / "task.log", "w")
    # Slurm starts the batch shell as the leader of its own process group (the local scheduler too).
    return subprocess.Popen(["bash", str(exp / "array.sbatch")], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=exp, start_new_session=True)


def signal_batch_shell(exp: Path, task: subprocess.Popen, signum=signal.SIGUSR1) -> str:
    """Once the command runs, signal the batch shell alone, as ``--signal=B:USR1@N`` does."""
    wait_for(lambda: "resumes at step" in (exp / "task.log").read_text(), timeout=30, what="the command")
    task.send_signal(signum)
    assert task.wait(timeout=60) == 0
    return (exp / "task.log").read_text()


def test_the_signal_reaches_the_command_which_saves_and_the_task_is_requeued(workdir, fake_scontrol):
    exp = planned(sweep_config(workdir, {"signal": "USR1", "before": 60}))
    script = (exp / "array.sbatch").read_text()
    assert "#SBATCH --signal=B:USR1@60\n#SBATCH --requeue\n" in script
    log = signal_batch_shell(exp, start_task(exp, fake_scontrol))
    assert "SIGUSR1 before the time limit" in log and "passing it on to the command" in log
    assert "saved at step" in log and "finished" not in log
    assert (workdir / "scontrol.calls").read_text() == "requeue 99_0\n"
    assert "requeued after its command exited with status 0" in log


def test_once_requeue_max_is_reached_the_command_runs_on_to_its_limit(workdir, fake_scontrol):
    exp = planned(sweep_config(workdir, {"signal": "USR1", "before": 60, "max": 2},
                               sweep={"list": [{"steps": 30}]}))
    log = signal_batch_shell(exp, start_task(exp, fake_scontrol, restarts=2))
    assert "requeued 2 times already (requeue.max): the command runs on to its time limit" in log
    assert "finished at step 30" in log and not (workdir / "scontrol.calls").exists()


def test_a_command_that_requeues_itself_only_gets_the_signal(workdir, fake_scontrol):
    exp = planned(sweep_config(workdir, {"signal": "USR1", "before": 60, "by": "command"}))
    log = signal_batch_shell(exp, start_task(exp, fake_scontrol))
    assert "passing it on to the command" in log and "saved at step" in log
    assert not (workdir / "scontrol.calls").exists()


def test_a_user_launch_block_runs_under_the_trap_too(workdir, fake_scontrol):
    (workdir / "mine.sbatch.j2").write_text('{% extends "array.sbatch.j2" %}\n'
                                           '{% block launch %}\necho "my launch"\nautoexp_command\n{% endblock %}\n')
    exp = planned(sweep_config(workdir, {"signal": "USR1", "before": 60}, template="mine.sbatch.j2"))
    log = signal_batch_shell(exp, start_task(exp, fake_scontrol))
    assert "my launch" in log and "saved at step" in log
    assert (workdir / "scontrol.calls").read_text() == "requeue 99_0\n"


def test_without_requeue_there_is_no_signal_and_no_trap(workdir):
    exp = planned(sweep_config(workdir, None))
    script = (exp / "array.sbatch").read_text()
    assert "--signal" not in script and "--requeue" not in script and "trap" not in script


@pytest.mark.parametrize("requeue, message", [
    ({"signal": "USR1"}, "requeue.before: required key is missing"),
    ({"signal": "usr1", "before": 60}, "requeue.signal: 'usr1' is not valid"),
    ({"signal": "USR1", "before": 60, "by": "slurm"}, "requeue.by: 'slurm' is not valid (autoexp or command)"),
    ({"signal": "USR1", "before": 60, "max": -1}, "requeue.max: must be at least 0"),
])
def test_requeue_settings_are_checked(workdir, requeue, message):
    with pytest.raises(autoexp.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        configmod.load(sweep_config(workdir, requeue))


@pytest.mark.slow
@pytest.mark.core
@pytest.mark.usefixtures("slurm")
def test_a_command_sweep_is_requeued_until_done_or_requeue_max(workdir, cleanup):
    """Run `short` needs two allocations; `long` gets one requeue (max 1) and then times out."""
    path = sweep_config(workdir, {"signal": "USR1", "before": 10, "max": 1}, run_name="{{ label }}",
                        sweep={"list": [{"label": "short", "steps": 55}, {"label": "long", "steps": 400}]},
                        slurm={"time": "00:01:00"}, monitor={"interval": 2})
    launched = autoexp.launch(autoexp.load_config(path))
    exp = launched.exp_dir
    cleanup(exp)
    state = wait_state_done(exp, timeout=600)
    short, long = state["runs"]["short"], state["runs"]["long"]

    assert short["state"] == "COMPLETED" and (exp / "runs" / "short" / "step").read_text() == "55"
    assert {a["state"] for a in short["attempts"][:-1]} <= {"REQUEUED", "NODE_FAIL"}
    assert "REQUEUED" in {a["state"] for a in short["attempts"]}
    log = (exp / "runs" / "short" / f"slurm-{launched.arrays[0]}_0.out").read_text()
    assert "attempt 1 resumes at step 0" in log and "saved at step" in log
    assert "attempt 2 resumes at step" in log and "attempt 2 resumes at step 0" not in log

    assert long["state"] == "TIMEOUT"
    assert [a["state"] for a in long["attempts"]][-2:] == ["REQUEUED", "TIMEOUT"]
    log = (exp / "runs" / "long" / f"slurm-{launched.arrays[0]}_1.out").read_text()
    assert "(requeue.max): the command runs on to its time limit" in log
    rows = sacct_rows([launched.arrays[0]])
    assert [r[1] for r in rows if r[0].endswith("_0")] == [a["state"] for a in short["attempts"]]
    assert [r[1] for r in rows if r[0].endswith("_1")] == [a["state"] for a in long["attempts"]]
