"""The site's limits on what one user may have in the queue, and the room they leave now.

Slurm counts every array task as one job against ``MaxSubmitJobs`` (of the user's association, and
``MaxSubmitJobsPerUser`` of the QOS the job runs in), where jobs the user already has queued count
too, and against the controller's ``MaxJobCount``, where every job it holds counts: every user's,
and ended ones until ``MinJobAge`` purges them (a cancelled array of 100,000 waiting tasks for ten
minutes by default). A site may also document a cap it does not enforce
the same way (LUMI: about 200 jobs per user and partition): the config's ``max_queued``. autoexp
submits no more than the room and leaves the rest held, for the sidecar to submit as tasks leave
the queue (actions.submit_runs), so that sbatch never refuses a launch for a limit autoexp could
have known.

The parsers here read what ``sacctmgr -n -P`` and ``squeue -h -o`` print (autoexp/slurm.py asks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .arrayspec import spans

# sbatch's words when a submission limit refused a job: "no room now", not a failure.
LIMIT_REFUSAL = re.compile(r"MaxSubmitJob|SubmitJobLimit|GrpSubmitJob|MaxJobCount|"
                           r"temporarily unable to accept job", re.I)
ASSOC_FIELDS = "account,partition,qos,defaultqos,maxsubmitjobs"
QOS_FIELDS = "name,maxsubmitjobsperuser"
QUEUE_FORMAT = "%i|%q|%a|%P"


@dataclass(frozen=True)
class Limit:
    """At most ``count`` of the user's queued jobs that match (None matches any) may be queued."""

    count: int
    what: str  # "MaxSubmitJobsPerUser of QOS autoexp-limited"
    qos: str | None = None
    account: str | None = None
    partition: str | None = None
    controller: bool = False  # counts every job the controller holds (MaxJobCount), not the user's queued ones


@dataclass(frozen=True)
class Room:
    """How many more tasks may be queued now (None: no limit known), and which limit says so."""

    free: int | None
    why: str = ""


@dataclass(frozen=True)
class Queued:
    """Jobs of the user in the queue with the same QOS, account and partition."""

    tasks: int
    qos: str
    account: str
    partition: str


def association(text: str, account: str, partition: str | None) -> tuple[int | None, list[str], str]:
    """(MaxSubmitJobs, QOS list, default QOS) of the user's association with ``account`` from
    ``sacctmgr -n -P show assoc user=U format=ASSOC_FIELDS``: the partition's own association if
    it has one, else the account's."""
    rows = [line.split("|") for line in text.splitlines() if line.count("|") >= 4]
    mine = [r for r in rows if r[0] == account]
    row = next((r for r in mine if partition and r[1] == partition), None) \
        or next((r for r in mine if not r[1]), None)
    if row is None:
        return None, [], ""
    limit = row[4].strip()
    return (int(limit) if limit.isdigit() else None), [q for q in row[2].split(",") if q], row[3].strip()


def job_qos(asked: str | None, allowed: list[str], default: str) -> str:
    """The QOS a job runs in: the one it asks for, else the association's default, else the only
    one it may use, else Slurm's "normal"."""
    return asked or default or (allowed[0] if len(allowed) == 1 else "normal")


def qos_limit(text: str, name: str) -> int | None:
    """MaxSubmitJobsPerUser of QOS ``name`` from ``sacctmgr -n -P show qos format=QOS_FIELDS``."""
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) >= 2 and fields[0] == name and fields[1].strip().isdigit():
            return int(fields[1])
    return None


def queue(text: str) -> list[Queued]:
    """The user's jobs from ``squeue -h -o QUEUE_FORMAT``: a pending array's rest (``12_[4-99%5]``)
    counts each of its tasks."""
    found = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) >= 4:
            found.append(Queued(tasks(fields[0]), *fields[1:4]))
    return found


def held_by_controller(text: str) -> int:
    """How many jobs the controller holds, from ``squeue -h --states=all -o %i`` of every user (an
    array's rest, waiting or cancelled while waiting, counts each of its tasks)."""
    return sum(tasks(line.strip()) for line in text.splitlines() if line.strip())


def tasks(job: str) -> int:
    """The jobs a line of squeue stands for: ``12_[4-99%5]`` is 96, ``12_3`` or ``12`` one."""
    pending = re.match(r"^\d+_\[(.*)\]$", job)
    return sum(map(len, spans(pending.group(1)))) if pending else 1


def room(limits: list[Limit], queued: list[Queued], controller_jobs: int = 0) -> Room:
    """The room the tightest limit leaves, counting the queued jobs each limit counts (the
    controller's ``controller_jobs`` for MaxJobCount, which refuses a job that would reach it)."""
    best = Room(None)
    for limit in limits:
        if limit.controller:
            used, free = controller_jobs, max(0, limit.count - controller_jobs - 1)
        else:
            used = sum(q.tasks for q in queued if limit.qos in (None, q.qos) and limit.account in (None, q.account)
                       and (limit.partition is None or limit.partition in q.partition.split(",")))
            free = max(0, limit.count - used)
        if best.free is None or free < best.free:
            best = Room(free, f"{limit.what}: {limit.count}, {used} {'held' if limit.controller else 'queued'}")
    return best
