"""The site's submission limits: autoexp reads them (captured real scontrol/sacctmgr/squeue outputs
below), submits no more than they leave room for, in as few ``--array`` values as sbatch takes, and
the sidecar submits the rest as tasks leave the queue (on the cluster: the test user's QOS
autoexp-limited takes 25 queued jobs, see cluster/setup.sh).
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoexp import actions, arrayspec, limits, model, statefile
from autoexp.limits import Limit, Room
from autoexp.arrayspec import expand_range
from autoexp.scheduler import Scheduler, Submission
from autoexp.errors import SchedulerError
from autoexp.slurm import SlurmScheduler, parse_config
from conftest import autoexp as run_cli, read_state, wait_for, wait_state_done, write_config

DATA = Path(__file__).parent / "data"
QOS = "autoexp-limited"  # MaxSubmitJobsPerUser=25 (cluster/setup.sh)
LIMIT = 25


# --------------------------------------------------------------------------- array specs

def test_compress_and_split_by_length():
    assert arrayspec.compress([17, 3, 5, 6, 7, 8, 9]) == "3,5-9,17"
    scattered = list(range(0, 6000, 2))  # 3,000 failed runs, none next to another
    groups = arrayspec.split(scattered)
    specs = [arrayspec.compress(g) for g in groups]
    assert all(len(s) <= arrayspec.MAX_SPEC for s in specs)
    assert [t for g in groups for t in g] == scattered  # each once, in order
    assert len(groups) == -(-len(",".join(specs)) // arrayspec.MAX_SPEC)  # as few as the length allows
    assert all(len(s) > arrayspec.MAX_SPEC - 6 for s in specs[:-1])  # every one but the last is full


def test_split_by_room_cuts_a_range():
    assert arrayspec.split(range(100), room=25) == [list(range(25))]
    assert arrayspec.split([*range(10), *range(20, 30)], room=15) == [[*range(10), *range(20, 25)]]
    assert arrayspec.split(range(5), room=0) == []
    groups = arrayspec.split(range(0, 40, 2), room=None, max_len=12)
    assert groups[0] == [0, 2, 4, 6, 8, 10] and [t for g in groups for t in g] == list(range(0, 40, 2))
    assert all(len(arrayspec.compress(g)) <= 12 < len(arrayspec.compress([*g, after[0]]))
               for g, after in zip(groups, groups[1:]))


# --------------------------------------------------------------------------- parsing real outputs

def test_limits_from_captured_outputs():
    """sacctmgr and squeue as the test user saw them (tests/data/README.md)."""
    config = parse_config((DATA / "scontrol_show_config.txt").read_text())
    assert config["MaxJobCount"] == "200000" and config["MaxArraySize"] == "100001"
    assoc = (DATA / "sacctmgr_assoc.txt").read_text()
    limit, allowed, default = limits.association(assoc, "autoexp", None)
    assert (limit, sorted(allowed), default) == (None, [QOS, "normal"], "normal")
    assert limits.job_qos(None, allowed, default) == "normal"
    assert limits.job_qos(QOS, allowed, default) == QOS
    assert limits.job_qos(None, ["only"], "") == "only"
    # the same line with MaxSubmitJobs set on the association
    assert limits.association(assoc.replace("|normal|\n", "|normal|30\n"), "autoexp", "debug")[0] == 30
    qos = (DATA / "sacctmgr_qos.txt").read_text()
    assert limits.qos_limit(qos, QOS) == 25
    assert limits.qos_limit(qos, "normal") is None
    queued = limits.queue((DATA / "squeue_limits.txt").read_text())
    assert sum(q.tasks for q in queued if q.qos == QOS) == 9  # 663_[0-3,7,9-12%2]
    room = limits.room([Limit(25, f"MaxSubmitJobsPerUser of QOS {QOS}", qos=QOS),
                        Limit(200000, "MaxJobCount")], queued)
    assert room == Room(16, f"MaxSubmitJobsPerUser of QOS {QOS}: 25, 9 queued")
    assert limits.room([Limit(10, "max_queued in partition small", partition="small")], queued).free == 9
    # MaxJobCount counts every job the controller holds, a cancelled array's waiting rest too
    held = limits.held_by_controller((DATA / "squeue_all_states.txt").read_text())
    assert held == 110004  # what squeue -r counted then
    assert limits.room([Limit(200000, "MaxJobCount", controller=True)], queued, held) == \
        Room(200000 - 110004 - 1, "MaxJobCount: 200000, 110004 held")


def test_limit_refusals_are_told_from_other_refusals():
    refused = ("sbatch: error: QOSMaxSubmitJobPerUserLimit | sbatch: error: Batch job submission failed: "
               "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)")
    assert limits.LIMIT_REFUSAL.search(refused)
    assert limits.LIMIT_REFUSAL.search("sbatch: error: AssocMaxSubmitJobLimit")
    assert not limits.LIMIT_REFUSAL.search(refused.replace("QOSMaxSubmitJobPerUserLimit",
                                                           "QOSMaxWallDurationPerJobLimit"))


# --------------------------------------------------------------------------- submit_runs at scale

class Recorder(Scheduler):
    """A scheduler that accepts everything and remembers it, with a fixed room."""

    name = "recorder"

    def __init__(self, exp_dir: Path, free: int | None):
        super().__init__(exp_dir)
        self.free, self.subs = free, []

    def submit(self, sub: Submission) -> str:
        self.subs.append(sub)
        return str(1000 + len(self.subs))

    def query(self, job_ids, since):
        return []

    def cancel(self, job_ids) -> None:
        pass

    def max_array_size(self) -> int:
        return 100001

    def room(self, scripts, max_queued):
        return Room(self.free, "MaxSubmitJobs of a test: 100")


def scattered_failures(exp_dir: Path) -> tuple[dict, list[str]]:
    runs = [SimpleNamespace(name=f"r{i}", index=i, params={}) for i in range(6000)]
    array = SimpleNamespace(script="array.sbatch", offset=0, count=6000, spec="0-5999", after_previous=False,
                            stage="", trigger=None)
    st = model.new_experiment("big", runs, exp_dir, "recorder",
                              model.new_plan([array], "sidecar.sbatch", None, str(exp_dir)))
    failed = [f"r{i}" for i in range(0, 6000, 2)]
    for name in failed:
        model.add_attempt(st["runs"][name], model.new_attempt(1, f"7_{name[1:]}", None, "log", "FAILED"))
    return st, failed


def test_3000_scattered_retries_go_out_in_few_sbatch_calls(tmp_path):
    st, failed = scattered_failures(tmp_path)
    sched = Recorder(tmp_path, None)
    jobs = actions.submit_runs(tmp_path, st, sched, failed, "retry")
    specs = [sub.array or "" for sub in sched.subs]
    assert len(jobs) == len(specs) == len(arrayspec.split(range(0, 6000, 2))) <= 5
    assert all(len(spec) <= arrayspec.MAX_SPEC for spec in specs)
    assert sorted(t for spec in specs for t in expand_range(spec)) == list(range(0, 6000, 2))
    assert all(len(st["runs"][n]["attempts"]) == 2 for n in failed) and not st.get("held")


def test_retries_beyond_the_room_are_held_for_the_sidecar(tmp_path):
    st, failed = scattered_failures(tmp_path)
    sched = Recorder(tmp_path, 100)
    actions.submit_runs(tmp_path, st, sched, failed, "retry")
    assert [expand_range(sub.array or "") for sub in sched.subs] == [list(range(0, 200, 2))]
    assert sorted(st["held"], key=lambda n: int(n[1:])) == failed[100:]
    assert st["limits"] == "MaxSubmitJobs of a test: 100"
    assert st["history"][-1]["kind"] == "SUBMIT_HELD"
    sched.free = None
    actions.submit_runs(tmp_path, st, sched, sorted(st["held"]), "retry")
    assert "held" not in st and "limits" not in st
    assert all(len(st["runs"][n]["attempts"]) == 2 for n in failed)
    statefile.write(tmp_path, st)  # the state as it stands is one a reader accepts
    assert statefile.read(tmp_path)["runs"]["r2"]["attempts"][-1]["attempt"] == 2


# --------------------------------------------------------------------------- on the cluster

def queued_in_qos() -> int:
    """Tasks of the test user in the limited QOS now (pending, running or completing)."""
    out = subprocess.run(["squeue", "-h", "-r", f"--qos={QOS}", f"--user={getpass.getuser()}",
                          "-o", "%i"], capture_output=True, text=True, timeout=60).stdout
    return len(out.split())


@pytest.mark.usefixtures("slurm")
def test_sbatch_takes_the_specs_of_3000_scattered_tasks_and_refuses_a_longer_one(tmp_path):
    """The length limit is sbatch's own (measured: 4,092 characters accepted, 4,117 refused)."""
    script = tmp_path / "noop.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --job-name=limits-spec-{uuid.uuid4().hex[:6]}\n#SBATCH --output=/dev/null\n"
                      "#SBATCH --hold\ntrue\n")
    sched = SlurmScheduler(tmp_path)
    groups = arrayspec.split(range(0, 6000, 2), max_len=arrayspec.MAX_SPEC - 2)
    ids: list[str] = []
    try:
        for group in groups:
            ids.append(sched.submit(Submission(script, array=arrayspec.compress(group) + "%4")))
        assert len(ids) == len(groups) <= 5
        with pytest.raises(SchedulerError, match="too long"):
            ids.append(sched.submit(Submission(script, array=arrayspec.compress(range(0, 2000, 2)))))
    finally:
        sched.cancel(ids)


@pytest.mark.usefixtures("slurm")
def test_max_job_count_counts_what_the_controller_holds_a_cancelled_rest_too(tmp_path):
    """MaxJobCount counts every job the controller holds: an array cancelled while its tasks wait
    still counts them until MinJobAge purges it (a launch right after cancelling a 100,000-task
    array was refused for it). The room autoexp computes counts them; the user's queue is empty."""
    script = tmp_path / "t.sbatch"
    script.write_text("#!/bin/bash\n#SBATCH --output=/dev/null\n#SBATCH --time=00:01:00\n#SBATCH --mem=50M\ntrue\n")
    sched = SlurmScheduler(tmp_path)
    job = sched.submit(Submission(script, array="0-99", options=("--hold",)))
    try:
        subprocess.run(["scontrol", "release", f"{job}_0"], check=True, capture_output=True, timeout=60)
        wait_for(lambda: not subprocess.run(["squeue", "-h", "-t", "PENDING,RUNNING", "-r", "-o", "%i", f"--jobs={job}"],
                                            capture_output=True, text=True, timeout=60).stdout.count(f"{job}_0\n"),
                 timeout=120, what=f"task {job}_0 to run and end")
    finally:
        sched.cancel([job])
    mine = subprocess.run(["squeue", "-h", f"--user={getpass.getuser()}", "-o", "%i"], capture_output=True, text=True,
                          timeout=60).stdout.split()
    assert not [line for line in mine if line.split("_")[0] == job]  # the user's queue counts none of it
    held = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i"], capture_output=True, text=True,
                          timeout=60, check=True).stdout.split()
    assert sum(limits.tasks(line) for line in held if line.split("_")[0] == job) == 100  # 0 ran, 1-99 cancelled
    max_jobs = int(parse_config(subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                                               timeout=60).stdout)["MaxJobCount"])
    room = sched.room([script], None)
    assert room.why.startswith("MaxJobCount of the controller") and room.free is not None
    assert room.free <= max_jobs - 100 - 1


@pytest.mark.core
@pytest.mark.usefixtures("slurm")
def test_a_sweep_beyond_max_submit_jobs_completes_within_it(workdir, cleanup):
    """100 runs, 25 may be queued: the launch submits what fits, the sidecar the rest as tasks
    leave the queue; sbatch never refuses; the sidecar killed mid-way and resumed submits no run twice."""
    if subprocess.run(["sacctmgr", "-n", "-P", "show", "qos", f"name={QOS}", "format=name"], capture_output=True,
                      text=True, timeout=60).stdout.strip() != QOS \
            or "limits" not in parse_config(subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                                                           timeout=60).stdout).get("AccountingStorageEnforce", ""):
        pytest.fail(f"the test cluster does not enforce the QOS {QOS}: run cluster/setup.sh")
    name = f"limits-{uuid.uuid4().hex[:6]}"
    config = {"name": name, "output_dir": str(workdir / "exp"), "command": "sleep 0.5",
              "sweep": {"grid": {"i": list(range(100))}},
              "slurm": {"time": "00:05:00", "mem": "50M", "qos": QOS},
              "sidecar": {"mem": "200M", "time": "00:15:00"}, "monitor": {"interval": 1}}
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], queued_in_qos())
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        proc = run_cli("launch", write_config(workdir, config), cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        exp = workdir / "exp" / name
        cleanup(exp)
        st = read_state(exp)
        launched = sum(len(expand_range(a["tasks"])) for a in st["arrays"])
        assert 0 < launched <= LIMIT and len(st["held"]) == 100 - launched
        shown = run_cli("status", exp, cwd=workdir).stdout
        assert f"{100 - launched} runs not yet submitted (MaxSubmitJobsPerUser of QOS {QOS}: 25" in shown
        st = wait_for(lambda: (lambda s: s if 20 <= len(s.get("held") or {}) <= 60 else None)(read_state(exp)),
                      timeout=180, interval=0.2, what="the sidecar to have submitted part of the rest")
        if st["sidecar"].get("host") == socket.gethostname():
            os.kill(st["sidecar"]["pid"], signal.SIGKILL)  # mid-way, at whatever instant
        else:
            subprocess.run(["scancel", "--signal=KILL", "--full", st["sidecar"]["job_id"]], check=True, timeout=60)
        wait_for(lambda: run_cli("resume", exp, cwd=workdir).stdout.startswith("submitted sidecar"), timeout=120,
                 interval=1, what="a new sidecar")
        st = wait_state_done(exp, timeout=300)
    finally:
        stop.set()
        sampler.join()
    assert peak[0] <= LIMIT, f"{peak[0]} tasks queued at once in QOS {QOS}"
    assert st["counts"] == {"COMPLETED": 100} and "held" not in st
    assert all(len(run["attempts"]) == 1 for run in st["runs"].values())
    kinds = {entry["kind"] for entry in st["history"]}
    assert not kinds & {"SUBMIT_FAILED", "SCHEDULER_ERROR", "SIDECAR_ERROR", "RETRY_FAILED"}, kinds
    assert not [e for e in st["history"] if "refused" in str(e.get("details"))]
    # accounting agrees: every task of every array ran once, one per run (nothing submitted twice)
    rows = subprocess.run(["sacct", "-X", "-n", "-P", "--duplicates", "--format=JobID,State",
                           f"--jobs={','.join(a['job_id'] for a in st['arrays'])}"],
                          capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert len(rows) == 100 and all(row.endswith("|COMPLETED") for row in rows)
    assert sorted(row.split("|")[0] for row in rows) == sorted(run["job_id"] for run in st["runs"].values())
