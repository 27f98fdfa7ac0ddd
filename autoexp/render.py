"""Jinja rendering with the three quoting rules autoexp needs.

* ``line``: shell text written by the user (``command``, ``setup``); every ``{{ value }}`` is
  shell-quoted, so a parameter like ``x"; rm -rf ~; echo "`` reaches the program as one argument.
* ``word``: a value that becomes one shell word (``env`` values): the result is double-quoted, so
  ``${VAR}`` written in the config expands in the task's shell (``HF_HOME: ${SCRATCH}/hf``), while
  every inserted value stays verbatim (its ``$``, backquotes, quotes and backslashes escaped).
* ``plain``: text that is not shell (``run_name``).

``attempt`` is only known when a task starts, so it renders as a reference to ``$AUTOEXP_ATTEMPT``.
All environments use StrictUndefined: a misspelt variable is an error at plan time. Jinja is
imported when the first template is rendered: a sidecar, which seldom renders, does without it.
"""

from __future__ import annotations

import difflib
import re
import shlex
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    import jinja2


class ShellVar:
    """A value known only inside the running task; renders as ``"${NAME}"``."""

    def __init__(self, name: str):
        self.name = name

    def __str__(self) -> str:
        return f"${{{self.name}}}"


# In ``word`` mode an inserted value is fenced by these two characters until the whole word is
# assembled: the text between fences is escaped as data, the text outside as the user's shell text.
_OPEN, _CLOSE = "\x01", "\x02"
_FENCED = re.compile(f"{_OPEN}(.*?){_CLOSE}", re.DOTALL)


def _finalize_line(value: Any) -> str:
    if isinstance(value, ShellVar):
        return f'"{value}"'
    return shlex.quote(as_text(value))


def _finalize_word(value: Any) -> str:
    if isinstance(value, ShellVar):
        return str(value)  # outside the fences: the task's shell expands it
    text = as_text(value).replace(_OPEN, "").replace(_CLOSE, "")
    return f"{_OPEN}{text}{_CLOSE}"


def double_quoted(rendered: str) -> str:
    """One double-quoted shell word: ``$`` expands in the config's own text, never in values."""
    parts = []
    for i, piece in enumerate(_FENCED.split(rendered)):
        escaped = piece.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")  # re.sub's cost, 100,000 times
        parts.append(escaped.replace("$", "\\$") if i % 2 else escaped)
    return '"' + "".join(parts) + '"'


def _finalize_plain(value: Any) -> str:
    if isinstance(value, ShellVar):
        import jinja2
        raise jinja2.UndefinedError(f"'{value.name}' is only known when the task runs")
    return as_text(value)


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


FINALIZE = {"line": _finalize_line, "word": _finalize_word, "plain": _finalize_plain}


@cache
def environment(mode: str) -> jinja2.Environment:
    """The Jinja environment of ``mode`` (line, word, plain)."""
    import jinja2
    return jinja2.Environment(undefined=jinja2.StrictUndefined, finalize=FINALIZE[mode],
                              keep_trailing_newline=True, autoescape=False)


class Simple:
    """A template that is only text and ``{{ name }}`` (the usual ``command: train --lr {{ lr }}``),
    rendered as Jinja would (its finalize on each value) without Jinja's per-call cost, which
    dominates a plan of 100,000 runs; a name missing from the context goes to Jinja (its globals,
    its StrictUndefined error)."""

    def __init__(self, template: jinja2.Template, parts: list[tuple[bool, str]], finalize):
        self.template, self.parts, self.finalize = template, parts, finalize

    def render(self, context: dict) -> str:
        try:
            return "".join(self.finalize(context[text]) if is_name else text for is_name, text in self.parts)
        except KeyError:
            return self.template.render(context)


def _simple_parts(env: jinja2.Environment, source: str) -> list[tuple[bool, str]] | None:
    """``source`` as (is a name, text) pieces, or None if it uses more of Jinja than names."""
    import jinja2.nodes
    parts: list[tuple[bool, str]] = []
    for node in env.parse(source).body:
        if not isinstance(node, jinja2.nodes.Output):
            return None
        for child in node.nodes:
            if isinstance(child, jinja2.nodes.TemplateData):
                parts.append((False, child.data))
            elif isinstance(child, jinja2.nodes.Name) and child.ctx == "load":
                parts.append((True, child.name))
            else:
                return None
    return parts


@lru_cache(maxsize=512)
def _compile(mode: str, source: str) -> jinja2.Template | Simple:
    env = environment(mode)
    template = env.from_string(source)
    parts = _simple_parts(env, source)
    return template if parts is None else Simple(template, parts, env.finalize)


def render(source: str, context: dict, mode: str, where: tuple[str, str]) -> str:
    """Render ``source``; template errors become an InputError at ``where`` = (file, key)."""
    import jinja2
    try:
        out = _compile(mode, source).render(context)
    except jinja2.UndefinedError as err:
        raise InputError(undefined_message(str(err.message), context), *where) from None
    except jinja2.TemplateSyntaxError as err:
        raise InputError(f"template syntax error: {err.message}", *where) from None
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as err:
        if not raised_in_template(err):
            raise  # a bug in autoexp (its context, its finalize), not bad input: shown with its traceback
        raise InputError(f"template error: {err}", *where) from None
    return double_quoted(out) if mode == "word" else out


def raised_in_template(err: BaseException) -> bool:
    """Whether ``err`` came from the template itself: its expression (``<template>``) or a Jinja
    filter or test it called on a value. Anything else that failed is autoexp's code."""
    import jinja2
    if isinstance(err, jinja2.TemplateError):
        return True
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    where = tb.tb_frame.f_code.co_filename
    return where == "<template>" or Path(where).resolve().is_relative_to(Path(jinja2.__file__).resolve().parent)


def undefined_message(message: str, context: dict) -> str:
    match = re.search(r"'([^']+)' is undefined", message)
    if not match:
        return message
    name = match.group(1)
    guess = difflib.get_close_matches(name, [k for k in context if not k.startswith("_")], n=1)
    hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known: {', '.join(sorted(context))})"
    return f"undefined variable '{name}'{hint}"

