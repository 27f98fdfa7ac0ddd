"""Log matching: ``monitor.events`` and ``monitor.metrics`` over what a run's log gained since the
last poll.

A :class:`Cursor` (a plain dict kept in state.json) remembers how far a log was read, which file
that was (device and inode) and the bytes just before that point. Each scan reads only the bytes
added since, processes complete lines only (a line split across two polls is matched once, whole),
and starts over from the top when the file was truncated, replaced or rewritten in place. Because
the cursor is saved in the same atomic state write as the events it produced, a sidecar killed at
any instant neither misses a line nor counts one twice.

Every value of every metric is passed, in file order, to the scan's ``sink`` with its ordinal
(the cursor's ``metric_n`` counts each metric's matches), which is how the metric history (autoexp/history.py)
gets each point exactly once even when lines are read again after a crash.

Patterns are Python regular expressions matched against one line at a time. For speed each pattern
is first searched in the whole new text (one C-level scan per pattern); only the lines it hits are
then matched on their own, so a match that would straddle two lines never counts.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHUNK = 8 << 20  # bytes read at a time
MAX_READ = 256 << 20  # bytes read from one log per poll: a log growing without end cannot starve the rest
MAX_LINE = 1 << 20  # a "line" this long without a newline is matched anyway (progress bars)
TAIL = 32  # bytes before the offset remembered to notice a file rewritten in place


@dataclass(frozen=True)
class Rule:
    name: str
    regex: re.Pattern
    action: str = "log"  # events: log, cancel or retry; metrics: unused


@dataclass
class Rules:
    """The compiled ``monitor.events`` and ``monitor.metrics`` of an experiment."""

    events: list[Rule] = field(default_factory=list)
    metrics: list[Rule] = field(default_factory=list)

    @classmethod
    def from_monitor(cls, monitor: dict) -> Rules:
        events = [Rule(e["name"], re.compile(e["pattern"]), e.get("action") or "log")
                  for e in monitor.get("events") or []]
        metrics = [Rule(name, re.compile(pattern)) for name, pattern in (monitor.get("metrics") or {}).items()]
        return cls(events, metrics)

    def __bool__(self) -> bool:
        return bool(self.events or self.metrics)


@dataclass
class Match:
    rule: Rule
    groups: dict
    position: tuple[int, int]  # (chunk number, offset in it): file order across chunks


@dataclass
class Scan:
    """What one scan found: events in file order, the last value of each metric, growth."""

    events: list[Match] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    grew: bool = False
    bytes_read: int = 0
    restarted: str = ""  # why the file was read again from the top ("truncated", ...), if it was
    more: bool = False  # MAX_READ was reached: the rest is read by the next scan
    not_regular: str = ""  # what the log is instead of a regular file (a FIFO, a device): not read


# sink(metric, ordinal, step, value): the ordinal-th match of the metric in this log; step is the
# pattern's ``step`` group (a number) when it has one, else None.
Sink = Callable[[str, int, Any, Any], None]


def scan(cursor: dict, rules: Rules, final: bool = False, sink: Sink | None = None) -> Scan:
    """Match the bytes ``cursor["path"]`` gained since the cursor; advance the cursor (in place).

    With ``final`` (the run is over) a last line without a newline is matched too. Each metric
    value goes to ``sink`` with its ordinal (see the module docstring).
    """
    result = Scan()
    try:
        # Non-blocking: opening a FIFO must not wait for a writer; only a regular file is read.
        fd = os.open(cursor["path"], os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return result
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            result.not_regular = file_kind(info.st_mode)
            return result
        result.restarted = _check_identity(fh, info, cursor)
        if result.restarted:
            cursor.update(offset=0, tail="", size=None)
        result.grew = info.st_size != cursor.get("size")
        cursor.update(dev=info.st_dev, ino=info.st_ino, size=info.st_size)
        fh.seek(cursor["offset"])
        pending = b""
        number = 0
        budget = MAX_READ
        while True:
            data = fh.read(min(CHUNK, budget))
            budget -= len(data)
            result.more = budget <= 0
            eof = not data or result.more
            buffer = pending + data
            cut = _line_end(buffer, eof and final and not result.more)
            if cut:
                text = buffer[:cut].decode("utf-8", "replace")
                _match(text, rules, number, result, cursor.setdefault("metric_n", {}), sink)
                tail = (cursor_tail(cursor) + buffer[max(0, cut - TAIL):cut])[-TAIL:]
                cursor.update(offset=cursor["offset"] + cut, tail=tail.hex())
                result.bytes_read += cut
                number += 1
            pending = buffer[cut:]
            if eof:
                break
        cursor["size"] = max(cursor["size"], cursor["offset"])
    return result


def tail(path: str | Path, limit: int) -> bytes:
    """The last ``limit`` bytes of a log that is a regular file (b"" otherwise), without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return b""
        fh.seek(max(0, info.st_size - limit))
        return fh.read(limit)


def file_kind(mode: int) -> str:
    return "a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode) else \
        "a directory" if stat.S_ISDIR(mode) else "not a regular file"


def cursor_tail(cursor: dict) -> bytes:
    return bytes.fromhex(cursor.get("tail") or "")


def _check_identity(fh, info: os.stat_result, cursor: dict) -> str:
    """Why the file must be read from the top again, or "" when the cursor still applies."""
    if cursor.get("ino") is not None and (info.st_dev, info.st_ino) != (cursor["dev"], cursor["ino"]):
        return "replaced"
    offset = cursor.get("offset") or 0
    if info.st_size < offset:
        return "truncated"
    tail = cursor_tail(cursor)
    if offset and tail:
        fh.seek(offset - len(tail))
        if fh.read(len(tail)) != tail:
            return "rewritten"
    return ""


def _line_end(buffer: bytes, take_all: bool) -> int:
    """How many bytes of ``buffer`` are complete lines (everything with ``take_all``)."""
    if take_all:
        return len(buffer)
    end = max(buffer.rfind(b"\n"), buffer.rfind(b"\r")) + 1
    if end == 0 and len(buffer) >= MAX_LINE:
        return len(buffer)
    return end


def _lines_hit(regex: re.Pattern, text: str, start: int = 0, end: int | None = None) -> Iterator[tuple[int, re.Match]]:
    """(line start, match on that line alone) for every line of ``text[start:end]`` the pattern hits."""
    end = len(text) if end is None else end
    pos = start
    while pos < end:
        hit = regex.search(text, pos, end)
        if hit is None:
            return
        line_start = _line_start(text, hit.start())
        line_end = _next_break(text, hit.start(), end)
        alone = regex.search(text[line_start:line_end])
        if alone is not None:
            yield line_start, alone
        pos = line_end + 1


def _line_start(text: str, pos: int) -> int:
    """Where the line holding ``pos`` starts (after a newline or a carriage return)."""
    newline = text.rfind("\n", 0, pos)
    return max(newline, text.rfind("\r", newline + 1, pos)) + 1  # \r searched within the line only


def _next_break(text: str, pos: int, end: int) -> int:
    """Where the line holding ``pos`` ends (its newline or carriage return), at most ``end``."""
    newline = text.find("\n", pos, end)
    newline = end if newline < 0 else newline
    cr = text.find("\r", pos, newline)
    return newline if cr < 0 else cr


def _match(text: str, rules: Rules, number: int, result: Scan, counts: dict, sink: Sink | None) -> None:
    for rule in rules.events:
        for line_start, hit in _lines_hit(rule.regex, text):
            groups = {k: v for k, v in hit.groupdict().items() if v is not None}
            result.events.append(Match(rule, groups, (number, line_start)))
    result.events.sort(key=lambda m: m.position)
    for rule in rules.metrics:
        has_step = "step" in rule.regex.groupindex
        value = None
        for _, hit in _lines_hit(rule.regex, text):
            value = metric_value(hit)
            if value is None:
                continue
            counts[rule.name] = ordinal = counts.get(rule.name, 0) + 1
            if sink is not None:
                step = _number(hit.group("step")) if has_step else None
                sink(rule.name, ordinal, step if isinstance(step, (int, float)) else None, value)
        if value is not None:
            result.metrics[rule.name] = value


def metric_value(hit: re.Match):
    """Group ``value`` (else the first group, else the whole match), as a number when it is one."""
    if "value" in hit.re.groupindex:
        text = hit.group("value")
    elif hit.re.groups:
        text = hit.group(1)
    else:
        text = hit.group(0)
    return _number(text)


def _number(text: str | None):
    """``text`` as an int or a finite float when it is one, else the text itself (or None)."""
    if text is None:
        return None
    text = text.strip()
    try:
        number = int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text  # nan/inf stay text: state.json is strict JSON


def log_size(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None
