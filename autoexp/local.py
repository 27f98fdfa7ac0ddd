"""The local scheduler: array tasks as processes on this machine, for users without Slurm.

A submission starts a detached runner (``python -m autoexp.local ROOT JOB``) that runs the script's
tasks with the same environment variables, working directory, log files, ``%N`` throttle and
``--time`` limit Slurm would apply, and records each task in ``<exp>/.local/jobs/<id>.json``.
``query`` reads those records; a runner that died leaves its tasks NODE_FAIL, as a lost node would.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from .durations import slurm_time_seconds
from .errors import SchedulerError
from .clock import now, parse_time
from .arrayspec import expand_range
from .scheduler import JobRecord, Scheduler, Submission
from .slurm import read_directives
from .statefile import Lock, atomic_write

POLL = 0.2


class LocalScheduler(Scheduler):
    name = "local"

    def __init__(self, exp_dir: Path):
        super().__init__(exp_dir)
        self.root = self.exp_dir / ".local"
        self.jobs = self.root / "jobs"

    def _next_id(self) -> str:
        self.jobs.mkdir(parents=True, exist_ok=True)
        with Lock(self.root / "next_id.lock"):
            counter = self.root / "next_id"
            job_id = int(counter.read_text()) if counter.exists() else 1
            counter.write_text(str(job_id + 1))
        return str(job_id)

    def submit(self, sub: Submission) -> str:
        script = Path(sub.script)
        if not script.is_file():
            raise SchedulerError(f"local: no such script {script}")
        directives = read_directives(script)
        array = sub.array if sub.array is not None else directives.get("array")
        tasks, throttle = ([None], 0) if array is None else _parse_array(array)
        job_id = self._next_id()
        record = {"id": job_id, "script": str(script), "array": array is not None,
                  "throttle": throttle, "runner": None, "cwd": str(self.exp_dir),
                  "env": dict(sub.env), "name": directives.get("job-name", script.name), "tag": sub.tag,
                  "output": directives.get("output", "slurm-%j.out"),
                  "time_limit": slurm_time_seconds(directives.get("time")),
                  "dependency": [w for o in sub.options if o.startswith("--dependency=")
                                 for w in o.partition("=")[2].split(",")],
                  "tasks": {str(t): {"state": "PENDING", "submitted": now()} for t in tasks}}
        write_job(self.jobs / f"{job_id}.json", record)
        log = open(self.root / f"runner-{job_id}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "autoexp.local", str(self.root), job_id],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd=self.exp_dir,
                                env={**os.environ, **sub.env})
        log.close()
        with job_lock(self.jobs / f"{job_id}.json"):
            record = read_job(self.jobs / f"{job_id}.json")
            record["runner"] = proc.pid
            write_job(self.jobs / f"{job_id}.json", record)
        return job_id

    def query(self, job_ids: Sequence[str], since: dt.datetime) -> list[JobRecord]:
        records = []
        for job_id in sorted({j.split("_")[0] for j in job_ids}):
            file = self.jobs / f"{job_id}.json"
            if not file.exists():
                continue
            job = read_job(file)
            runner_alive = _alive(job.get("runner"))
            for task, info in job["tasks"].items():
                state = info["state"]
                if state in ("PENDING", "RUNNING") and not runner_alive:
                    state = "NODE_FAIL"
                full_id = f"{job_id}_{task}" if job["array"] else job_id
                records.append(JobRecord(
                    job_id=full_id, state=state, array_job=job_id if job["array"] else None,
                    task=int(task) if job["array"] else None, raw_id=full_id,
                    submitted=info.get("submitted"), started=info.get("started"),
                    completed=info.get("completed"), elapsed_s=info.get("elapsed_s"),
                    exit_code=info.get("exit_code"), nodes="localhost" if info.get("started") else None))
        return records

    def find(self, script: Path, tag: str, since: dt.datetime) -> list[str]:
        found = []
        for file in self.jobs.glob("*.json") if self.jobs.is_dir() else []:
            job = read_job(file)
            if job.get("tag") == tag and job.get("script") == str(script):
                found.append(job["id"])
        return sorted(found, key=int)

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:
            base, _, task = job_id.partition("_")
            file = self.jobs / f"{base}.json"
            if not file.exists():
                continue
            with job_lock(file):
                job = read_job(file)
                for name, info in job["tasks"].items():
                    if (task and name != task) or info["state"] not in ("PENDING", "RUNNING"):
                        continue
                    if info.get("pid"):
                        _kill_group(info["pid"])
                    info.update(state="CANCELLED", completed=now(), reason="by user")
                    _set_elapsed(info)
                write_job(file, job)

    def max_array_size(self) -> int:
        return 1_000_000


# --------------------------------------------------------------------------- job files

def job_lock(file: Path) -> Lock:
    return Lock(Path(f"{file}.lock"), timeout=30)


def read_job(file: Path) -> dict:
    return json.loads(Path(file).read_text())


def write_job(file: Path, job: dict) -> None:
    atomic_write(Path(file), json.dumps(job))


def _parse_array(spec: str) -> tuple[list[int], int]:
    body, _, throttle = spec.partition("%")
    return expand_range(body), int(throttle or 0)


def _alive(pid: int | None) -> bool:
    if not pid:
        return True  # not started yet
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _kill_group(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _set_elapsed(info: dict) -> None:
    start, end = parse_time(info.get("started")), parse_time(info.get("completed"))
    info["elapsed_s"] = int((end - start).total_seconds()) if start and end else 0


# --------------------------------------------------------------------------- the runner

def _output_path(pattern: str, job_id: str, task: str | None, cwd: str) -> Path:
    text = pattern.replace("%A", job_id).replace("%a", task or "0").replace("%j", job_id)
    path = Path(text)
    return path if path.is_absolute() else Path(cwd) / path


def _start(job: dict, task: str | None) -> subprocess.Popen:
    job_id = job["id"]
    env = {**os.environ, **job["env"], "SLURM_JOB_ID": job_id, "SLURM_JOB_NAME": job["name"],
           "SLURM_SUBMIT_DIR": job["cwd"], "SLURM_JOB_NODELIST": "localhost", "SLURMD_NODENAME": "localhost",
           "AUTOEXP_SCHEDULER": "local"}
    if job["array"]:
        env.update(SLURM_ARRAY_JOB_ID=job_id, SLURM_ARRAY_TASK_ID=task,
                   SLURM_ARRAY_TASK_COUNT=str(len(job["tasks"])))
    log_path = _output_path(job["output"], job_id, task, job["cwd"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # append, as --open-mode=append: never truncate a log
        return subprocess.Popen(["bash", job["script"]], cwd=job["cwd"], env=env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def run_job(root: Path, job_id: str) -> None:
    """Run every task of one job, at most ``throttle`` at a time, recording each transition."""
    file = root / "jobs" / f"{job_id}.json"
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    while True:
        with job_lock(file):
            job = read_job(file)
            for task, (proc, started) in list(running.items()):
                info = job["tasks"][task]
                code = proc.poll()
                limit = job.get("time_limit")
                if code is None and limit and time.monotonic() - started > limit:
                    _kill_group(proc.pid)
                    info.update(state="TIMEOUT")
                    proc.wait()
                    code = proc.returncode
                if code is None:
                    continue
                del running[task]
                if info["state"] == "RUNNING":
                    info["state"] = "COMPLETED" if code == 0 else "FAILED"
                info.setdefault("completed", now())
                info["exit_code"] = f"{max(code, 0)}:{-code if code < 0 else 0}"
                _set_elapsed(info)
            pending = [t for t, info in job["tasks"].items() if info["state"] == "PENDING"]
            ready = [t for t in pending if _dependency_met(root, job.get("dependency") or [], t)]
            slots = (job["throttle"] or len(job["tasks"])) - len(running)
            for task in ready[:max(slots, 0)]:
                proc = _start(job, task if job["array"] else None)
                running[task] = (proc, time.monotonic())
                job["tasks"][task].update(state="RUNNING", started=now(), pid=proc.pid)
            write_job(file, job)
        if not running and not pending:
            return
        time.sleep(POLL)


def _dependency_met(root: Path, words: list[str], task: str) -> bool:
    """Slurm's ``afterok:J``, ``afterok:J_T``, ``aftercorr:J`` (task T of J, the same id as this
    one) and ``afterany:J`` as the local runner reads them. One that can no longer be met keeps
    the task pending, as Slurm does: the sidecar cancels it."""
    for word in words:
        kind, _, target = word.partition(":")
        job_id, _, wanted = target.partition("_")
        file = root / "jobs" / f"{job_id}.json"
        if not file.exists():
            return False
        tasks = read_job(file)["tasks"]
        if kind == "aftercorr" and task in tasks:
            wanted = task
        states = [tasks[wanted]["state"]] if wanted in tasks else [i["state"] for i in tasks.values()]
        done = {"COMPLETED"} if kind != "afterany" else {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}
        if any(state not in done for state in states):
            return False
    return True


if __name__ == "__main__":
    run_job(Path(sys.argv[1]), sys.argv[2])
