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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from . import report, seedviews
from .errors import AutoexpError, InputError
from .clock import now
from .model import SCHEMA, State, compact, recount

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


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cycle collector: a state holds no cycles, and while one of 10,000 runs is built
    or worked on, the collector walks all of it again and again (a third of a parse, a fifth of
    a sidecar's poll). What the block leaves behind is collected after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def loads(data: bytes | str) -> State:
    """Parse with the collector paused. (json's parser, not orjson's: twice as fast, orjson's
    state of 10,000 runs takes a quarter more memory, and a sidecar seldom parses: it keeps
    the state it wrote.)"""
    with collector_paused():
        return json.loads(data)


def loads_kept(fh: BinaryIO) -> State | None:
    """state.json laid out as :func:`dumps` writes it, parsed a line at a time and each run
    compacted as it is read (:func:`autoexp.model.compact`): a sidecar keeping 100,000 runs never
    holds the file's text and a plain copy of every run beside them. None for another layout (a
    line that is not a whole entry), or a file cut short: then the file is parsed whole."""
    if fh.readline() != b"{\n":
        return None
    document: dict[str, Any] = {}
    memo: dict[str, str] = {}
    lines = iter(fh)
    with collector_paused(), contextlib.suppress(ValueError):
        for line in lines:
            if line == b"}\n":
                return document  # type: ignore[return-value]
            body = line.rstrip(b",\n")
            if body == b' "runs": {':
                runs = document["runs"] = {}
                for body in _entries(lines, b" }"):
                    ((name, run),) = json.loads(b"{" + body + b"}").items()
                    runs[name] = compact(run, memo)
            elif body == b' "history": [':
                document["history"] = [json.loads(body) for body in _entries(lines, b" ]")]
            else:
                document.update(json.loads(b"{" + body + b"}"))
    return None


def _entries(lines: Iterator[bytes], close: bytes) -> Iterator[bytes]:
    """The entries of the runs or the history, one per line, up to the line that closes them."""
    for line in lines:
        body = line.rstrip(b",\n")
        if body == close:
            return
        yield body


def encode(value: Any) -> bytes:
    """One JSON value on one line: orjson's (five times json's C encoder), or json's for what
    orjson refuses (an integer beyond 64 bits in a sweep, say). Both write strict JSON."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


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


def read(exp_dir: Path, history: bool = True, raw: list[bytes] | None = None, kept: bool = False) -> State:
    """The state as last written; an unknown directory or a newer schema is an InputError.

    With ``raw``, the file's bytes are appended to it and the runs' and the history's entries are
    left unparsed (empty), where :func:`span_of` finds them: for a reader that copies their text
    (``status --json``: statusview.json_bytes). With ``kept``, for a state the caller keeps (a
    sidecar's), a line at a time, each run compacted (:func:`loads_kept`)."""
    file = path(exp_dir)
    try:
        with open(file, "rb") as fh:
            state = loads_kept(fh) if kept else None
            if state is None:
                fh.seek(0)
                data = fh.read()
        if state is None and raw is not None:
            raw.append(data)
            state = loads(without_entries(data))
        elif state is None:  # the file's bytes let go before parsing: the text and the parsed state are enough at once
            text = (data if history else without_history(data)).decode()
            del data
            state = loads(text)
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


def atomic_write(file: Path, text: str | bytes | Iterable[bytes]) -> None:
    """Replace ``file`` with ``text`` (or its chunks) so that readers see either the old or the
    new content."""
    file = Path(file)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if isinstance(text, (str, bytes)):
                fh.write(text.encode() if isinstance(text, str) else text)
            else:
                fh.writelines(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dumps(state: State, hashes: dict[str, int] | None = None) -> Iterator[bytes]:
    """state.json's text, in chunks: one line per top-level key, per run and per history entry,
    so grep and diff stay useful (and :func:`span_of` finds the runs and the history without
    parsing). Each line is written as it is encoded: 10,000 runs' encodings never all in memory.
    ``hashes``, when given, receives the hash of each run's encoding (the summary reuses rows by it)."""
    document: dict[str, Any] = dict(state)
    yield b"{"
    for k, (key, value) in enumerate(document.items()):
        yield (b"\n " if k == 0 else b",\n ") + encode(key) + b": "
        if key not in ENTRIES or not value:
            yield encode(value)
            continue
        open_, close = ENTRIES[key]
        yield open_
        for n, (name, entry) in enumerate(value.items() if isinstance(value, dict) else enumerate(value)):
            line = encode(entry)
            if hashes is not None and key == "runs":
                hashes[name] = hash(line)
            yield (b"\n  " if n == 0 else b",\n  ") + (encode(name) + b": " + line if key == "runs" else line)
        yield b"\n " + close
    yield b"\n}\n"


def write(exp_dir: Path, state: State) -> None:
    """Write state.json and regenerate its views; call with the lock held."""
    exp_dir = Path(exp_dir)
    state["updated"] = now()
    recount(state)
    own = state.get("scaffolded")  # a scaffolded directory: its own summary and log (seedviews)
    log = exp_dir / (seedviews.LOG if own else EVENTS)
    events, rebuild = report.events_update(log, state)
    hashes: dict[str, int] = {}
    atomic_write(exp_dir / STATE, dumps(state, hashes))
    summary = exp_dir / (seedviews.OWN_SUMMARY if own else SUMMARY)
    atomic_write(summary, report.summary(state, hashes, summary))
    report.ROWS.wrote(summary)
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


def flock(fd: int, mode: int, timeout: float) -> bool:
    """Take ``flock(mode)`` on ``fd``, retrying until ``timeout``; whether it was taken."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:  # another process holds it
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)


class Lock:
    """The writers' exclusive ``flock`` on a lock file, waited for up to ``timeout`` seconds: what
    the filelock package does on Unix, without its import (asyncio and all: 9 MB and 80 ms in
    every writer, and a dependency less)."""

    def __init__(self, file: Path, timeout: float = LOCK_TIMEOUT):
        self.file, self.timeout, self.fd = Path(file), timeout, -1

    def __enter__(self) -> Lock:
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        if not flock(fd, fcntl.LOCK_EX, self.timeout):
            os.close(fd)
            raise AutoexpError(f"{self.file}: still held after {self.timeout:.0f}s by another autoexp process")
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock
        self.fd = -1


def lock(exp_dir: Path, timeout: float = LOCK_TIMEOUT) -> Lock:
    return Lock(Path(exp_dir) / LOCK, timeout)


@contextlib.contextmanager
def locked(exp_dir: Path, timeout: float = LOCK_TIMEOUT, written: list | None = None,
           known: tuple[tuple[int, int, int], State] | None = None, keep: bool = False) -> Iterator[State]:
    """Read-modify-write under the lock; the state is written only if the block succeeds (and
    its :func:`stamp` then appended to ``written``, still under the lock).

    ``known`` is a (stamp, state) this process wrote and kept: if state.json is still that file,
    the block gets that state instead of parsing the file again (a sidecar's poll of 10,000 runs
    spends a fifth of its time reading). With ``keep`` (the caller keeps the state after the block,
    as a sidecar does), a state read from the file is read compacted (:func:`loads_kept`)."""
    with lock(exp_dir, timeout):
        if known is not None and stamp(exp_dir) == known[0]:
            state = known[1]
        else:
            known = None  # a state the file no longer is: let it go before the file is parsed
            state = read(exp_dir, kept=keep)
        yield state
        write(exp_dir, state)
        if written is not None:
            written.append(stamp(exp_dir))


def read_shared(exp_dir: Path, timeout: float = 2.0, history: bool = True, raw: list[bytes] | None = None) -> State:
    """Read for display: wait briefly for a writer to finish, then read the (atomic) file anyway.

    Readers share the lock (``flock(LOCK_SH)`` on the file writers lock exclusively, :class:`Lock`),
    so any number of them read at once, and a reader never creates the lock file or needs to
    write: someone else's experiment reads as well as one's own.
    """
    try:
        fd = os.open(Path(exp_dir) / LOCK, os.O_RDONLY)
    except OSError:  # never locked yet, or not readable: the file itself is always whole
        return read(exp_dir, history, raw)
    try:
        flock(fd, fcntl.LOCK_SH, timeout)  # not taken in time: the file is whole anyway
        return read(exp_dir, history, raw)
    finally:
        os.close(fd)  # releases the shared lock
