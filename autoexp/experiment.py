"""The Python API: every CLI command is one call here, returning plain data.

    cfg = autoexp.load_config("sweep.yaml", ["max_parallel=2"])
    result = autoexp.launch(cfg)            # plan + submit the array(s) and the sidecar
    autoexp.status(result.exp_dir)          # what `autoexp status --json` prints
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import actions, backends, clock, model, statefile, statusview
from .errors import AutoexpError, InputError
from .jobstates import FAILED, TERMINAL
from .model import State
from .scheduler import Scheduler

if TYPE_CHECKING:  # config (yaml) and plan (jinja2) are imported where used: `status` stays fast
    from .config import Config
    from .plan import Plan


@dataclass
class LaunchResult:
    exp_dir: Path
    scheduler: str
    arrays: list[str] = field(default_factory=list)
    sidecar: str | None = None
    dry_run: bool = False
    text: str = ""
    jobs: dict = field(default_factory=dict)  # run name -> submitit Job, for a function sweep


def load_config(path: str | os.PathLike, overrides=(), site: str | None = None) -> Config:
    """Read and validate a config file with ``KEY=VALUE`` overrides (raises InputError)."""
    from .config import load

    return load(Path(path), list(overrides), default_site=site)


def _scheduler_for(config: Config, scheduler: str | Scheduler | None) -> Scheduler:
    if isinstance(scheduler, Scheduler):  # a function sweep submits through submitit
        return scheduler
    return backends.get(scheduler or backends.default_name(), config.exp_dir)


def plan_experiment(config: Config, scheduler: str | Scheduler | None = None, write: bool = True) -> Plan:
    """Render the experiment; with ``write`` create its directory. Submits nothing."""
    from .plan import build

    sched = _scheduler_for(config, scheduler)
    with statefile.collector_paused():
        built = build(config, sched.name, sched.max_array_size())
        if write:
            built.write()
    return built


def launch(config: Config, dry_run: bool = False, scheduler: str | Scheduler | None = None) -> LaunchResult:
    """Plan, then submit every array and the sidecar; all or nothing."""
    with statefile.collector_paused():  # 10,000 runs' records, no cycles among them
        return _launch(config, dry_run, scheduler)


def _launch(config: Config, dry_run: bool, scheduler: str | Scheduler | None) -> LaunchResult:
    from .plan import build

    sched = _scheduler_for(config, scheduler)
    built = build(config, sched.name, sched.max_array_size())
    result = LaunchResult(config.exp_dir, sched.name, dry_run=dry_run, text=built.submissions_text())
    if dry_run:
        return result
    check_python(config)
    exp_dir = built.write()
    written = (stamp, built.state) if (stamp := statefile.stamp(exp_dir)) and built.state is not None else None
    result.sidecar, result.arrays = submit_planned(exp_dir, sched, config_data=config.data, known=written)
    return result


def submit_planned(exp_dir: Path, sched: Scheduler, names: list[str] | None = None,
                   config_data: dict | None = None,
                   known: tuple[tuple[int, int, int], State] | None = None) -> tuple[str, list[str]]:
    """Submit the sidecar (in mode carried, its watchdog) and the planned runs (``names``, default
    all): the sidecar's id and the arrays'. ``config_data``: the experiment's config, if at hand;
    ``known``: the state as the plan wrote it, and its :func:`statefile.stamp`.

    The sidecar goes first so that it does not queue behind its own array; the lock is held
    across the submissions, so its first poll waits until every id is recorded. The site's limits
    are read before the sidecar goes out (one place left for it): asking takes a moment, in which a
    sidecar of a launch that then fails would start and take the lease."""
    with statefile.locked(exp_dir, known=known) as st:
        runs = list(st["runs"]) if names is None else names
        room = actions.room_for(exp_dir, st, sched, runs, reserve=1)
        from .sidecar.settings import Settings  # the sidecar's package stays off status's import path

        settings = Settings.load(exp_dir, config_data)
        if settings.mode == "carried" and sched.name == "slurm":  # the tasks carry the sidecar's polls
            sidecar = actions.submit_watchdog(exp_dir, st, sched, settings.watchdog)
        else:
            sidecar = actions.submit_sidecar(exp_dir, st, sched)
        try:
            arrays = actions.submit_runs(exp_dir, st, sched, runs, "launch", room=room)
        except BaseException:
            sched.cancel([sidecar])
            raise
    return sidecar, arrays


def check_python(config: Config) -> None:
    """The config's ``python:`` must run here: the sidecar job starts with it, and one that exits
    127 leaves nothing watching. Checked at launch, not in the plan (a plan may be rendered for
    another machine)."""
    python = config.get("python")
    if python and shutil.which(str(python)) is None:
        raise config.error("python", f"{python!r} is not an executable program on this machine "
                                     "(the sidecar and the runs start with it)")


def output_dir(default: str | None = None) -> Path:
    return Path(default or os.environ.get("AUTOEXP_OUTPUT_DIR") or "experiments")


def find(exp: str | os.PathLike | None = None, output: str | None = None) -> Path:
    """An experiment directory from a path, a name under the output directory, or the newest one."""
    base = output_dir(output)
    if exp is None:
        found = [p.parent for p in base.glob(f"*/{statefile.STATE}")]
        if not found:
            raise InputError(f"no experiments under {base.absolute()} (give EXP or --output-dir)")
        return max(found, key=lambda p: (p / statefile.STATE).stat().st_mtime).absolute()
    candidate = Path(exp).expanduser()
    for path in (candidate, base / candidate):
        if (path / statefile.STATE).is_file():
            return path.absolute()
    raise InputError(f"no experiment {str(exp)!r} (looked for {candidate}/state.json and "
                     f"{base / candidate}/state.json)", "EXP")


# --------------------------------------------------------------------------- a running experiment

def status(exp: str | os.PathLike | None = None, output: str | None = None, refresh: bool = False,
           history: bool = True, raw: list[bytes] | None = None) -> dict:
    """What ``autoexp status --json`` prints: the state plus the sidecar's health and the progress.

    Reads state.json only; with ``refresh`` and no live sidecar, first reconciles it once with the
    scheduler (one sidecar poll), so a stopped experiment still shows the truth. ``history=False``
    leaves the history list empty: the table does not show it, and it is a third of the read.
    ``raw`` (a list) gets state.json's bytes, whose runs and history are then not parsed: see
    statusview.json_bytes.
    """
    exp_dir = find(exp, output)
    st = statefile.read_shared(exp_dir, history=history, raw=raw)
    if refresh and statusview.health(st, exp_dir)["sidecar"] not in ("alive", "starting"):
        from . import sidecar

        try:
            sidecar.reconcile(exp_dir, backends.of_experiment(exp_dir, st))
        except PermissionError as err:
            raise AutoexpError(f"{exp_dir}: --refresh must write the state, and cannot: {err.strerror} "
                               "(whoever launched it can refresh it)") from None
        st = statefile.read_shared(exp_dir, history=history, raw=raw)
    return statusview.document(exp_dir, st, raw=raw[-1] if raw else None)


def experiments(output: str | None = None) -> list[dict]:
    """The experiments under the output directory, newest first, with counts (``autoexp list``)."""
    return statusview.experiments(output_dir(output))


def select(exp_dir: Path, st: State, names) -> list[str]:
    """Run names from the user's words (a name or an index); an unknown one is an InputError."""
    by_index = {str(run["index"]): name for name, run in st["runs"].items()}
    chosen = []
    for word in names:
        word = str(word)
        name = word if word in st["runs"] else by_index.get(word)
        # A staged experiment: a run's name (or RUN+STAGE) means each of its stage units.
        units = [] if name is not None else [n for n in st["runs"] if n.startswith(f"{word}+")]
        chosen += [n for n in units if n not in chosen]
        if name is None and units:
            continue
        if name is None:
            import difflib

            guess = difflib.get_close_matches(word, list(st["runs"]), n=1)
            hint = f"; did you mean {guess[0]!r}?" if guess else f"; it has {len(st['runs'])} runs " \
                "(autoexp status lists them)"
            raise InputError(f"no run {word!r} in this experiment{hint}", str(exp_dir), "RUN")
        if name not in chosen:
            chosen.append(name)
    return chosen


def watcher(exp_dir: Path, st: State, sched: Scheduler) -> str:
    """Who watches the experiment: "alive" or "starting" (see status), "queued" (its job has not
    started yet), or "none". The sidecar's own test decides, asking the scheduler, so a sidecar
    that was scancelled counts as gone at once, not three intervals later."""
    from .sidecar import alive
    from .sidecar.carried import watchdog_alive

    if not alive(st, sched, statusview.polling_interval(st, exp_dir)):
        return "queued" if st.get("watchdog") and watchdog_alive(st, sched) else "none"
    health = statusview.health(st, exp_dir)["sidecar"]
    return health if health in ("alive", "starting") else "queued"


def cancel(exp: str | os.PathLike, runs=(), output: str | None = None) -> dict:
    """Cancel chosen runs, or with none the whole experiment (its arrays and its sidecar).

    Cancelled runs are marked CANCELLED with a CANCEL event and are never retried by the sidecar.
    A run that has already finished is an InputError, and then nothing is cancelled.
    """
    exp_dir = find(exp, output)
    with statefile.locked(exp_dir) as st:
        sched = backends.of_experiment(exp_dir, st)
        if runs:
            chosen = select(exp_dir, st, runs)
            _catch_up(exp_dir, st, sched)
            names = [n for n in chosen  # of a run's stages, those still to end
                     if n in runs or st["runs"][n]["state"] not in TERMINAL]
            for name in names:
                if st["runs"][name]["state"] in TERMINAL:
                    raise InputError(f"run {name!r} has already finished ({st['runs'][name]['state']}); "
                                     "nothing cancelled", str(exp_dir), "RUN")
            return {"exp_dir": exp_dir, "runs": names, "jobs": actions.cancel_runs(st, sched, names, "user"),
                    "sidecar": None}
        _catch_up(exp_dir, st, sched)
        names = sorted((n for n, r in st["runs"].items() if r["state"] not in TERMINAL),
                       key=lambda n: st["runs"][n]["index"])
        if not names:
            raise InputError("every run has already finished; nothing cancelled", str(exp_dir), "EXP")
        arrays = sorted({job.split("_")[0] for n in names if (job := st["runs"][n]["job_id"])})
        jobs = actions.cancel_runs(st, sched, names, "user", job_ids=arrays)
        sidecar = st["sidecar"].get("job_id") or (st.get("watchdog") or {}).get("job_id")
        if sidecar:
            # The lease is ended in the same write: a poll the sidecar has in flight then finds it
            # lost and writes nothing, and its SIGTERM hands over to nobody. (In carried mode a
            # task holds it, cancelled with its array; the watchdog job is cancelled too.)
            sched.cancel([j for j in (st["sidecar"].get("job_id"), (st.get("watchdog") or {}).get("job_id"))
                          if j and str(j).isdigit()])
            st["sidecar"]["stopped"] = clock.now()
            model.log(st, "SIDECAR_STOP", f"job {sidecar}", Reason="the experiment was cancelled")
        st["done"] = True
        model.recount(st)
        model.log(st, "ALL_COMPLETE", "Monitoring finished", Reason="cancelled by the user",
                  Summary=model.counts_text(st))
        return {"exp_dir": exp_dir, "runs": names, "jobs": jobs, "sidecar": sidecar}


def _catch_up(exp_dir: Path, st: State, sched: Scheduler) -> None:
    """Bring the runs up to what the scheduler says before cancelling (the sidecar may be dead,
    or a poll behind): a submission whose answer was lost is found first, and a run that has
    finished is not marked CANCELLED. Cancelling blind is
    refused: the state would disagree with the scheduler for good."""
    from .sidecar import Poll, PollResult, Settings, query_targets

    if actions.settle_intents(exp_dir, st, sched):
        raise AutoexpError(f"{exp_dir}: whether an earlier submission was accepted is not known yet "
                           f"(the scheduler does not answer); nothing cancelled, try again")
    ids, window = query_targets(st, full=True)  # whatever ended, however late accounting learnt it
    if not ids:
        return
    try:
        records = sched.query(ids, window)
    except AutoexpError as err:
        raise AutoexpError(f"{exp_dir}: cannot ask {sched.name} which runs have finished ({err}); "
                           "nothing cancelled, try again") from None
    Poll(exp_dir, st, sched, Settings.load(exp_dir), PollResult()).apply(records, time.time(), window)


def retry(exp: str | os.PathLike, runs=(), failed: bool = False, output: str | None = None) -> dict:
    """Resubmit finished runs (chosen, or every failed one) as one new array attempt.

    ``failed`` means FAILED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, BOOT_FAIL, DEADLINE or PREEMPTED:
    not CANCELLED, which the user chose. A sidecar is submitted too if none is alive to watch them.
    """
    if bool(runs) == bool(failed):
        raise InputError("give the runs to retry, or --failed (not both)", "RUN")
    exp_dir = find(exp, output)
    with statefile.locked(exp_dir) as st:
        sched = backends.of_experiment(exp_dir, st)
        unknown = actions.settle_intents(exp_dir, st, sched)
        if failed:
            names = sorted((n for n, r in st["runs"].items() if r["state"] in FAILED),
                           key=lambda n: st["runs"][n]["index"])
        else:
            names = select(exp_dir, st, runs)
            for name in names:
                if st["runs"][name]["state"] not in TERMINAL:
                    raise InputError(f"run {name!r} is {st['runs'][name]['state']}: only a finished run "
                                     "can be retried (cancel it first)", str(exp_dir), "RUN")
        result: dict[str, Any] = {"exp_dir": exp_dir, "runs": names, "arrays": [], "sidecar": None}
        if unknown & set(names):
            raise AutoexpError(f"{exp_dir}: whether an earlier submission of {', '.join(sorted(unknown & set(names)))} "
                               "was accepted is not known yet (the scheduler does not answer); try again later")
        if not names:
            return result
        watched = watcher(exp_dir, st, sched) != "none"
        result["arrays"] = actions.submit_runs(exp_dir, st, sched, names, "retry")
        for name in names:
            st["runs"][name].pop("cancelled", None)  # retried by name: the user changed their mind
        st["done"] = False
        if not watched:
            try:
                result["sidecar"] = _replace_sidecar(exp_dir, st, sched, "retry")
            except BaseException:
                sched.cancel(result["arrays"])
                raise
        return result


def _replace_sidecar(exp_dir: Path, st: State, sched: Scheduler, reason: str) -> str:
    """Submit a new sidecar; a stale old one that is somehow still running is cancelled first."""
    if st.get("watchdog"):  # carried mode: a watchdog now; the lease's holder is a task, not a job to cancel
        sched.cancel([st["watchdog"]["job_id"]])
        return actions.submit_watchdog(exp_dir, st, sched, st["watchdog"]["interval"], False, reason)
    old = st["sidecar"].get("job_id")
    if old:
        sched.cancel([old])
    return actions.submit_sidecar(exp_dir, st, sched, reason=reason)


def resume(exp: str | os.PathLike, output: str | None = None) -> dict:
    """Submit a new sidecar if none is alive; do nothing if one is, or if every run has ended."""
    exp_dir = find(exp, output)
    with statefile.locked(exp_dir) as st:
        if not st.get("arrays") and not st.get("held"):  # held: launched, but no room for any run yet
            raise InputError("this experiment was planned but never launched: run `autoexp launch` "
                             "with its config", str(exp_dir), "EXP")
        sched = backends.of_experiment(exp_dir, st)
        result = {"exp_dir": exp_dir, "submitted": False,
                  "sidecar": st["sidecar"].get("job_id") or (st.get("watchdog") or {}).get("job_id"),
                  "watcher": "finished" if st.get("done") else watcher(exp_dir, st, sched)}
        if result["watcher"] != "none":
            return result
        result["sidecar"] = _replace_sidecar(exp_dir, st, sched, "resume")
        result["submitted"] = True
        return result
