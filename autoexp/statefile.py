"""state.json on disk: the one source of truth of an experiment, and its two views.

Writers (the sidecar, launch, cancel, retry) change it only inside :func:`locked`, which holds
``state.json.lock``, reads the current state, and on exit replaces ``state.json`` atomically
(write to a temporary file, fsync, rename) and regenerates ``experiment_summary.md`` and
``events.log`` from it (a scaffolded directory's own files: autoexp/seedviews.py). Readers
never see a half-written file, whatever is killed when. The records themselves are in
:mod:`autoexp.model`; the views are rendered by :mod:`autoexp.report`.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import report, seedviews
from .errors import AutoexpError, InputError
from .clock import now
from .model import SCHEMA, State, recount

if TYPE_CHECKING:
    import filelock

STATE = "state.json"
LOCK = "state.json.lock"
SUMMARY = "experiment_summary.md"
EVENTS = "events.log"
HEARTBEAT = "sidecar.heartbeat"  # the lease's heartbeat between state writes (see beat)
LOCK_TIMEOUT = 60.0
ENTRIES = {"runs": (b"{", b"}"), "history": (b"[", b"]")}  # written one entry per line (dumps)


# --------------------------------------------------------------------------- files

def path(exp_dir: Path) -> Path:
    return Path(exp_dir) / STATE


def loads(data: bytes) -> State:
    """``json.loads`` with the cycle collector paused: a state holds no cycles, and collecting
    while 10,000 runs are being built costs a third of the parse."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(data)
    finally:
        if enabled:
            gc.enable()


def without_history(data: bytes) -> bytes:
    """state.json's text with the history list emptied, for readers that do not show it: it is a
    third of a big state."""
    return without_entries(data, ("history",))


def span_of(data: bytes, key: str) -> tuple[int, int] | None:
    """Where the runs' or the history's JSON text is in state.json's ``data`` (see :func:`dumps`:
    its entries are one per line, and it ends at the first line that starts with `` }`` or `` ]``),
    or None when the file is not laid out so (an empty one is written ``{}`` or ``[]``)."""
    open_, close = ENTRIES[key]
    start = data.find(b'\n "' + key.encode() + b'": ' + open_ + b"\n")
    end = data.find(b"\n " + close, start) if start >= 0 else -1
    return (start + len(key) + 6, end + 3) if end >= 0 else None


def without_entries(data: bytes, keys: tuple[str, ...] = ("runs", "history")) -> bytes:
    """state.json's text with the runs and the history emptied where :func:`span_of` finds them."""
    parts, at = [], 0
    for start, end in sorted(filter(None, (span_of(data, key) for key in keys))):
        parts += [data[at:start], b"{}" if data[start:start + 1] == b"{" else b"[]"]
        at = end
    return b"".join([*parts, data[at:]])


def read(exp_dir: Path, history: bool = True, raw: list[bytes] | None = None) -> State:
    """The state as last written; an unknown directory or a newer schema is an InputError.

    With ``raw``, the file's bytes are appended to it and the runs' and the history's entries are
    left unparsed (empty), where :func:`span_of` finds them: for a reader that copies their text
    (``status --json``: statusview.json_bytes)."""
    file = path(exp_dir)
    try:
        with open(file, "rb") as fh:
            data = fh.read()
        if raw is not None:
            raw.append(data)
            state = loads(without_entries(data))
        else:
            state = loads(data if history else without_history(data))
    except FileNotFoundError:
        raise InputError("no state.json: not an autoexp experiment directory", str(exp_dir)) from None
    except (OSError, ValueError) as err:
        raise AutoexpError(f"{file}: cannot read state: {err}") from None
    _overlay_heartbeat(Path(exp_dir), state)
    schema = state.get("schema")
    if schema != SCHEMA:
        raise InputError(f"schema {schema} is not supported by this autoexp (it reads schema "
                         f"{SCHEMA}); upgrade autoexp", str(file), "schema")
    return state


def beat(exp_dir: Path, job_id: str, when: str) -> None:
    """Renew the lease's heartbeat without rewriting state.json: a poll that changed nothing
    writes only this small file, which :func:`read` lays over ``state["sidecar"]["heartbeat"]``
    when it names the lease's holder and is newer."""
    atomic_write(Path(exp_dir) / HEARTBEAT, json.dumps({"job_id": job_id, "heartbeat": when}) + "\n")


def _overlay_heartbeat(exp_dir: Path, state: State) -> None:
    lease = state.get("sidecar") or {}
    if not lease.get("job_id"):
        return
    try:
        with open(exp_dir / HEARTBEAT, "rb") as fh:
            beat = json.loads(fh.read())
    except (OSError, ValueError):
        return
    if beat.get("job_id") == lease["job_id"] and (beat.get("heartbeat") or "") > (lease.get("heartbeat") or ""):
        lease["heartbeat"] = beat["heartbeat"]


def stamp(exp_dir: Path) -> tuple[int, int, int] | None:
    """state.json's identity (inode, size, mtime): any write replaces it."""
    try:
        info = os.stat(path(exp_dir))
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


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


def dumps(state: State) -> str:
    """state.json's text: one line per top-level key, per run and per history entry, so grep and
    diff stay useful, each encoded by json's C encoder (``indent`` is pure Python: 5x slower)."""
    def lines(mapping: dict | list) -> str:
        items = mapping.items() if isinstance(mapping, dict) else enumerate(mapping)
        open_, close = ("{", "}") if isinstance(mapping, dict) else ("[", "]")
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" if isinstance(mapping, dict)
                          else f"  {json.dumps(v)}" for k, v in items)
        return f"{open_}\n{body}\n {close}" if body else f"{open_}{close}"

    document: dict[str, Any] = dict(state)
    parts = [f" {json.dumps(key)}: {lines(value) if key in ('runs', 'history') else json.dumps(value)}"
             for key, value in document.items()]
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write(exp_dir: Path, state: State) -> None:
    """Write state.json and regenerate its views; call with the lock held."""
    exp_dir = Path(exp_dir)
    state["updated"] = now()
    recount(state)
    own = state.get("scaffolded")  # a scaffolded directory: its own summary and log (seedviews)
    log = exp_dir / (seedviews.LOG if own else EVENTS)
    events, rebuild = report.events_update(log, state)
    atomic_write(exp_dir / STATE, dumps(state))
    atomic_write(exp_dir / (seedviews.OWN_SUMMARY if own else SUMMARY), report.summary(state))
    if own:
        with contextlib.suppress(FileNotFoundError):
            atomic_write(exp_dir / own, seedviews.with_status((exp_dir / own).read_text(), state))
    append_events(log, events, rebuild)


def append_events(file: Path, text: str, rebuild: bool) -> None:
    """Bring events.log up to date: append what it lacks, or replace it whole."""
    if rebuild:
        atomic_write(file, text)
    elif text:
        with open(file, "a") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())


def lock(exp_dir: Path, timeout: float = LOCK_TIMEOUT) -> filelock.FileLock:
    import filelock  # only writers import it: `autoexp status` starts faster without

    return filelock.FileLock(str(Path(exp_dir) / LOCK), timeout=timeout)


@contextlib.contextmanager
def locked(exp_dir: Path, timeout: float = LOCK_TIMEOUT, written: list | None = None) -> Iterator[State]:
    """Read-modify-write under the lock; the state is written only if the block succeeds (and
    its :func:`stamp` then appended to ``written``, still under the lock)."""
    import filelock

    try:
        with lock(exp_dir, timeout):
            state = read(exp_dir)
            yield state
            write(exp_dir, state)
            if written is not None:
                written.append(stamp(exp_dir))
    except filelock.Timeout:
        raise AutoexpError(f"{exp_dir / LOCK}: still held after {timeout:.0f}s by another "
                           "autoexp process") from None


def read_shared(exp_dir: Path, timeout: float = 2.0, history: bool = True, raw: list[bytes] | None = None) -> State:
    """Read for display: wait briefly for a writer to finish, then read the (atomic) file anyway.

    Readers share the lock (``flock(LOCK_SH)`` on the file writers lock exclusively with filelock),
    so any number of them read at once, and a reader never creates the lock file or needs to
    write: someone else's experiment reads as well as one's own.
    """
    try:
        fd = os.open(Path(exp_dir) / LOCK, os.O_RDONLY)
    except OSError:  # never locked yet, or not readable: the file itself is always whole
        return read(exp_dir, history, raw)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # a writer holds it
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        return read(exp_dir, history, raw)
    finally:
        os.close(fd)  # releases the shared lock
