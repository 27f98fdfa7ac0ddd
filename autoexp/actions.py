"""Submitting and cancelling runs: the few things that change what the scheduler holds.

Launch, retry (from the CLI or a sidecar rule), cancel, resume and the sidecar's hand-over all go
through here, always with the state lock held by the caller, so that what is recorded in
state.json is exactly what the scheduler accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from . import model
from .errors import AutoexpError
from .model import PlannedArray, State
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


def submit_runs(exp_dir: Path, st: State, sched: Scheduler, names: list[str], reason: str,
                options: Sequence[str] = (), found: str | None = None) -> list[str]:
    """Submit ``names`` as one array per planned array script; record them; return the job ids.

    Each run's attempt number is one more than its attempts so far. On a refused submission the
    arrays this call already submitted are cancelled and the error is raised: the caller's state
    is then not written, so nothing is recorded as submitted. ``options`` are added to each sbatch;
    ``found`` is the job id of this very submission, made before by someone killed before recording
    it (found again by its job name): it is recorded, not submitted again.
    """
    exp_dir = Path(exp_dir)
    plan = st["plan"]
    throttle = f"%{plan['max_parallel']}" if plan.get("max_parallel") else ""
    submitted: list[str] = []
    try:
        previous = None
        for array in plan["arrays"]:
            lo, hi = array["offset"], array["offset"] + array["count"]
            chosen = sorted((st["runs"][n]["index"], n) for n in names if lo <= st["runs"][n]["index"] < hi)
            if not chosen:
                continue
            attempts = {index: len(st["runs"][name]["attempts"]) + 1 for index, name in chosen}
            env = {}
            if any(a != 1 for a in attempts.values()):
                common = max(set(attempts.values()), key=list(attempts.values()).count)
                env["AUTOEXP_ATTEMPTS"] = " ".join(
                    [f"*:{common}"] + [f"{i}:{a}" for i, a in attempts.items() if a != common])
            before: list[str] = [f"--dependency=afterany:{previous}"] if reason == "launch" and \
                array.get("after_previous") and previous else []
            for waits, group in dependency_groups(st, chosen, lo).items():
                spec = compress(index - lo for index, _ in group) + throttle
                job_id = found or sched.submit(Submission(
                    exp_dir / array["script"], array=spec, env=env,
                    options=[*before, *options, *([f"--dependency={waits}"] if waits else [])]))
                submitted.append(job_id)
                previous = job_id
                _record_array(exp_dir, st, job_id, array, group, attempts, spec, reason)
    except BaseException:
        if submitted:
            try:
                sched.cancel(submitted)
            except AutoexpError:
                pass
        raise
    return submitted


def dependency_groups(st: State, chosen: list[tuple[int, str]], offset: int) -> dict[str, list[tuple[int, str]]]:
    """Runs grouped by the ``--dependency`` they need (one submission each; "" for none).

    A stage unit waits for the units in its ``after`` that have not completed: the same point's
    earlier stage with Slurm's ``aftercorr`` on its array (task i of eval after task i of train:
    both have the point's index as task id), the prepare step with ``afterok`` on its task.
    """
    groups: dict[str, list[tuple[int, str]]] = {}
    for index, name in chosen:
        words = []
        run = st["runs"][name]
        for other in run.get("after") or []:
            job = st["runs"][other]["job_id"]
            if job and st["runs"][other]["state"] != "COMPLETED":
                same_point = st["runs"][other].get("point") == run.get("point")
                words.append(f"aftercorr:{job.partition('_')[0]}" if same_point else f"afterok:{job}")
        groups.setdefault(",".join(words), []).append((index, name))
    return groups


def _record_array(exp_dir: Path, st: State, job_id: str, array: PlannedArray, chosen: list[tuple[int, str]],
                  attempts: dict[int, int], spec: str, reason: str) -> None:
    when = model.now()
    st["arrays"].append(model.new_array(job_id, spec.split("%")[0], max(attempts.values()), array["script"],
                                        array["offset"], when, reason))
    for index, name in chosen:
        task = index - array["offset"]
        run = st["runs"][name]
        attempt = model.new_attempt(attempts[index], f"{job_id}_{task}", when,
                                    model.task_log(exp_dir, name, job_id, task, run))
        if run.get("after"):
            attempt["after_jobs"] = {other: st["runs"][other]["job_id"] for other in run["after"]}
        run.pop("skipped", None)
        model.add_attempt(run, attempt)
    kind = "RETRY" if max(attempts[index] for index, _ in chosen) > 1 else "SUBMIT_ARRAY"
    model.log(st, kind, array["script"], when, Job_ID=job_id, Tasks=spec,
              Runs=len(chosen) if len(chosen) > 5 else ", ".join(n for _, n in chosen),
              Attempt=max(attempts.values()), Reason=None if reason == "launch" else reason)


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


def cancel_runs(st: State, sched: Scheduler, names: list[str], reason: str,
                job_ids: list[str] | None = None) -> list[str]:
    """Cancel the current attempt of ``names``; they are marked CANCELLED and never retried.

    ``job_ids`` replaces the runs' own task ids in the scancel: whole arrays are one call, where
    10,000 task ids would be 10,000.
    """
    ids = job_ids if job_ids is not None else [st["runs"][n]["job_id"] or "" for n in names
                                               if st["runs"][n].get("job_id")]
    sched.cancel(ids)
    when = model.now()
    for name in names:
        run = st["runs"][name]
        previous = run["state"]
        model.mark_cancelled(run, reason, when)
        model.log(st, "CANCEL", name, when, Previous=previous, Reason=reason)
    return ids
