"""A run's log, for `autoexp logs` and the Python API: where each attempt wrote it, and a copy that
follows it as it grows until the sidecar records that attempt's end."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import statefile
from .errors import AutoexpError, InputError
from .experiment import find, select
from .jobstates import TERMINAL
from .model import Attempt, State


def one_run(exp_dir: Path, st: State, word: str) -> str:
    """One run (or stage unit) from the user's word; a run with several stages must name one."""
    names = select(exp_dir, st, [word])
    if len(names) > 1:
        raise InputError(f"{word!r} has {len(names)} stage runs: name one ({', '.join(names[:6])}"
                         f"{', ...' if len(names) > 6 else ''})", str(exp_dir), "RUN")
    return names[0]


def _attempt(exp_dir: Path, st: State, name: str, number: int | None) -> Attempt:
    attempts = st["runs"][name]["attempts"]
    if not attempts:
        raise InputError(f"run {name!r} was never submitted, so it has no log", str(exp_dir), "RUN")
    if number is None:
        return attempts[-1]
    for attempt in attempts:
        if attempt["attempt"] == number:
            return attempt
    raise InputError(f"run {name!r} has no attempt {number} (it has 1 to {len(attempts)})", str(exp_dir),
                     "--attempt")


def log_path(exp: str | os.PathLike, run: str, attempt: int | None = None, output: str | None = None,
             stage: str | None = None) -> Path:
    """Where a run's log is for its latest attempt (or attempt number ``attempt``); in a staged
    experiment, ``stage`` names which (``"eval+task=arc"`` with an axis)."""
    exp_dir = find(exp, output)
    st = statefile.read_shared(exp_dir)
    name = one_run(exp_dir, st, f"{run}+{stage}" if stage else run)
    return Path(_attempt(exp_dir, st, name, attempt)["log"])


def logs(exp: str | os.PathLike, run: str, attempt: int | None = None, follow: bool = False, out=None,
         output: str | None = None, poll: float = 1.0, stage: str | None = None) -> Path:
    """Copy a run's log to ``out`` (a binary stream, default stdout); return the log's path.

    With ``follow``, keep copying as the log grows until that attempt has ended in the state
    (as the sidecar records it), then copy what is left and return.
    """
    exp_dir = find(exp, output)
    st = statefile.read_shared(exp_dir)
    name = one_run(exp_dir, st, f"{run}+{stage}" if stage else run)
    chosen = _attempt(exp_dir, st, name, attempt)
    path, number = Path(chosen["log"]), chosen["attempt"]
    out = out or sys.stdout.buffer
    offset = _copy_log(path, 0, out)
    if offset is None and not follow:
        raise AutoexpError(f"{path}: no log yet (run {name} is {chosen['state']}); "
                           f"`autoexp logs --follow` waits for it")
    while follow:
        st = statefile.read_shared(exp_dir)
        ended = next(a for a in st["runs"][name]["attempts"] if a["attempt"] == number)["state"] \
            in TERMINAL
        if not ended:
            time.sleep(poll)
        offset = _copy_log(path, offset or 0, out)
        if ended:
            break
    return path


def _copy_log(path: Path, offset: int, out) -> int | None:
    """Write ``path`` from byte ``offset`` on to ``out``; the new offset, or None if there is no file."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < offset:
                offset = 0  # replaced by a new file: start again
            fh.seek(offset)
            while chunk := fh.read(1 << 20):
                out.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        return None
    out.flush()
    return offset
