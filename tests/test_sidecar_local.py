"""The sidecar loop with the local scheduler (no cluster): the same code as on Slurm, quickly.

What needs Slurm itself (sacct's quirks, kill -9 of a job, NODE_FAIL, a real time limit) is in
test_sidecar.py; here: the lease (a second sidecar exits), the hand-over before the time limit,
and `--once`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import autoexp
from autoexp import sidecar
from autoexp.local import LocalScheduler
from conftest import autoexp as run_cli, read_state, wait_for, wait_state_done, write_config

JOB = """case $1 in
ckpt) for i in $(seq 1 10); do echo "saved checkpoint /ck/$AUTOEXP_RUN_NAME/$i"; sleep 2; done ;;
fail) echo "loss: 1.5"; exit 4 ;;
esac
"""


def launch(workdir, kinds, **extra):
    (workdir / "job.sh").write_text(JOB)
    path = write_config(workdir, {
        "name": "loc", "command": "bash {{ config_dir }}/job.sh {{ kind }}", "run_name": "{{ kind }}{{ run_index }}",
        "sweep": {"list": [{"kind": k} for k in kinds]},
        "monitor": {"interval": 1, "events": [{"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}],
                    "metrics": {"loss": r"loss: (?P<value>\S+)"}}, **extra})
    return autoexp.launch(autoexp.load_config(path), scheduler="local")


def test_second_sidecar_exits_and_time_limit_hands_over(workdir):
    result = launch(workdir, ["ckpt", "ckpt", "fail"], sidecar={"time": "00:00:12"})
    exp = result.exp_dir
    wait_for(lambda: read_state(exp)["sidecar"].get("heartbeat"), timeout=30, what="the sidecar to start")
    intruder = run_cli("sidecar", exp, cwd=workdir, timeout=30)  # the lease is held: exits at once
    assert intruder.returncode == 0 and "holds the lease" in intruder.stdout
    wait_state_done(exp, timeout=90)
    # the last sidecar releases the lease in a write of its own, just after the one that says done
    st = wait_for(lambda: (lambda s: s if s["sidecar"].get("stopped") else None)(read_state(exp)), timeout=30,
                  what="the last sidecar to release the lease")
    assert {n: r["state"] for n, r in st["runs"].items()} == {"ckpt0": "COMPLETED", "ckpt1": "COMPLETED",
                                                             "fail2": "FAILED"}
    for name in ("ckpt0", "ckpt1"):  # nothing missed or doubled across the hand-over
        assert [e["groups"]["path"] for e in st["runs"][name]["events"]] == [f"/ck/{name}/{i}" for i in range(1, 11)]
    assert st["runs"]["fail2"]["metrics"] == {"loss": 1.5} and st["runs"]["fail2"]["exit_code"] == "4:0"
    kinds = [e["kind"] for e in st["history"]]
    assert kinds.count("SIDECAR_START") >= 2 and kinds.count("ALL_COMPLETE") == 1
    handovers = [e for e in st["history"] if e["kind"] == "SIDECAR_STOP" and "handed over" in e["details"]["Reason"]]
    assert handovers and kinds[-1] == "SIDECAR_STOP"
    assert not sidecar.alive(st)


def test_once_polls_a_single_time_and_frees_the_lease(workdir):
    result = launch(workdir, ["fail"])
    exp = result.exp_dir
    LocalScheduler(exp).cancel([result.sidecar])  # no sidecar: the user polls by hand
    wait_for(lambda: (exp / "runs" / "fail0" / f"slurm-{result.arrays[0]}_0.out").exists(), timeout=30,
             what="the run to start")
    proc = run_cli("sidecar", exp, "--once", cwd=workdir, timeout=60)
    assert proc.returncode == 0, proc.stderr
    st = read_state(exp)
    assert [e["kind"] for e in st["history"]].count("STATUS_CHECK") == 1
    assert st["sidecar"]["stopped"] and not sidecar.alive(st)
    result = wait_for(lambda: (lambda r: r if r.done else None)(sidecar.reconcile(exp)), timeout=30,
                      what="reconcile to see the run end")
    assert read_state(exp)["runs"]["fail0"]["state"] == "FAILED"


def test_a_sidecar_whose_experiment_was_deleted_exits(workdir):
    """A local sidecar runs on this machine: it must not outlive the experiment it watches."""
    path = write_config(workdir, {"name": "gone", "command": "sleep 20", "monitor": {"interval": 1}})
    exp_dir = autoexp.plan_experiment(autoexp.load_config(path), scheduler="local").exp_dir
    proc = subprocess.Popen([sys.executable, "-m", "autoexp", "sidecar", str(exp_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(3)
    shutil.rmtree(exp_dir)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "is gone; exiting" in out
