"""Durations as users write them: ``90s``, ``30m``, ``2h``, ``1d``, ``HH:MM:SS``, and Slurm time limits.

Standard library only: the local scheduler's runner and the sidecar read time limits without
loading the config machinery.
"""

from __future__ import annotations

import re
from typing import Any

SLURM_TIME_RE = re.compile(
    r"^(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}"
    r"|UNLIMITED|INFINITE)$"
)
DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: Any) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h``, ``1d`` or ``HH:MM:SS``; ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    text = str(text)
    match = DURATION_RE.match(text)
    if match:
        return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if SLURM_TIME_RE.match(text) and ":" in text:
        days, _, clock = text.rpartition("-")
        parts = [int(p) for p in clock.split(":")]
        while len(parts) < 3:
            parts.insert(0, 0)
        return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    raise ValueError(text)


def slurm_time_seconds(text: Any) -> float | None:
    """Seconds in a Slurm time limit (a bare number is minutes, ``M:S`` is minutes and seconds);
    None for no limit (``UNLIMITED``, empty) or a value Slurm would not read."""
    text = "" if text is None else str(text)
    if not text or text in ("UNLIMITED", "INFINITE"):
        return None
    if text.isdigit():
        return int(text) * 60.0
    if text.count(":") == 1 and "-" not in text:
        minutes, seconds = text.split(":")
        return int(minutes) * 60.0 + int(seconds)
    try:
        return parse_duration(text)
    except ValueError:
        return None

