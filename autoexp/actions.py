"""Submitting and cancelling runs: the few things that change what the scheduler holds.

Launch, retry (from the CLI or a sidecar rule), cancel, resume and the sidecar's hand-over all go
through here, always with the state lock held by the caller, so that what is recorded in
state.json is exactly what the scheduler accepted.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import clock, model, statefile
from .errors import AutoexpError, SchedulerTimeout
from .jobstates import Phase, phase
from .model import Intent, State
from .scheduler import Scheduler, Submission


def compress(tasks: Iterable[int]) -> str:
    """[0, 1, 2, 3, 5, 7, 8] -> "0-3,5,7-8" (an --array value)."""
    parts: list[str] = []
    run: list[int] = []
    for task in sorted(set(tasks)):
        if run and task == run[-1] + 1:
            run.append(task)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [task]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


# s: an intent the scheduler does not know of is dropped only this long after it was made: a
# controller that hung may still be working through the requests it received meanwhile.
NOT_MADE_AFTER = 60


def submit_runs(exp_dir: Path, st: State, sched: Scheduler, names: list[str], reason: str,
                given: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Submit ``names`` as one array per planned array script and resource set; record them;
    return the job ids.

    Each run's attempt number is one more than its attempts so far; ``given`` (by run name) is
    what a retry rule changed for it (sidecar/remedies.py): runs given other resources go out as
    another array, with sbatch options that beat the script's lines. Each submission after the
    launch is first written to state.json as an intent carrying a tag (see :func:`settle_intents`),
    so that an answer lost to a kill or a timeout is found again, not submitted twice. On a refused
    submission the arrays this call already submitted are cancelled and the error is raised; on
    a timed-out one (SchedulerTimeout) its intent stays, to be settled by the next caller.

    With ``max_parallel``, a retry array waits (``afterany``) for the arrays still running, so
    that one cap holds for the whole sweep, not one per array. A stage's unit waits for its earlier
    stages (:func:`stage_waits`): runs that wait for different jobs go out as different arrays.
    """
    exp_dir = Path(exp_dir)
    plan = st["plan"]
    given = given or {}
    tracked = reason != "launch"  # a launch is all or nothing: its state is written only if it all went out
    throttle = f"%{plan['max_parallel']}" if plan.get("max_parallel") else ""
    submitted: list[str] = []
    try:
        previous = None
        for array in plan["arrays"]:
            lo, hi = array["offset"], array["offset"] + array["count"]
            sets: dict[tuple[tuple[str, ...], str], list[tuple[int, str]]] = {}
            for name in names:
                if lo <= st["runs"][name]["index"] < hi:
                    key = (tuple(resource_options(given.get(name))), stage_waits(st, name))
                    sets.setdefault(key, []).append((st["runs"][name]["index"], name))
            for (resources, waits), chosen in sorted(sets.items()):
                chosen.sort()
                attempts = {index: len(st["runs"][name]["attempts"]) + 1 for index, name in chosen}
                spec = compress(index - lo for index, _ in chosen) + throttle
                env = {}
                if any(a != 1 for a in attempts.values()):
                    common = max(set(attempts.values()), key=list(attempts.values()).count)
                    env["AUTOEXP_ATTEMPTS"] = " ".join(
                        [f"*:{common}"] + [f"{i}:{a}" for i, a in attempts.items() if a != common])
                after = [previous] if reason == "launch" and array.get("after_previous") and previous else \
                    running_arrays(st) if reason != "launch" and throttle else []
                dependency = ",".join(filter(None, [f"afterany:{':'.join(after)}" if after else "", waits]))
                options = [f"--dependency={dependency}"] if dependency else []
                intent = model.new_intent(secrets.token_hex(6), array["script"], lo,
                                          [(i, n, attempts[i]) for i, n in chosen], spec, reason)
                if resources:
                    intent["given"] = {n: given[n] for _, n in chosen}
                intents = st.setdefault("intents", []) if tracked else []
                intents.append(intent)
                if tracked:
                    statefile.write(exp_dir, st)  # the intent is on disk before sbatch can accept anything
                try:
                    job_id = sched.submit(Submission(exp_dir / array["script"], array=spec, env=env,
                                                     options=[*options, *resources],
                                                     tag=intent["tag"] if tracked else None))
                except SchedulerTimeout as err:
                    intent["unknown"] = str(err)
                    raise
                except BaseException:
                    intents.remove(intent)
                    raise
                intents.remove(intent)
                submitted.append(job_id)
                previous = job_id
                _record_array(exp_dir, st, job_id, intent)
    except BaseException:
        if submitted:
            try:
                sched.cancel(submitted)
            except AutoexpError:
                pass
        raise
    return submitted


def resource_options(given: dict[str, Any] | None) -> list[str]:
    """The sbatch options that give an attempt what a retry rule changed (mem, time, exclude)."""
    return [f"--{key}={given[key]}" for key in ("mem", "time", "exclude") if given and given.get(key)]


def running_arrays(st: State) -> list[str]:
    """The experiment's arrays that still have a task not ended (as last seen)."""
    active = {run["job_id"].split("_")[0] for run in st["runs"].values()
              if run["job_id"] and phase(run["state"]) < Phase.ENDED}
    return [a["job_id"] for a in st["arrays"] if a["job_id"] in active]


def stage_waits(st: State, name: str) -> str:
    """What a stage's unit waits for, as a ``--dependency`` list ("" for nothing): the same
    point's earlier stage with Slurm's ``aftercorr`` on its array (task i of eval after task i of
    train: both have the point's index as task id), the prepare step with ``afterok`` on its task.
    Only units that have not completed are waited for."""
    run = st["runs"][name]
    words = []
    for other in run.get("after") or []:
        job = st["runs"][other]["job_id"]
        if job and st["runs"][other]["state"] != "COMPLETED":
            same_point = st["runs"][other].get("point") == run.get("point")
            words.append(f"aftercorr:{job.partition('_')[0]}" if same_point else f"afterok:{job}")
    return ",".join(words)


def settle_intents(exp_dir: Path, st: State, sched: Scheduler) -> set[str]:
    """Find out what became of the submissions recorded as intents (their answer was lost): one
    the scheduler has is recorded as if the answer had come; one it does not have was never made
    and is dropped. Returns the names of the runs whose submission is still unknown (the
    scheduler cannot tell now): nothing may be submitted for them until it can."""
    unknown: set[str] = set()
    for intent in list(st.get("intents") or []):
        try:
            found = sched.find(Path(exp_dir) / intent["script"], intent["tag"],
                               (clock.parse_time(intent["time"]) or dt.datetime.now(dt.timezone.utc))
                               - dt.timedelta(minutes=10))
        except AutoexpError as err:
            unknown.update(name for _, name, _ in intent["runs"])
            model.log(st, "SUBMIT_UNKNOWN", intent["script"], Tag=intent["tag"], Error=str(err),
                      Result="its runs wait until the scheduler can tell whether it was accepted")
            continue
        if not found and time.time() - (clock.epoch(intent["time"]) or 0) < NOT_MADE_AFTER:
            unknown.update(name for _, name, _ in intent["runs"])  # a controller catching up may yet accept it
            continue
        st["intents"].remove(intent)
        if not found:
            model.log(st, "SUBMIT_NOT_MADE", intent["script"], Tag=intent["tag"],
                      Result="the scheduler has no such submission: it was never accepted")
            continue
        if len(found) > 1:
            sched.cancel(found[1:])
        _record_array(exp_dir, st, found[0], intent)
        model.log(st, "SUBMIT_FOUND", intent["script"], Job_ID=found[0], Tag=intent["tag"],
                  Result="accepted although its answer was lost; recorded now",
                  Cancelled=", ".join(found[1:]) or None)
    return unknown


def _record_array(exp_dir: Path, st: State, job_id: str, intent: Intent) -> None:
    when = clock.now()
    reason, spec, offset = intent["reason"], intent["spec"], intent["offset"]
    attempt = max(a for _, _, a in intent["runs"])
    st["arrays"].append(model.new_array(job_id, spec.split("%")[0], attempt, intent["script"], offset, when,
                                        reason))
    given = intent.get("given") or {}
    for index, name, number in intent["runs"]:
        task = index - offset
        run = st["runs"][name]
        record = model.new_attempt(number, f"{job_id}_{task}", when, model.task_log(exp_dir, name, job_id, task, run),
                                   given=given.get(name))
        if run.get("after"):
            record["after_jobs"] = {other: st["runs"][other]["job_id"] for other in run["after"]}
        run.pop("skipped", None)
        model.add_attempt(run, record)
    kind = "RETRY" if attempt > 1 else "SUBMIT_ARRAY"
    runs = intent["runs"]
    whys = sorted({g["why"] for g in given.values() if g.get("why")})
    model.log(st, kind, intent["script"], when, Job_ID=job_id, Tasks=spec,
              Runs=len(runs) if len(runs) > 5 else ", ".join(n for _, n, _ in runs),
              Attempt=attempt, Reason=None if reason == "launch" else reason,
              Given="; ".join(whys) or None)


def submit_sidecar(exp_dir: Path, st: State, sched: Scheduler, options: tuple = (), reason: str = "launch",
                   log: bool = True) -> str:
    """Submit the sidecar job and record it as the experiment's sidecar (the lease passes to it).

    ``log=False`` leaves no SUBMIT_SIDECAR entry: chain mode submits one job per poll.
    """
    job_id = sched.submit(Submission(Path(exp_dir) / st["plan"]["sidecar"], options=options))
    st["sidecar"] = model.submitted_lease(job_id, reason)
    if log:
        model.log(st, "SUBMIT_SIDECAR", f"job {job_id}", Reason=reason if reason != "launch" else None)
    return job_id


def submit_watchdog(exp_dir: Path, st: State, sched: Scheduler, period: float, begin: bool = True,
                    reason: str = "launch") -> str:
    """Carried mode: submit the sidecar script as the watchdog, to begin ``period`` s from now (or
    at once), and record it apart from the lease, which the running tasks hold; it polls once and
    submits the next one (sidecar/carried.py)."""
    options = (f"--begin=now+{max(1, round(period))}",) if begin else ()
    job_id = sched.submit(Submission(Path(exp_dir) / st["plan"]["sidecar"], options=options))
    st["watchdog"] = model.submitted_lease(job_id, reason)
    st["watchdog"]["interval"] = period
    return job_id


def cancel_runs(st: State, sched: Scheduler, names: list[str], reason: str,
                job_ids: list[str] | None = None) -> list[str]:
    """Cancel the current attempt of ``names``; they are marked CANCELLED and never retried.

    ``job_ids`` replaces the runs' own task ids in the scancel: whole arrays are one call, where
    10,000 task ids would be 10,000.
    """
    ids = job_ids if job_ids is not None else [st["runs"][n]["job_id"] or "" for n in names
                                               if st["runs"][n].get("job_id")]
    sched.cancel(ids)
    when = clock.now()
    for name in names:
        run = st["runs"][name]
        previous = run["state"]
        model.mark_cancelled(run, reason, when)
        model.log(st, "CANCEL", name, when, Previous=previous, Reason=reason)
    return ids
