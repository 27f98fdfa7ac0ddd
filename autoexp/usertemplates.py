"""The templates of an experiment's scripts: the stock one or the user's file that replaces it,
compiled and checked before anything renders (a misspelt block or name fails the plan, not a job),
and rendered with every problem reported as an InputError naming the file and key."""

from __future__ import annotations

import difflib
from collections.abc import Collection
from pathlib import Path

import jinja2
import jinja2.meta
import jinja2.nodes

from . import render
from .config import Config
from .errors import InputError


def load(env: jinja2.Environment, config: Config, key: str, default: str) -> tuple[jinja2.Template, tuple, set]:
    """The stock template ``default``, or the user's file named by config key ``key`` (a relative
    path is taken from the directory of the file that set it, the config or a site)."""
    user = config.get(key)
    if not user:
        assert env.loader is not None  # plan.environment() sets the stock templates' loader
        source = env.loader.get_source(env, default)[0]
        return checked(env, source, ("", f"templates/{default}"))
    origin = Path(config.where(key)[0])
    path = Path(user).expanduser()
    if not path.is_absolute():
        path = (origin.parent if origin.is_file() else Path.cwd()) / path
    try:
        source = path.read_text()
    except OSError as err:
        raise InputError(f"cannot read template {str(path)!r}: {err.strerror}", *config.where(key)) from None
    return checked(env, source, (str(path), key))


def checked(env: jinja2.Environment, source: str, where: tuple) -> tuple[jinja2.Template, tuple, set]:
    """Compile a template, refusing a block the stock template it extends does not have (a misspelt
    override would otherwise be ignored); also return the names it uses, which :func:`render_template`
    checks against the context, so a misspelt name fails even in a branch this plan does not take."""
    try:
        tree = env.parse(source)
        parent = next(tree.find_all(jinja2.nodes.Extends), None)
        if parent is not None and isinstance(parent.template, jinja2.nodes.Const):
            blocks = env.get_template(parent.template.value).blocks
            for block in (n for n in tree.body if isinstance(n, jinja2.nodes.Block)):
                if block.name not in blocks:
                    guess = difflib.get_close_matches(block.name, list(blocks), n=1)
                    hint = f"did you mean '{guess[0]}'?" if guess else f"its blocks: {', '.join(blocks)}"
                    raise InputError(f"block '{block.name}' is not in {parent.template.value} ({hint})", *where)
        template = env.from_string(tree)
    except jinja2.TemplateSyntaxError as err:
        raise InputError(f"template syntax error line {err.lineno}: {err.message}", *where) from None
    except jinja2.TemplateNotFound as err:
        raise InputError(f"extends unknown template {err.name!r} (stock templates: "
                         f"{', '.join(env.list_templates('j2'))})", *where) from None
    return template, where, jinja2.meta.find_undeclared_variables(tree) - set(env.globals)


def render_template(template: jinja2.Template, context: dict, where: tuple,
                    names: Collection[str] = frozenset()) -> str:
    unknown = sorted(set(names) - set(context))
    if unknown:
        raise InputError(render.undefined_message(f"'{unknown[0]}' is undefined", context), *where)
    try:
        return template.render(context)
    except jinja2.UndefinedError as err:
        raise InputError(render.undefined_message(str(err.message), context), *where) from None
    except jinja2.TemplateError as err:
        raise InputError(f"template error: {err}", *where) from None
