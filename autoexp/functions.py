"""Python callables as runs: submitit pickles one call per run and submits the sweep as one array.

    def train(lr, rank): ...
    launched = autoexp.launch_function(train, "sweep.yaml", ["max_parallel=2"])
    autoexp.status(launched.exp_dir)     # the same state.json, sidecar and summary as a command sweep
    autoexp.results(launched.exp_dir)    # {run name: what train returned, or a RunFailed}

The experiment is planned as a command sweep whose command is this module's task side,
``python -m autoexp.functions``. submitit's ``SlurmExecutor`` pickles ``fn(**params)`` for every run
into ``<exp>/.submitit`` and submits them in one ``batch()``: one array, whose script carries the
``#SBATCH`` lines of ``array.sbatch`` and hands over to it (``exec``). So a launched task, a
requeued one and one the sidecar retries all run the same script. In the task, submitit's own job
code runs the call and writes its result pickle; a ``submitit.helpers.Checkpointable`` is
checkpointed and requeued (``scontrol requeue``, same job id) when the signal before the time
limit comes: the config's ``requeue`` block with ``by: command``, the array script passing it on.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import shlex
import shutil
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from . import clock, experiment, model, statefile
from .durations import slurm_time_seconds
from .errors import AutoexpError, InputError, SchedulerError
from .jobstates import TERMINAL
from .limits import Room
from .run import CurrentRun, current_run
from .arrayspec import expand_range
from .scheduler import Submission
from .slurm import SlurmScheduler

FOLDER = ".submitit"  # submitit's folder in the experiment: the pickled calls and their results
REQUEUE = {"before": 60, "max": 10}  # requeue defaults; 10 is also the array template's max
SHORT = 200  # characters of a result or an error kept in state.json

log = logging.getLogger(__name__)


class RunFailed(AutoexpError):
    """What :func:`results` gives for a run that raised, or that ended without a result."""

    def __init__(self, run: str, message: str, traceback_text: str = ""):
        super().__init__(f"run {run}: {message}")
        self.run, self.traceback = run, traceback_text


def launch_function(fn: Callable[..., Any], config, overrides=(), *, site: str | None = None,
                    dry_run: bool = False) -> experiment.LaunchResult:
    """Launch ``fn(**params)`` for every point of the config's sweep, as one array through submitit.

    ``config`` is a config file (``overrides`` and ``site`` as for :func:`autoexp.load_config`) or
    a loaded Config; its ``command``, if any, is replaced. The result's ``jobs`` maps run names to
    submitit Job objects (``jobs[name].result()`` waits for one).
    """
    if not shutil.which("sbatch"):
        raise AutoexpError("launch_function submits through submitit's SlurmExecutor, and sbatch is not on "
                           "PATH: run it on a Slurm login node")
    cfg = function_config(config, overrides, site)
    submitter = Submitter(cfg.exp_dir, fn)
    result = experiment.launch(cfg, dry_run=dry_run, scheduler=submitter)
    result.jobs = submitter.jobs
    if dry_run:
        result.text += "\n  (submitit submits the array: its job script has these #SBATCH lines and runs array.sbatch)"
    return result


def function_config(config, overrides=(), site: str | None = None):
    """The config of a function sweep: this module's task side as the command, and the signal before
    the time limit passed on to submitit, which checkpoints and requeues (``requeue.by: command``)."""
    from submitit import JobEnvironment

    from .config import Config, load

    if isinstance(config, Config):
        if overrides:
            raise InputError("overrides are applied when a config file is loaded; give the file, "
                             "not a loaded Config", config.source)
        loaded = Config(copy.deepcopy(config.data), config.source, config.origins, config.site)
    else:  # the file needs no `command`: a placeholder satisfies the schema until it is replaced
        loaded = load(config, [*overrides, "command=autoexp.functions"], default_site=site)
    data = loaded.data
    python = data.get("python") or sys.executable
    data["command"] = f"{shlex.quote(python)} -u -m autoexp.functions"
    requeue = {"signal": JobEnvironment.USR_SIG, **REQUEUE, **(data.get("requeue") or {}), "by": "command"}
    data["requeue"] = requeue
    data["env"] = {**data["env"], "SUBMITIT_PREEMPT_SIGNAL": requeue["signal"]}
    limit = slurm_time_seconds(data["slurm"].get("time"))
    if limit is None:
        raise loaded.error("slurm.time", "a function sweep needs a time limit: submitit counts its "
                           "requeues against it")
    if requeue["before"] >= limit:
        raise loaded.error("requeue.before", f"{requeue['before']} s is not shorter than the time limit "
                           f"({data['slurm']['time']}): every allocation would be signalled at once")
    return loaded


class Submitter(SlurmScheduler):
    """The Slurm scheduler, except that the array of runs is submitted by submitit's executor with
    one pickled call per run; the sidecar, cancels and retries go through plain Slurm."""

    def __init__(self, exp_dir: Path, fn: Callable[..., Any]):
        super().__init__(exp_dir)
        self.fn = fn
        self.jobs: dict[str, Any] = {}

    def submit(self, sub: Submission) -> str:
        if sub.array is None:  # the sidecar
            return super().submit(sub)
        runs = json.loads((self.exp_dir / "runs.json").read_text())
        if sub.env or sub.options or expand_range(sub.array) != list(range(len(runs))):
            raise AutoexpError(f"{self.exp_dir}: a function sweep is launched whole, as one array "
                               f"(asked for tasks {sub.array})")
        executor = self.executor(sub.script)
        try:
            with executor.batch():
                jobs = [executor.submit(self.fn, **run["params"]) for run in runs]
        except submission_errors() as err:
            raise SchedulerError(f"sbatch refused {sub.script.name} (through submitit): "
                                 f"{str(err).strip().splitlines()[-1]}") from None
        array_job = jobs[0].job_id.split("_")[0]
        for run, job in zip(runs, jobs):
            task_id = f"{array_job}_{run['index']}"
            if job.job_id != task_id:  # a single call is submitted as a plain job; the task is <id>_0
                task = slurm_job(executor.folder, task_id)
                os.replace(job.paths.submitted_pickle, task.paths.submitted_pickle)
                job = task
            self.jobs[run["name"]] = job
        return array_job

    def room(self, scripts: Sequence[Path], max_queued: int | None) -> Room:
        """A function sweep is launched whole (submitit's batch): a site's limit refuses it."""
        return Room(None)

    def executor(self, script: Path):
        """submitit's executor with the ``#SBATCH`` lines of ``script``, which its job script runs
        (``exec script``, followed by submitit's own arguments, which the script ignores)."""
        import submitit

        from .config import Config
        from .slurm import read_directives

        config = Config.from_experiment(self.exp_dir)
        directives = read_directives(script)
        executor = submitit.SlurmExecutor(folder=self.exp_dir / FOLDER, python=f"exec {shlex.quote(str(script))}",
                                          max_num_timeout=config["requeue"]["max"])
        # submitit writes --open-mode=append itself, as array.sbatch does; the rest override its own
        # defaults key by key (its keys are Python names: job_name, not job-name).
        additional = {key.replace("-", "_"): value if value != "" else True
                      for key, value in directives.items() if key != "open-mode"}
        executor.update_parameters(time=math.ceil((slurm_time_seconds(directives["time"]) or 0) / 60), use_srun=False,
                                   stderr_to_stdout=True, wckey=None, additional_parameters=additional)
        return executor


# --------------------------------------------------------------------------- submitit's files and internals

def slurm_job(folder: Path, job_id: str) -> Any:
    """submitit's handle of one task (its ``paths`` name the pickles), without asking Slurm anything."""
    from submitit import SlurmJob

    return SlurmJob(folder=folder, job_id=job_id)


def load_pickle(file: Path) -> Any:
    """A pickle submitit wrote (cloudpickle writes plain pickles; reading needs nothing more)."""
    with open(file, "rb") as fh:
        return pickle.load(fh)


# The only names autoexp takes from outside submitit's public API (submitit.SlurmExecutor, SlurmJob,
# JobEnvironment, submitit.helpers): the errors a refused submission raises and the job code a task
# runs (what submitit's own job script calls). Kept here, so that a submitit upgrade is checked in one place.

def submission_errors() -> tuple[type[Exception], ...]:
    from submitit.core.utils import FailedSubmissionError, UncompletedJobError

    return FailedSubmissionError, UncompletedJobError


def run_pickled_call(folder: Path) -> None:
    """Load this task's pickled call, run it, and pickle its result or its traceback."""
    from submitit.core.submission import process_job

    process_job(folder)


# --------------------------------------------------------------------------- reading outcomes

def results(exp=None, output: str | None = None) -> dict[str, Any]:
    """``{run name: return value}`` of a function sweep; a :class:`RunFailed` for a run that raised
    or ended without a result. Runs still going are left out."""
    exp_dir = experiment.find(exp, output)
    st = statefile.read_shared(exp_dir)
    found: dict[str, Any] = {}
    for name, run in sorted(st["runs"].items(), key=lambda item: item[1]["index"]):
        if not run["attempts"]:
            continue
        file = slurm_job(exp_dir / FOLDER, run["attempts"][-1]["job_id"]).paths.result_pickle
        if file.exists():
            outcome, value = load_pickle(file)
            found[name] = value if outcome == "success" else RunFailed(name, _last_line(value), value)
        elif run["state"] in TERMINAL:
            log = run["attempts"][-1].get("log")
            found[name] = RunFailed(name, f"ended {run['state']} without a result (log: {log})")
    return found


def _last_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHORT else text[:SHORT - 3] + "..."


# --------------------------------------------------------------------------- the task side

def main() -> int:
    """Run this task's pickled call with submitit's job code; record its outcome in state.json."""
    handler = logging.StreamHandler(sys.stdout)  # the run's log; submitit's own logging is left alone
    handler.setFormatter(logging.Formatter("autoexp: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    run = current_run()
    os.environ["SUBMITIT_EXECUTOR"] = "slurm"  # submitit's job script exports it; a retry has none
    folder = run.exp_dir / FOLDER
    paths = slurm_job(folder, run.job_id or "").paths
    if not paths.submitted_pickle.exists():
        adopt(run, paths.submitted_pickle)
    try:
        run_pickled_call(folder)
    except Exception as err:  # the call raised (submitit has pickled the traceback); not a requeue's exit
        finished()
        traceback.print_exc()
        record(run, error=f"{type(err).__name__}: {err}"[:SHORT])
        return 1
    finished()
    _, value = load_pickle(paths.result_pickle)
    record(run, result=_short(value))
    return 0


def finished() -> None:
    """The call is over: a time-limit signal from now on must not make submitit checkpoint and
    requeue a finished run."""
    from submitit import JobEnvironment

    signal.signal(getattr(signal, f"SIG{JobEnvironment.USR_SIG}"), signal.SIG_IGN)


def adopt(run: CurrentRun, target: Path) -> None:
    """A retry is a new array job: give it the newest pickle of the run's earlier attempts (the call
    as launched, or its latest checkpoint) with a fresh requeue budget."""
    from submitit.helpers import DelayedSubmission

    from .config import Config

    attempts = statefile.read(run.exp_dir)["runs"][run.name]["attempts"]
    for job_id in dict.fromkeys(a["job_id"] for a in reversed(attempts) if a["job_id"] != run.job_id):
        source = slurm_job(target.parent, job_id).paths.submitted_pickle
        if source.exists():
            config = Config.from_experiment(run.exp_dir)
            delayed = DelayedSubmission.load(source)
            minutes = math.ceil((slurm_time_seconds(config["slurm"]["time"]) or 0) / 60)
            delayed.set_timeout(minutes, config["requeue"]["max"])
            partial = target.with_name(f".{target.name}.partial")  # the task never sees half a pickle
            delayed.dump(partial)
            os.replace(partial, target)
            log.info("attempt %s starts from the call pickled by job %s", run.attempt, job_id)
            return


def record(run: CurrentRun, result: str | None = None, error: str | None = None) -> None:
    """The outcome in state.json: the run's ``result`` or ``error``, and an event (``returned`` or
    ``raised``), the latest one that ``autoexp status`` and the summary show; RESULT in events.log."""
    log.info("%s: %s", "result" if error is None else "error", result if error is None else error)
    try:
        with statefile.locked(run.exp_dir) as st:
            entry = st["runs"][run.name]
            if error is None:
                entry.pop("error", None)
                entry["result"] = result
                entry["events"].append(model.new_event("returned", clock.now(), {"value": result}))
            else:
                entry.pop("result", None)
                entry["error"] = error
                entry["events"].append(model.new_event("raised", clock.now(), {"error": error}))
            model.log(st, "RESULT", run.name, Attempt=run.attempt, Value=result, Error=error)
    except AutoexpError as err:
        log.error("could not record the outcome in state.json: %s", err)


if __name__ == "__main__":
    sys.exit(main())
