"""state.json: the one source of truth of an experiment, and its two views.

Writers (the sidecar, launch, cancel, retry) change it only inside :func:`locked`, which holds
``state.json.lock``, reads the current state, and on exit replaces ``state.json`` atomically
(write to a temporary file, fsync, rename) and regenerates ``experiment_summary.md`` and
``events.log`` from it. Readers never see a half-written file, whatever is killed when.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import filelock

from .errors import AutoexpError, InputError

SCHEMA = 1
STATE = "state.json"
LOCK = "state.json.lock"
SUMMARY = "experiment_summary.md"
EVENTS = "events.log"
LOCK_TIMEOUT = 60.0


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def new(name: str, runs: list, exp_dir: Path, scheduler: str) -> dict:
    """The state of a planned experiment: every run PLANNED, nothing submitted."""
    state = {
        "schema": SCHEMA, "experiment": name, "exp_dir": str(exp_dir), "scheduler": scheduler,
        "created": now(), "updated": now(), "done": False,
        "sidecar": {}, "arrays": [], "counts": {},
        "runs": {run.name: {"index": run.index, "params": run.params, "state": "PLANNED",
                            "job_id": None, "submitted": None, "started": None, "completed": None,
                            "elapsed_s": None, "exit_code": None, "nodes": None,
                            "attempts": [], "events": [], "metrics": {}}
                 for run in runs},
        "history": [],
    }
    recount(state)
    log(state, "PLAN", name, Runs=len(runs), Directory=str(exp_dir))
    return state


def recount(state: dict) -> None:
    counts: dict[str, int] = {}
    for run in state["runs"].values():
        counts[run["state"]] = counts.get(run["state"], 0) + 1
    state["counts"] = dict(sorted(counts.items()))


def log(state: dict, kind: str, subject: str, when: str | None = None, **details) -> None:
    """Add an entry to the experiment's history; events.log is rendered from these entries."""
    entry = {"time": when or now(), "kind": kind, "subject": subject}
    if details:
        entry["details"] = {k.replace("_", " "): v for k, v in details.items() if v is not None}
    state["history"].append(entry)


def run_by_index(state: dict) -> dict[int, str]:
    return {run["index"]: name for name, run in state["runs"].items()}


# --------------------------------------------------------------------------- files

def path(exp_dir: Path) -> Path:
    return Path(exp_dir) / STATE


def read(exp_dir: Path) -> dict:
    """The state as last written; an unknown directory or a newer schema is an InputError."""
    file = path(exp_dir)
    try:
        with open(file, "rb") as fh:
            state = json.loads(fh.read())
    except FileNotFoundError:
        raise InputError("no state.json: not an autoexp experiment directory", str(exp_dir)) from None
    except (OSError, ValueError) as err:
        raise AutoexpError(f"{file}: cannot read state: {err}") from None
    schema = state.get("schema")
    if schema != SCHEMA:
        raise InputError(f"schema {schema} is not supported by this autoexp (it reads schema "
                         f"{SCHEMA}); upgrade autoexp", str(file), "schema")
    return state


def atomic_write(file: Path, text: str) -> None:
    """Replace ``file`` with ``text`` so that readers see either the old or the new content."""
    file = Path(file)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write(exp_dir: Path, state: dict) -> None:
    """Write state.json and regenerate its views; call with the lock held."""
    from . import report

    exp_dir = Path(exp_dir)
    state["updated"] = now()
    recount(state)
    events, rebuild = report.events_update(exp_dir / EVENTS, state)
    atomic_write(exp_dir / STATE, json.dumps(state, indent=1) + "\n")
    atomic_write(exp_dir / SUMMARY, report.summary(state))
    report.events_apply(exp_dir / EVENTS, events, rebuild)


def lock(exp_dir: Path, timeout: float = LOCK_TIMEOUT) -> filelock.FileLock:
    return filelock.FileLock(str(Path(exp_dir) / LOCK), timeout=timeout)


@contextlib.contextmanager
def locked(exp_dir: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[dict]:
    """Read-modify-write under the lock; the state is written only if the block succeeds."""
    try:
        with lock(exp_dir, timeout):
            state = read(exp_dir)
            yield state
            write(exp_dir, state)
    except filelock.Timeout:
        raise AutoexpError(f"{exp_dir / LOCK}: still held after {timeout:.0f}s by another "
                           "autoexp process") from None


def read_shared(exp_dir: Path, timeout: float = 2.0) -> dict:
    """Read for display: wait briefly for a writer to finish, then read the (atomic) file anyway."""
    try:
        with lock(exp_dir, timeout):
            return read(exp_dir)
    except (filelock.Timeout, PermissionError):  # a busy writer, or someone else's experiment
        return read(exp_dir)
