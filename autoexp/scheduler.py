"""The one small interface autoexp needs from a scheduler, with Slurm and local implementations.

Everything above this module (plan, launch, the sidecar, status) talks to a :class:`Scheduler`
(made by :mod:`autoexp.backends`)
and never to ``sbatch`` or a process directly, so the same sidecar drives a real cluster or a
laptop. Records use Slurm's words for states and Slurm's ``<array>_<task>`` job ids.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .arrayspec import holds
from .jobstates import TERMINAL
from .limits import Room


@dataclass(slots=True)  # a poll of 10,000 running tasks holds 10,000 of them
class JobRecord:
    """One allocation of one job or array task, as accounting reports it."""

    job_id: str  # "123_4" for an array task, "123" for a plain job
    state: str  # Slurm's word: PENDING, RUNNING, COMPLETED, CANCELLED, ...
    array_job: str | None = None  # "123" for an array task
    task: int | None = None  # 4 for "123_4"
    raw_id: str = ""  # the task's own job id (JobIDRaw), unique per task
    submitted: str | None = None  # UTC ISO 8601
    started: str | None = None
    completed: str | None = None
    elapsed_s: int | None = None
    exit_code: str | None = None
    nodes: str | None = None
    reason: str = ""  # what follows the state, e.g. "by 1000" in "CANCELLED by 1000"
    collapsed: bool = False  # a row of tasks that never started (job_id "123_[4-9]"): one record for all
    tasks: tuple[range, ...] = ()  # a collapsed row's tasks (its task is None)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def lists(self, task: int) -> bool:
        """Whether this collapsed row stands for ``task``."""
        return holds(self.tasks, task)


@dataclass
class Submission:
    """What to submit: a script, the array's task ids (or None for a plain job), and extra env."""

    script: Path
    array: str | None = None  # "0-7%4", "3,17,42%4"
    env: Mapping[str, str] = field(default_factory=dict)
    options: Sequence[str] = ()  # extra sbatch options, e.g. ("--begin=now+60",)
    tag: str | None = None  # a mark only this submission carries, to find it again (see find)


class Scheduler(abc.ABC):
    """A batch scheduler seen from one experiment directory."""

    name: str = ""
    query_timeout: float | None = None  # seconds a query may take (None: the scheduler's default)

    def __init__(self, exp_dir: Path):
        self.exp_dir = Path(exp_dir)

    @abc.abstractmethod
    def submit(self, sub: Submission) -> str:
        """Submit and return the job id; raise SchedulerError with the scheduler's words."""

    @abc.abstractmethod
    def query(self, job_ids: Sequence[str], since: dt.datetime) -> list[JobRecord]:
        """Every allocation of these jobs (and their array tasks) since ``since``, in one call."""

    @abc.abstractmethod
    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel jobs or array tasks (``123`` or ``123_4``); unknown or finished ids are ignored."""

    @abc.abstractmethod
    def max_array_size(self) -> int:
        """Task ids of one array must be below this."""

    def room(self, scripts: Sequence[Path], max_queued: int | None) -> Room:
        """How many more tasks of these scripts may be queued now, by the tightest limit of any
        of them (None: no limit known); ``max_queued`` is the config's own cap."""
        return Room(None)

    def find(self, script: Path, tag: str, since: dt.datetime) -> list[str]:
        """The job ids of the submissions of ``script`` that carry ``tag`` (none: it was never
        accepted); raise SchedulerError when the scheduler cannot tell now."""
        raise NotImplementedError(f"the {self.name} scheduler cannot find a submission again")

    def requeue(self, job_ids: Sequence[str]) -> None:
        raise NotImplementedError(f"the {self.name} scheduler cannot requeue")

    def will_requeue(self, state: str, script: Path) -> bool:
        """Whether a job of ``script`` that ended in ``state`` is put back in the queue by the
        scheduler itself (Slurm does so after NODE_FAIL unless --no-requeue)."""
        return False

    def max_time(self, partition: str | None) -> float | None:
        """The longest time limit a job may ask for in ``partition`` (None: no limit known)."""
        return None

    def end_time(self, job_id: str) -> dt.datetime | None:
        """When a running job hits its time limit, if the scheduler says (None: unknown)."""
        return None

    def mute_mail(self, job_id: str) -> None:
        """Stop the job's end-of-job mail (a sidecar handing over is not the experiment's end)."""
        return None
