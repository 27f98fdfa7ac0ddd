"""The records of state.json, typed, and the only code that creates them.

Kept as the plain JSON document it is on disk (TypedDicts, not classes): `autoexp status` reads 10,000 runs in a
fraction of a second, and every writer's change is exactly what lands in the file. Built here and nowhere else: an
experiment (:func:`new_experiment`), a run, an attempt (one allocation: :func:`new_attempt`, :func:`requeued_attempt`)
whose latest one a run mirrors (:func:`show_latest`), the lease, a history entry (:func:`log`), a log event, and the
bookkeeping of the plan, the queries, events.log and the log cursors. Times are UTC ISO 8601 (autoexp/clock.py); the
one liveness rule for a lease is autoexp/liveness.py.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from .clock import now

if TYPE_CHECKING:
    from typing_extensions import NotRequired

SCHEMA = 1


class Attempt(TypedDict):
    """One allocation of a run: a submission, a retry, or a Slurm requeue of the same task."""

    attempt: int  # 1 for the first allocation
    job_id: str  # "<array>_<task>"
    state: str  # Slurm's word (see jobstates)
    submitted: str | None  # UTC ISO 8601, like every time in the state
    started: str | None
    completed: str | None
    elapsed_s: int | None
    exit_code: str | None
    nodes: str | None
    log: str  # where the task writes (logs/<script>/slurm-<array>_<task>.out, see task_log)
    requeued: NotRequired[bool]  # Slurm put the same task back in the queue
    reason: NotRequired[str]  # what follows the state in accounting ("by 1000")
    ended_seen: NotRequired[str]  # when a poll first saw it ended
    missing_since: NotRequired[str]  # when it went missing from accounting
    cancelled: NotRequired[str]  # who cancelled it: never retried by a rule
    retry: NotRequired[str]  # why a retry followed it ("none left": none could)
    failure: NotRequired[str]  # how it failed: its state, or OUT_OF_MEMORY when its log says so
    given: NotRequired[dict[str, Any]]  # what a retry rule changed for it, and why (remedies)
    after_jobs: NotRequired[dict[str, str | None]]  # stage units: the job each unit it waits for had


class Event(TypedDict):
    """A match of a log rule (or a function's outcome) in a run's log."""

    name: str
    time: str
    groups: dict[str, Any]
    attempt: NotRequired[int]


class Run(TypedDict):
    """One point of the sweep; the mirrored fields are those of its latest attempt."""

    index: int
    params: dict[str, Any]
    state: str
    job_id: str | None
    submitted: str | None
    started: str | None
    completed: str | None
    elapsed_s: int | None
    exit_code: str | None
    nodes: str | None
    attempts: list[Attempt]
    events: list[Event]
    metrics: dict[str, Any]
    log_cursor: NotRequired[dict[str, Any]]  # where the sidecar stopped reading the log (logwatch)
    cancelled: NotRequired[str]
    result: NotRequired[str | None]  # a function sweep's return value (repr, shortened)
    error: NotRequired[str]
    # A staged experiment's runs are its units (see autoexp/stages.py): one stage of one point.
    stage: NotRequired[str]
    point: NotRequired[str]  # the sweep point's name, whose directory its stages share
    dir: NotRequired[str]  # its directory, relative to the experiment (default runs/<name>)
    after: NotRequired[list[str]]  # the units it waits for (prepare, the previous stage's)
    axis: NotRequired[dict[str, Any]]  # its stage's own axis values (the task of run × task)
    skipped: NotRequired[str]  # why it never ran (state SKIPPED)
    triggered: NotRequired[dict[str, int]]  # stage started per event -> how many of its events started one


class Lease(TypedDict, total=False):
    """``state["sidecar"]``: the sidecar job that may write polls, and its heartbeat."""

    job_id: str
    submitted: str
    reason: str  # why it was submitted: launch, retry, resume, handover, chain
    host: str | None
    pid: int
    started: str
    heartbeat: str | None  # renewed by every poll
    interval: float  # seconds between polls
    mode: str  # job, chain or carried
    state: str  # its job's state in accounting
    previous: str | None  # the holder it took the lease over from
    stopped: str  # it stopped by itself: the lease is free


class ArrayRecord(TypedDict):
    """One submitted array (a launch or a retry)."""

    job_id: str
    tasks: str  # the --array spec without its throttle
    attempt: int  # the highest attempt number among its runs
    script: str  # relative to the experiment directory
    offset: int  # run index of task 0
    submitted: str
    reason: str


class Intent(TypedDict):
    """A submission about to be made (written before sbatch runs), kept until its fate is known: one that
    sbatch accepted before a kill or a timeout is found again by its tag instead of being submitted twice."""

    tag: str  # the mark only this submission carries (in its job name)
    script: str  # relative to the experiment directory
    offset: int  # run index of task 0
    runs: list[list[Any]]  # [run index, run name, attempt number] of each task
    spec: str  # the --array value
    reason: str
    time: str  # when it was made
    unknown: NotRequired[str]  # why its fate is not known yet (sbatch timed out, ...)
    given: NotRequired[dict[str, dict[str, Any]]]  # per run name, what a retry rule changed


class Entry(TypedDict):
    """One entry of the history, which events.log shows."""

    time: str
    kind: str
    subject: str
    details: NotRequired[dict[str, Any]]


class PlannedArray(TypedDict):
    """One array script as planned: runs ``offset`` .. ``offset + count - 1`` as tasks 0 .. count - 1."""

    script: str
    offset: int
    count: int
    spec: str  # the --array value, "0-7%4"
    after_previous: bool  # split arrays run one after the other to keep max_parallel exact
    stage: NotRequired[str]  # a staged experiment: the stage it runs
    trigger: NotRequired[dict[str, Any]]  # started per log event: stage, event, exists, groups, cases


class Plan(TypedDict):
    arrays: list[PlannedArray]
    sidecar: str  # the sidecar's script
    max_parallel: int | None
    config_dir: NotRequired[str]  # the config file's directory (templates re-rendered for a retry)
    max_queued: NotRequired[int | None]  # the config's cap on queued tasks (autoexp/limits.py)
    task_logs: NotRequired[str]  # where tasks' logs go: <task_logs>/<script>/ (see array_logs); absent
    # in a plan of an earlier version, whose scripts write them through .index/ into each run's directory


class Query(TypedDict, total=False):
    """The sidecar's scheduler queries: when the last one was asked, and its failures in a row."""

    asked: float  # epoch seconds
    failures: int
    failing_since: str
    error: str


class EventsMark(TypedDict):
    """What events.log holds (report.events_update): entries of the history, and its size."""

    entries: int
    bytes: int


class State(TypedDict):
    schema: int
    experiment: str
    exp_dir: str
    scheduler: str
    created: str
    updated: str
    done: bool
    sidecar: Lease
    watchdog: NotRequired[Lease]  # sidecar.mode carried: the rare sidecar job; the tasks hold the lease
    arrays: list[ArrayRecord]
    counts: dict[str, int]
    runs: dict[str, Run]
    history: list[Entry]
    plan: NotRequired[Plan]
    intents: NotRequired[list[Intent]]
    query: NotRequired[Query]
    events_log: NotRequired[EventsMark]
    ended_by: NotRequired[str]  # why the experiment ended before its runs did (a failed prepare step)
    held: NotRequired[dict[str, str]]  # run -> why it is owed a submission the site's limits left no room for
    limits: NotRequired[str]  # the limit that last held runs back (actions.hold)
    scaffolded: NotRequired[str]  # a scaffolded directory's own summary, whose Status autoexp keeps (seedviews)


class PlannedRun(Protocol):
    name: str
    index: int
    params: dict[str, Any]


class ArraySpec(Protocol):
    script: str
    offset: int
    count: int
    spec: str
    after_previous: bool
    stage: str
    trigger: dict[str, Any] | None


# --------------------------------------------------------------------------- the records
def new_experiment(name: str, runs: Iterable[PlannedRun], exp_dir: Path, scheduler: str,
                   plan: Plan | None = None) -> State:
    """The state of a planned experiment: every run PLANNED, nothing submitted."""
    when = now()
    state: State = {
        "schema": SCHEMA, "experiment": name, "exp_dir": str(exp_dir), "scheduler": scheduler,
        "created": when, "updated": when, "done": False, "sidecar": {}, "arrays": [], "counts": {},
        "runs": {run.name: new_run(run.index, run.params, getattr(run, "stage", None) and run)
                 for run in runs}, "history": [],
    }
    recount(state)
    log(state, "PLAN", name, Runs=len(state["runs"]), Directory=str(exp_dir))
    if plan is not None:
        state["plan"] = plan
    return state


def new_plan(arrays: Iterable[ArraySpec], sidecar: str, max_parallel: int | None, config_dir: str,
             max_queued: int | None = None) -> Plan:
    planned: list[PlannedArray] = []
    for a in arrays:
        array: PlannedArray = {"script": a.script, "offset": a.offset, "count": a.count, "spec": a.spec,
                               "after_previous": a.after_previous}
        if a.stage:
            array["stage"] = a.stage
        if a.trigger:
            array["trigger"] = a.trigger
        planned.append(array)
    return {"arrays": planned, "sidecar": sidecar, "max_parallel": max_parallel, "config_dir": config_dir,
            "max_queued": max_queued, "task_logs": TASK_LOGS}


TASK_LOGS = "logs"


def script_logs(script: str) -> str:
    """The directory, relative to the experiment, that an array script's tasks write their logs in
    (its --output): ``logs/<script without .sbatch>/``, made by plan, so that a launch creates
    nothing per run (each task makes its run's directory and links its log there)."""
    return f"{TASK_LOGS}/{script.removesuffix('.sbatch')}"


def array_logs(plan: Plan | None, script: str) -> str | None:
    """script_logs, or None for a plan of an earlier version (its scripts write into each run's directory)."""
    return script_logs(script) if plan and plan.get("task_logs") else None


def query_of(state: State) -> Query:
    """The state's record of the sidecar's scheduler queries (created empty)."""
    return state.setdefault("query", {})


def events_mark(state: State) -> EventsMark:
    """The state's record of what events.log holds (created as "nothing yet")."""
    return state.setdefault("events_log", {"entries": 0, "bytes": 0})


def new_log_cursor(path: str) -> dict[str, Any]:
    """Where the sidecar is in a log (logwatch.scan moves it on)."""
    return {"path": str(path), "offset": 0, "dev": None, "ino": None, "tail": "", "size": None}


def new_run(index: int, params: dict[str, Any], unit: Any = None) -> Run:
    """A planned run; ``unit`` (a stages.Unit) makes it one stage of a sweep point."""
    run: Run = {"index": index, "params": params, "state": "PLANNED", "job_id": None, "submitted": None,
                "started": None, "completed": None, "elapsed_s": None, "exit_code": None, "nodes": None,
                "attempts": [], "events": [], "metrics": {}}
    if unit is not None:
        run.update({"stage": unit.stage, "point": unit.point, "dir": unit.dir, "after": list(unit.after)})
        if unit.axis:
            run["axis"] = dict(unit.axis)
    return run


def task_log(exp_dir: Path, run_name: str, array_job: str, task: int, run: Run | None = None,
             logs: str | None = None) -> str:
    """Where an array task writes its log (the array script's --output): in ``logs`` (array_logs),
    else, in an experiment planned by an earlier version, through .index/ into runs/<run>."""
    if logs:
        return f"{exp_dir}/{logs}/slurm-{array_job}_{task}.out"
    directory = (run.get("dir") if run else None) or f"runs/{run_name}"
    return f"{Path(exp_dir) / directory}/slurm-{array_job}_{task}.out"  # one Path per task: 100,000 at launch


def drop_waiting(run: Run) -> None:
    """Forget the attempts at the end that never started (tasks cancelled before they ran, to wait
    on a new dependency or for good): they were never allocations."""
    while run["attempts"] and not run["attempts"][-1].get("started"):
        run["attempts"].pop()
    if run["attempts"]:
        show_latest(run)
    else:
        run.update({"state": "PLANNED", "job_id": None, "submitted": None, "started": None, "completed": None,
                    "elapsed_s": None, "exit_code": None, "nodes": None})


def mark_skipped(run: Run, reason: str, when: str) -> None:
    """A unit that will never run: what it waited for failed."""
    drop_waiting(run)
    run.update({"state": "SKIPPED", "completed": run.get("completed") or when, "skipped": reason})


def new_attempt(number: int, job_id: str, submitted: str | None, log: str,
                state: str = "PENDING", given: dict[str, Any] | None = None) -> Attempt:
    """A submitted allocation: waiting until accounting says otherwise; ``given`` is what a retry
    rule changed for it (memory, time, a parameter, an excluded node) and why."""
    attempt: Attempt = {"attempt": number, "job_id": job_id, "state": state, "submitted": submitted,
                        "started": None, "completed": None, "elapsed_s": None, "exit_code": None, "nodes": None,
                        "log": log}
    if given:
        attempt["given"] = given
    return attempt


def requeued_attempt(previous: Attempt, submitted: str | None) -> Attempt:
    """Slurm put the same task back in the queue: a new allocation, appending to the same log."""
    attempt = new_attempt(previous["attempt"] + 1, previous["job_id"], submitted, previous["log"],
                          given=previous.get("given"))
    attempt["requeued"] = True
    return attempt


def add_attempt(run: Run, attempt: Attempt) -> None:
    run["attempts"].append(attempt)
    show_latest(run)


def show_latest(run: Run) -> None:
    """Copy the latest attempt's fields onto the run: the run's state is its latest allocation's."""
    latest = run["attempts"][-1]
    run["state"], run["job_id"], run["submitted"] = latest["state"], latest["job_id"], latest.get("submitted")
    run["started"], run["completed"], run["elapsed_s"] = latest.get("started"), latest.get("completed"), \
        latest.get("elapsed_s")
    run["exit_code"], run["nodes"] = latest.get("exit_code"), latest.get("nodes")


SHARED = frozenset({"job_id", "state", "submitted", "started", "completed", "exit_code", "nodes", "reason"})


class _RunKeys:
    """Holds nothing: its instances' attribute dicts are compacted runs (see :func:`compact`)."""


class _AttemptKeys:
    """Holds nothing: its instances' attribute dicts are compacted attempts."""


_PARAMS_KEYS: dict[tuple[str, ...], type] = {}  # the parameters' names -> a class whose instances share them


def _refuse(self: Any, *args: Any, **kwargs: Any) -> None:
    raise TypeError("every waiting run of a kept state shares this empty value: assign a new one instead")


class _NoEvents(list):
    """The ``events`` of every run of a kept state that has none: one object, equal to ``[]``,
    that refuses change in place (a poll assigns a new list)."""

    append = extend = insert = remove = pop = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse  # type: ignore[assignment]


class _NoMetrics(dict):
    """The ``metrics`` of every run of a kept state that has none (see :class:`_NoEvents`)."""

    update = setdefault = pop = popitem = clear = _refuse  # type: ignore[assignment]
    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]


NO_EVENTS, NO_METRICS = _NoEvents(), _NoMetrics()


def compact(run: Run, memo: dict[str, str]) -> Run:
    """The same run in half the memory, for a state a sidecar keeps: still dicts and lists, equal
    in every way, but the run's and its attempts' share one key table with every other run's (an
    object's attribute dict shares its class's keys, PEP 412: 200 bytes instead of 480 for a run),
    and so do parameters with the same names; the strings a run repeats from its latest attempt
    (:func:`show_latest`), an array's tasks from each other (submission time, state, exit code)
    and the runs' parameters (a model's name) are one object each (``memo``); a run with no events
    or metrics yet holds the shared :data:`NO_EVENTS` and :data:`NO_METRICS`."""
    run["attempts"] = [_keys_shared(attempt, _AttemptKeys, memo, SHARED) for attempt in run["attempts"]]
    params = run.get("params")
    if params and type(params) is dict and all(type(k) is str for k in params):
        names = tuple(params)
        holder = _PARAMS_KEYS.get(names) or _PARAMS_KEYS.setdefault(names, type("_ParamsKeys", (), {}))
        run["params"] = _keys_shared(params, holder, memo, params.keys())
    if run.get("events") == []:
        run["events"] = NO_EVENTS
    if run.get("metrics") == {}:
        run["metrics"] = NO_METRICS
    return _keys_shared(run, _RunKeys, memo, SHARED)


def _keys_shared(record: Any, holder_class: type, memo: dict[str, str], shared: Collection[str]) -> Any:
    keys_shared = holder_class().__dict__
    for key, value in record.items():
        if key in shared and value.__class__ is str:
            value = memo.setdefault(value, value)
        keys_shared[key] = value  # a key the shared table cannot take makes this one dict a plain one
    return keys_shared


def mark_cancelled(run: Run, reason: str, when: str) -> None:
    """Cancelled by ``reason`` (the user, a rule): the sidecar's retry rules skip such runs."""
    if run["attempts"]:
        latest = run["attempts"][-1]
        latest.update({"state": "CANCELLED", "completed": latest.get("completed") or when, "cancelled": reason})
        show_latest(run)
    else:
        run.update({"state": "CANCELLED", "completed": run.get("completed") or when})
    run["cancelled"] = reason


def new_array(job_id: str, tasks: str, attempt: int, script: str, offset: int, submitted: str,
              reason: str) -> ArrayRecord:
    return {"job_id": job_id, "tasks": tasks, "attempt": attempt, "script": script, "offset": offset,
            "submitted": submitted, "reason": reason}


def new_intent(tag: str, script: str, offset: int, runs: Iterable[tuple[int, str, int]], spec: str,
               reason: str) -> Intent:
    return {"tag": tag, "script": script, "offset": offset, "runs": [list(r) for r in runs], "spec": spec,
            "reason": reason, "time": now()}


def new_event(name: str, when: str, groups: dict[str, Any], attempt: int | None = None) -> Event:
    event: Event = {"name": name, "time": when, "groups": groups}
    if attempt is not None:
        event["attempt"] = attempt
    return event


def log(state: State, kind: str, subject: str, when: str | None = None, **details: Any) -> None:
    """Add an entry to the experiment's history; events.log is rendered from these entries."""
    entry: Entry = {"time": when or now(), "kind": kind, "subject": subject}
    if details:
        entry["details"] = {k.replace("_", " "): v for k, v in details.items() if v is not None}
    state["history"].append(entry)


def recount(state: State) -> None:
    counts: dict[str, int] = {}
    for run in state["runs"].values():
        counts[run["state"]] = counts.get(run["state"], 0) + 1
    state["counts"] = dict(sorted(counts.items()))


def counts_text(state: State, sep: str = " - ") -> str:
    """``3 runs - 1 COMPLETED, 2 FAILED`` (``sep`` between the total and the counts)."""
    counts = ", ".join(f"{n} {s}" for s, n in state["counts"].items())
    return f"{len(state['runs'])} runs{sep}{counts}"


# --------------------------------------------------------------------------- the lease
def submitted_lease(job_id: str, reason: str) -> Lease:
    """A sidecar just submitted: the lease passes to it (it is alive until it misses heartbeats)."""
    return {"job_id": job_id, "submitted": now(), "host": None, "heartbeat": None, "reason": reason}


def held_lease(old: Lease, me: str, host: str, pid: int, interval: float, mode: str) -> Lease:
    """The lease as a sidecar takes it: its own submission's record kept, a dead holder's dropped."""
    lease: Lease = old.copy() if old.get("job_id") == me else {"job_id": me, "previous": old.get("job_id")}
    when = now()
    lease.update({"job_id": me, "host": host, "pid": pid, "started": when, "heartbeat": when,
                  "interval": interval, "mode": mode})
    lease.pop("stopped", None)
    return lease
