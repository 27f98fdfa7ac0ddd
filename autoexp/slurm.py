"""The Slurm scheduler: ``sbatch``, ``sacct``, ``scancel`` and ``scontrol``, each with a timeout.

``sacct`` is asked for UTC (``TZ=UTC``) in ``--parsable2`` form, so the parser deals only with
Slurm's own quirks: collapsed pending ranges (``123_[4-999%16]``), steps (``123_4.batch``),
``CANCELLED by 1000``, and the older allocations of requeued jobs (``--duplicates``).
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import limits
from .durations import slurm_time_seconds
from .errors import SchedulerError, SchedulerFull, SchedulerTimeout
from .limits import Limit, Room
from .arrayspec import spans
from .scheduler import JobRecord, Scheduler, Submission

SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "Submit", "Start", "End", "ElapsedRaw", "ExitCode",
                "NodeList")
TIMEOUTS = {"sbatch": 120, "sacct": 120, "scancel": 60, "scontrol": 30, "squeue": 60}
# Slurm sets these only in some jobs (a requeued one): a sidecar that was requeued must not pass
# them on to what it submits, where they would count requeues that never happened.
NOT_INHERITED = frozenset({"SLURM_RESTART_COUNT"})
# sbatch's words when the controller did not answer: the job may have been accepted all the same.
LOST_ANSWER = re.compile(r"timed out|Unable to contact|Zero Bytes were transmitted|Connection reset|"
                         r"Socket|Communication connection failure", re.I)
_ARRAY_ID = re.compile(r"^(\d+)_(\d+)$")
_ARRAY_PENDING = re.compile(r"^(\d+)_\[([0-9,\-:%]+)\]$")
log = logging.getLogger(__name__)
_UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")  # SLURM_TIME_FORMAT, in UTC (TZ=UTC)


def run(argv: Sequence[str], env: dict | None = None, timeout: float | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a Slurm command; a failure or timeout becomes a SchedulerError quoting its stderr."""
    tool = os.path.basename(argv[0])
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=env,
                              timeout=timeout or TIMEOUTS.get(tool, 60), stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SchedulerError(f"{tool} not found on PATH: is this a Slurm login node?") from None
    except subprocess.TimeoutExpired as err:
        raise SchedulerTimeout(f"{tool} did not answer within {err.timeout:.0f}s") from None
    if check and proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().replace("\n", " | ")
        raise SchedulerError(f"{tool} failed (exit {proc.returncode}): {message}")
    return proc


def utc_env() -> dict:
    return {**os.environ, "TZ": "UTC", "SLURM_TIME_FORMAT": "%Y-%m-%dT%H:%M:%S"}


class SlurmScheduler(Scheduler):
    name = "slurm"

    def submit(self, sub: Submission) -> str:
        # sbatch lets SBATCH_ACCOUNT override the script's #SBATCH --account line; the command line
        # beats both, so the account the plan wrote (and config.yaml records) is the one billed.
        account = read_directives(sub.script).get("account")
        argv = ["sbatch", "--parsable", *([f"--account={account}"] if account else []), *sub.options]
        if sub.tag:
            argv.append(f"--job-name={tagged_name(sub.script, sub.tag)}")
        if sub.array is not None:
            argv.append(f"--array={sub.array}")
        argv.append(str(sub.script))
        env = {**{k: v for k, v in os.environ.items() if k not in NOT_INHERITED}, **sub.env}
        try:
            proc = run(argv, env=env, check=False)
        except SchedulerTimeout as err:
            raise SchedulerTimeout(f"sbatch {sub.script.name}: {err}; it may have been accepted") from None
        if proc.returncode != 0:
            message = (proc.stderr or proc.stdout).strip().replace("\n", " | ")
            if LOST_ANSWER.search(message):
                raise SchedulerTimeout(f"sbatch {sub.script.name}: {message}; it may have been accepted")
            if limits.LIMIT_REFUSAL.search(message):
                raise SchedulerFull(f"sbatch refused {sub.script.name} for a submission limit: {message}")
            raise SchedulerError(f"sbatch refused {sub.script.name}: {message}")
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SchedulerError(f"sbatch printed no job id for {sub.script.name}: {proc.stdout!r}")
        return job_id

    def query(self, job_ids: Sequence[str], since: dt.datetime) -> list[JobRecord]:
        if not job_ids:
            return []
        argv = ["sacct", "--noheader", "--parsable2", "--duplicates", "--allocations",
                f"--format={','.join(SACCT_FIELDS)}", f"--jobs={','.join(job_ids)}",
                f"--starttime={since.astimezone(dt.timezone.utc):%Y-%m-%dT%H:%M:%S}"]
        return parse_sacct(run(argv, env=utc_env(), timeout=self.query_timeout).stdout)

    def find(self, script: Path, tag: str, since: dt.datetime) -> list[str]:
        """Asks the controller (squeue keeps a job MinJobAge after its end) and accounting; both
        must answer for "not there" to mean it was never accepted."""
        name = tagged_name(script, tag)
        queued = run(["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%F"]).stdout
        accounted = run(["sacct", "--noheader", "--parsable2", "--allocations", f"--name={name}",
                         "--format=JobID", f"--starttime={since.astimezone(dt.timezone.utc):%Y-%m-%dT%H:%M:%S}"],
                        env=utc_env()).stdout
        found = {line.strip() for line in queued.splitlines() if line.strip().isdigit()}
        found |= {line.split("_")[0].split(".")[0] for line in accounted.splitlines() if line[:1].isdigit()}
        return sorted(found, key=int)

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            proc = run(["scancel", *job_ids], check=False)
            # scancel complains about ids that already finished; that is not a failure for us.
            if proc.returncode != 0 and "Invalid job id" not in proc.stderr \
                    and "already completing or completed" not in proc.stderr:
                raise SchedulerError(f"scancel failed: {proc.stderr.strip()}")

    def requeue(self, job_ids: Sequence[str]) -> None:
        run(["scontrol", "requeue", ",".join(job_ids)])

    def max_array_size(self) -> int:
        return cluster_max_array_size()

    def room(self, scripts: Sequence[Path], max_queued: int | None) -> Room:
        """The limits of each script's account, QOS and partition (read once per process), with
        the user's queued jobs counted by one ``squeue``, and every job the controller holds by another."""
        found: list[Limit] = []
        for script in dict.fromkeys(scripts):
            directives = script_directives(Path(script))
            account = directives.get("account") or os.environ.get("SBATCH_ACCOUNT") or ""
            partition = directives.get("partition") or os.environ.get("SBATCH_PARTITION") or ""
            found += site_limits(account, directives.get("qos") or os.environ.get("SBATCH_QOS") or "", partition)
            if max_queued:
                found.append(Limit(max_queued, f"max_queued{f' in partition {partition}' if partition else ''}",
                                   partition=partition or None))
        if not found:
            return Room(None)
        queued = run(["squeue", "--noheader", f"--user={getpass.getuser()}", f"--format={limits.QUEUE_FORMAT}"])
        held = run(["squeue", "--noheader", "--states=all", "--format=%i"]).stdout \
            if any(limit.controller for limit in found) else ""
        return limits.room(found, limits.queue(queued.stdout), limits.held_by_controller(held))

    def will_requeue(self, state: str, script: Path) -> bool:
        """NODE_FAIL, and PREEMPTED under PreemptMode=REQUEUE, send a requeueable job back to the
        queue: it is requeueable with --requeue, or with JobRequeue=1 and no --no-requeue."""
        if state not in ("NODE_FAIL", "PREEMPTED"):
            return False
        if state == "PREEMPTED" and "REQUEUE" not in cluster_config().get("PreemptMode", "").upper():
            return False
        directives = script_directives(script)
        if "no-requeue" in directives or "requeue" in directives:
            return "requeue" in directives and "no-requeue" not in directives
        return cluster_config().get("JobRequeue", "1") == "1"

    def end_time(self, job_id: str) -> dt.datetime | None:
        return parse_end_time(run(["squeue", "--noheader", f"--jobs={job_id}", "--format=%e"], env=utc_env()).stdout)

    def max_time(self, partition: str | None) -> float | None:
        """MaxTime of ``partition`` (or the default one) from ``scontrol show partition``."""
        out = run(["scontrol", "show", "partition", *([partition] if partition else [])]).stdout
        return partition_max_time(out, partition)

    def mute_mail(self, job_id: str) -> None:
        run(["scontrol", "update", f"jobid={job_id}", "MailType=NONE"])


@lru_cache(maxsize=1)
def cluster_config() -> dict[str, str]:
    """``scontrol show config`` as a dict (read once per process)."""
    return parse_config(run(["scontrol", "show", "config"]).stdout)


def parse_config(text: str) -> dict[str, str]:
    """The ``Key = value`` lines of ``scontrol show config``; headers and blank lines are skipped.
    A value may be empty (``PowerPlugin = `` in 22.05): no match may run on into the next line."""
    return dict(re.findall(r"^(\w+)[ \t]*=[ \t]*(.*?)[ \t]*$", text, re.M))


def parse_end_time(text: str) -> dt.datetime | None:
    """A job's end time as ``squeue --format=%e`` prints it in :func:`utc_env`; None for ``N/A``
    (pending), ``NONE`` or no line (the job is gone)."""
    try:
        return dt.datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


@lru_cache(maxsize=16)
def site_limits(account: str, qos: str, partition: str) -> tuple[Limit, ...]:
    """The controller's MaxJobCount, and MaxSubmitJobs of the user's association with ``account``
    (else their default account) and of the QOS a job asking for ``qos`` runs in; without an
    accounting database only the controller's."""
    found = []
    max_jobs = cluster_config().get("MaxJobCount", "")
    if max_jobs.isdigit():
        found.append(Limit(int(max_jobs), "MaxJobCount of the controller (every user's jobs, and ended ones "
                                          "until MinJobAge)", controller=True))
    user = getpass.getuser()
    # The three questions at once (each sacctmgr takes ~0.2 s, most of a launch's own time); the
    # QOS is known only from the association, so every QOS is asked for.
    asks = [["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", f"format={limits.ASSOC_FIELDS}"],
            ["sacctmgr", "-n", "-P", "show", "qos", f"format={limits.QOS_FIELDS}"]]
    if not account:
        asks.append(["sacctmgr", "-n", "-P", "show", "user", user, "format=defaultaccount"])
    try:
        with ThreadPoolExecutor(len(asks)) as pool:
            answers = [future.result().stdout for future in [pool.submit(run, argv) for argv in asks]]
        account = account or answers[2].strip()
        limit, allowed, default = limits.association(answers[0], account, partition or None)
        if limit is not None:
            found.append(Limit(limit, f"MaxSubmitJobs of your association with account {account}", account=account))
        name = limits.job_qos(qos, allowed, default)
        per_user = limits.qos_limit(answers[1], name)
        if per_user is not None:
            found.append(Limit(per_user, f"MaxSubmitJobsPerUser of QOS {name}", qos=name))
    except SchedulerError as err:
        log.warning("the accounting database cannot tell the submission limits: %s", err)
    return tuple(found)


def cluster_max_array_size() -> int:
    value = cluster_config().get("MaxArraySize", "")
    return int(value) if value.isdigit() else 1001


def partition_max_time(text: str, partition: str | None) -> float | None:
    """MaxTime in seconds of the named partition (else the Default=YES one) in ``scontrol show
    partition`` output; None when UNLIMITED or not found."""
    for block in re.split(r"\n(?=PartitionName=)", text.strip()):
        fields = dict(re.findall(r"(\w+)=(\S*)", block))
        if (fields.get("PartitionName") == partition) if partition else fields.get("Default") == "YES":
            return slurm_time_seconds(fields.get("MaxTime"))
    return None


def tagged_name(script: Path, tag: str) -> str:
    """The job name of a tagged submission: the script's own name with the tag after it."""
    return f"{script_directives(Path(script)).get('job-name') or Path(script).stem}.{tag}"


def read_directives(script: Path) -> dict[str, str]:
    """The ``#SBATCH --key=value`` lines at the top of a script (a bare flag has the value "")."""
    found = {}
    for line in Path(script).read_text().splitlines():
        if line.startswith("#SBATCH"):
            for word in shlex.split(line[len("#SBATCH"):]):
                key, _, value = word.lstrip("-").partition("=")
                found[key] = value
        elif line.strip() and not line.startswith("#"):
            break
    return found


@lru_cache(maxsize=64)
def script_directives(script: Path) -> dict[str, str]:
    """:func:`read_directives`, read once per script; {} for a script that cannot be read."""
    try:
        return read_directives(script)
    except OSError:
        return {}


# --------------------------------------------------------------------------- sacct parsing

def _time(text: str) -> str | None:
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    return text + "Z" if _UTC_TIME.match(text) else text


def parse_sacct(text: str) -> list[JobRecord]:
    """Records from ``sacct --parsable2`` output with :data:`SACCT_FIELDS`; steps are dropped."""
    records: list[JobRecord] = []
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < len(SACCT_FIELDS) or "." in cols[0]:  # a step (123.batch, 123_4.0): its row says it all
            continue
        common = _columns(cols)
        pending = _ARRAY_PENDING.match(cols[0])
        if pending:  # tasks that never started: one row, one record (100,000 waiting tasks cost one)
            records.append(JobRecord(job_id=cols[0], array_job=pending.group(1), collapsed=True,
                                     tasks=spans(pending.group(2)),
                                     **{**common, "started": None, "elapsed_s": 0, "nodes": None}))
            continue
        one_task = _ARRAY_ID.match(cols[0])
        if one_task:
            records.append(JobRecord(job_id=cols[0], array_job=one_task.group(1), task=int(one_task.group(2)),
                                     **common))
        else:
            records.append(JobRecord(job_id=cols[0].split("+")[0], **common))
    return records


def _columns(cols: list[str]) -> dict[str, Any]:
    _, raw_id, state, submit, start, end, elapsed, exit_code, nodes = cols[:9]
    state, _, reason = state.partition(" ")
    return {"raw_id": raw_id, "state": state, "reason": reason, "submitted": _time(submit),
            "started": None if state == "PENDING" else _time(start),
            "completed": _time(end) if state not in ("PENDING", "RUNNING") else None,
            "elapsed_s": int(elapsed) if elapsed.isdigit() else None, "exit_code": exit_code or None,
            "nodes": nodes if nodes and nodes != "None assigned" else None}
