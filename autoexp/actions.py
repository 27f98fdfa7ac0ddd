"""Submitting and cancelling runs: the few things that change what the scheduler holds.

Launch, retry (from the CLI or a sidecar rule), cancel, resume and the sidecar's hand-over all go
through here, always with the state lock held by the caller, so that what is recorded in
state.json is exactly what the scheduler accepted.
"""

from __future__ import annotations

import bisect
import datetime as dt
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from . import arrayspec, clock, model, statefile
from .errors import AutoexpError, SchedulerFull, SchedulerTimeout
from .jobstates import Phase, phase
from .limits import Room
from .model import Intent, PlannedArray, State
from .scheduler import Scheduler, Submission


# s: an intent the scheduler does not know of is dropped only this long after it was made: a
# controller that hung may still be working through the requests it received meanwhile.
NOT_MADE_AFTER = 60


def submit_runs(exp_dir: Path, st: State, sched: Scheduler, names: list[str], reason: str,
                given: dict[str, dict[str, Any]] | None = None, hold: bool = True,
                room: Room | None = None) -> list[str]:
    """Submit ``names`` as one array per planned array script and resource set, as far as the
    site's limits leave room; record them; return the job ids.

    Each run's attempt number is one more than its attempts so far; ``given`` (by run name) is
    what a retry rule changed for it (sidecar/remedies.py): runs given other resources go out as
    another array, with sbatch options that beat the script's lines. Each submission after the
    launch is first written to state.json as an intent carrying a tag (see :func:`settle_intents`),
    so that an answer lost to a kill or a timeout is found again, not submitted twice. On a refused
    submission the arrays this call already submitted are cancelled and the error is raised; on
    a timed-out one (SchedulerTimeout) its intent stays, to be settled by the next caller.

    The room the site's limits leave (Scheduler.room: MaxSubmitJobs of the association and QOS,
    MaxJobCount, ``max_queued``, less what the user has queued) caps the tasks submitted, and an
    array goes out as the fewest ``--array`` values sbatch takes (arrayspec.split). Runs left out,
    those a refusal for a limit (SchedulerFull) leaves out, and stage units whose earlier stage is
    not submitted yet are held in ``st["held"]`` (unless not ``hold``: the sidecar's retry rules
    ask again every poll), for the sidecar to submit as tasks leave the queue (SUBMIT_HELD).
    ``room`` is given by a caller that asked already (:func:`room_for`).

    With ``max_parallel``, a retry array waits (``afterany``) for the arrays still running, so
    that one cap holds for the whole sweep, not one per array. A stage's unit waits for its earlier
    stages (:func:`stage_waits`): runs that wait for different jobs go out as different arrays.
    """
    exp_dir = Path(exp_dir)
    plan = st["plan"]
    given = given or {}
    throttle = f"%{plan['max_parallel']}" if plan.get("max_parallel") else ""
    room = room if room is not None else room_for(exp_dir, st, sched, names)
    free, why = room.free, room.why
    submitted: list[str] = []
    sent: set[str] = set()
    # Each array's runs by bisection, not every name per array: 100,000 runs in 100 arrays
    # (MaxArraySize 1001) would be 10 million look-ups.
    indexed = sorted((st["runs"][name]["index"], name) for name in names)
    keys = [index for index, _ in indexed]
    try:
        previous = None
        for array in plan["arrays"]:
            lo, hi = array["offset"], array["offset"] + array["count"]
            sets: dict[tuple[tuple[str, ...], str], list[tuple[int, str]]] = {}
            for _, name in indexed[bisect.bisect_left(keys, lo):bisect.bisect_left(keys, hi)]:
                if all(st["runs"][other]["job_id"] for other in st["runs"][name].get("after") or []):
                    key = (tuple(resource_options(given.get(name))), stage_waits(st, name))
                    sets.setdefault(key, []).append((st["runs"][name]["index"], name))
            for (resources, waits), chosen in sorted(sets.items()):
                by_task = {index - lo: (index, name) for index, name in chosen}
                for tasks in arrayspec.split(by_task, free, arrayspec.MAX_SPEC - len(throttle)):
                    after = [previous] if reason == "launch" and array.get("after_previous") and previous else \
                        running_arrays(st) if reason != "launch" and throttle else []
                    try:
                        job_id = _submit_array(exp_dir, st, sched, array, [by_task[t] for t in tasks],
                                               arrayspec.compress(tasks) + throttle, reason, resources,
                                               ",".join(filter(None, [f"afterany:{':'.join(after)}" if after else "",
                                                                      waits])), given)
                    except SchedulerFull as err:
                        free, why = 0, str(err)
                        break
                    submitted.append(job_id)
                    previous = job_id
                    sent.update(by_task[t][1] for t in tasks)
                    free = None if free is None else free - len(tasks)
    except BaseException:
        if submitted:
            try:
                sched.cancel(submitted)
            except AutoexpError:
                pass
        raise
    unhold(st, sent)
    left = [name for name in names if name not in sent]
    if left and hold:
        new = _hold(st, left, reason, why or "an earlier stage is not submitted yet")
        if new:
            model.log(st, "SUBMIT_HELD", f"{len(new)} runs" if len(new) > 5 else ", ".join(new),
                      Reason=why or None, Held=len(st.get("held") or {}),
                      Result="submitted by the sidecar as earlier tasks leave the queue")
    return submitted


def room_for(exp_dir: Path, st: State, sched: Scheduler, names: list[str], reserve: int = 0) -> Room:
    """The room the site's limits leave now for ``names`` (Scheduler.room over the scripts that
    run them), less ``reserve`` places (a launch asks before its sidecar job goes out: one for it)."""
    indices = sorted(st["runs"][name]["index"] for name in names)
    scripts = [Path(exp_dir) / a["script"] for a in st["plan"]["arrays"]  # those that hold a run of names
               if bisect.bisect_left(indices, a["offset"]) < bisect.bisect_left(indices, a["offset"] + a["count"])]
    room = sched.room(scripts, st["plan"].get("max_queued")) if names else Room(None)
    return room if room.free is None else Room(max(0, room.free - reserve), room.why)


def _submit_array(exp_dir: Path, st: State, sched: Scheduler, array: PlannedArray, chosen: list[tuple[int, str]],
                  spec: str, reason: str, resources: tuple[str, ...], dependency: str,
                  given: dict[str, dict[str, Any]]) -> str:
    """One sbatch of ``chosen`` (run index, name) as tasks ``spec`` of a planned array, written as
    an intent first (after the launch) and recorded once accepted."""
    tracked = reason != "launch"  # a launch is all or nothing: its state is written only if it all went out
    lo = array["offset"]
    attempts = {index: len(st["runs"][name]["attempts"]) + 1 for index, name in chosen}
    env = {}
    if any(a != 1 for a in attempts.values()):
        common = max(set(attempts.values()), key=list(attempts.values()).count)
        env["AUTOEXP_ATTEMPTS"] = " ".join([f"*:{common}"] + [f"{i}:{a}" for i, a in attempts.items() if a != common])
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
                                         options=[*options, *resources], tag=intent["tag"] if tracked else None))
    except SchedulerTimeout as err:
        intent["unknown"] = str(err)
        raise
    except BaseException:
        intents.remove(intent)
        raise
    intents.remove(intent)
    _record_array(exp_dir, st, job_id, intent)
    return job_id


def _hold(st: State, names: list[str], reason: str, why: str) -> list[str]:
    """Runs owed a submission (for ``reason``) that the site's limits (``why``) leave no room for
    now; the sidecar submits them as tasks leave the queue. Returns those newly held."""
    held = st.setdefault("held", {})
    new = [name for name in names if name not in held]
    held.update((name, held.get(name, reason)) for name in names)
    if new or not st.get("limits"):  # as it was when runs were held: a poll that holds no more changes nothing
        st["limits"] = why
    return new


def unhold(st: State, names: Iterable[str]) -> None:
    """Runs submitted or cancelled: no longer owed a submission."""
    held = st.get("held") or {}
    for name in names:
        held.pop(name, None)
    if not held:
        st.pop("held", None)
        st.pop("limits", None)


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
    logs = model.array_logs(st.get("plan"), intent["script"])
    for index, name, number in intent["runs"]:
        task = index - offset
        run = st["runs"][name]
        log = model.task_log(exp_dir, name, job_id, task, run, logs)
        record = model.new_attempt(number, f"{job_id}_{task}", when, log, given=given.get(name))
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
    unhold(st, names)
    when = clock.now()
    for name in names:
        run = st["runs"][name]
        previous = run["state"]
        model.mark_cancelled(run, reason, when)
        model.log(st, "CANCEL", name, when, Previous=previous, Reason=reason)
    return ids
