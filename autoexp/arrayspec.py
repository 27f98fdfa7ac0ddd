"""``--array`` values: task ids compressed into ranges (``3,5-9,17``) and split into as few specs
as the scheduler takes.

sbatch refuses an ``--array`` value longer than about 4,090 characters ("Pathname of a file,
directory or other parameter too long", measured on Slurm 22.05), and a site's submission limits
leave room for only so many tasks (autoexp/limits.py): 3,000 scattered retries go out as the
fewest specs within both.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_SPEC = 4000  # characters of one --array value, throttle included (sbatch refuses ~4,093)


def ranges(tasks: Iterable[int]) -> list[tuple[int, int]]:
    """[0, 1, 2, 3, 5, 7, 8] -> [(0, 3), (5, 5), (7, 8)]."""
    found: list[tuple[int, int]] = []
    for task in sorted(set(tasks)):
        if found and task == found[-1][1] + 1:
            found[-1] = (found[-1][0], task)
        else:
            found.append((task, task))
    return found


def part(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def compress(tasks: Iterable[int]) -> str:
    """[0, 1, 2, 3, 5, 7, 8] -> "0-3,5,7-8" (an --array value)."""
    return ",".join(part(lo, hi) for lo, hi in ranges(tasks))


def split(tasks: Iterable[int], room: int | None = None, max_len: int = MAX_SPEC) -> list[list[int]]:
    """The tasks, in order, as the fewest groups whose compressed spec fits in ``max_len``
    characters, and at most ``room`` tasks in all (None: no limit); tasks past the room are left
    out (a range is cut where the room ends)."""
    groups: list[list[int]] = []
    left = room
    length = max_len + 1  # no group open yet
    for lo, hi in ranges(tasks):
        while lo <= hi and (left is None or left > 0):
            take = hi - lo + 1 if left is None else min(hi - lo + 1, left)
            text = part(lo, lo + take - 1)
            if length + 1 + len(text) > max_len:
                groups.append([])
                length = -1
            groups[-1].extend(range(lo, lo + take))
            length += 1 + len(text)
            lo += take
            if left is not None:
                left -= take
    return groups


def spans(spec: str) -> tuple[range, ...]:
    """An --array value, ``4-9%2``, ``1,3,5-7`` or ``0-1818:2`` (a step: how squeue and sacct show
    every other task waiting), as ranges of task ids (the ``%N`` throttle is dropped)."""
    found = []
    for word in filter(None, spec.split("%")[0].split(",")):
        span, _, step = word.partition(":")
        lo, _, hi = span.partition("-")
        found.append(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return tuple(found)


def holds(found: tuple[range, ...], task: int) -> bool:
    """Whether ``task`` is in one of these :func:`spans`."""
    return any(task in span for span in found)


def expand_range(spec: str) -> list[int]:
    """The task ids of an --array value (:func:`spans`)."""
    return [task for span in spans(spec) for task in span]
