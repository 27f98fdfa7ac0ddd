"""The building blocks of the config schema (autoexp/schema.py): a check is a callable
``(value, path) -> normalized value`` that raises :class:`Invalid` with the dotted path of the
offending key, which autoexp/config.py turns into an InputError naming the file and key."""

from __future__ import annotations

import difflib
import math
import re
import shlex
from collections.abc import Callable
from typing import Any

from .durations import parse_duration


class Invalid(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path, self.message = path, message


Check = Callable[[Any, str], Any]


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def string(pattern: re.Pattern | None = None, hint: str = "") -> Check:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise Invalid(path, f"expected a string, got {type_name(value)}")
        value = str(value)
        if pattern is not None and not pattern.match(value):
            raise Invalid(path, f"{value!r} is not valid ({hint})")
        return value
    return check


def integer(minimum: int = 0) -> Check:
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(path, f"expected an integer, got {type_name(value)} {value!r}")
        if value < minimum:
            raise Invalid(path, f"must be at least {minimum}, got {value}")
        return value
    return check


def number(minimum: float = 0.0, at_least: float | None = None) -> Check:
    """A finite number greater than ``minimum`` (or, with ``at_least``, no smaller than that)."""
    def check(value, path):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(path, f"expected a number, got {type_name(value)} {value!r}")
        if not math.isfinite(value):
            raise Invalid(path, f"must be a finite number, got {value}")
        if at_least is not None and value < at_least:
            raise Invalid(path, f"must be at least {at_least:g}, got {value:g}")
        if value <= minimum:
            raise Invalid(path, f"must be greater than {minimum:g}, got {value}")
        return value
    return check


def duration(value, path):
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise Invalid(path, f"{value!r} is not a duration (use 90s, 30m, 2h, 1d or HH:MM:SS)") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise Invalid(path, "must be longer than zero, and finite")
    return value


def regex(value, path):
    text = string()(value, path)
    try:
        re.compile(text)
    except re.error as err:
        raise Invalid(path, f"invalid regular expression {text!r}: {err}") from None
    return text


def list_of(item: Check, allow_scalar: bool = False) -> Check:
    def check(value, path):
        if allow_scalar and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise Invalid(path, f"expected a list, got {type_name(value)}")
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return check


def mapping(fields: dict[str, Check], required: tuple[str, ...] = (), values: Check | None = None,
            keys: Check | None = None) -> Check:
    """A dict with known ``fields`` (typos get a suggestion) or free keys checked by ``values``."""
    def check(value, path):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise Invalid(path, f"expected a mapping, got {type_name(value)}")
        out = {}
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if key in fields:
                out[key] = fields[key](item, sub)
            elif values is not None:
                if keys is not None:
                    key = keys(key, sub)
                out[key] = values(item, sub)
            else:
                guess = difflib.get_close_matches(str(key), list(fields), n=1)
                hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known: {', '.join(fields)})"
                raise Invalid(sub, f"unknown key{hint}")
        for key in required:
            if key not in out:
                raise Invalid(f"{path}.{key}" if path else key, "required key is missing")
        return out
    return check


def any_value(value, path):
    return value


def scalar(value, path):
    if isinstance(value, (dict, list)):
        raise Invalid(path, f"expected a scalar, got {type_name(value)}")
    return value


def shell_words(value, path):
    """A command prefix as words: a list, or a string split the way a shell would."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as err:
            raise Invalid(path, f"cannot split {value!r} into words: {err}") from None
    return list_of(string())(value, path)
