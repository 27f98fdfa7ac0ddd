"""Which template failures are the user's (exit 2, "bad input") and which are autoexp's own bugs."""

from __future__ import annotations

import pytest

from autoexp import render
from autoexp.errors import InputError

WHERE = ("config.yaml", "command")


@pytest.mark.parametrize("source, context", [
    ("{{ 1 // x }}", {"x": 0}),  # the expression fails on a value
    ("{{ x.split(1) }}", {"x": "a b"}),  # a method called wrongly
    ("{{ x | round('two') }}", {"x": 1.5}),  # a Jinja filter given a bad argument
    ("{{ x[3] }}", {"x": [1]}),  # StrictUndefined: an undefined item
])
def test_a_failing_template_expression_is_bad_input(source, context):
    with pytest.raises(InputError) as info:
        render.render(source, context, "line", WHERE)
    assert info.value.exit_status == 2 and str(info.value).startswith("config.yaml: command: ")


class Broken:
    """A context value whose own code fails, as a bug in autoexp's context would."""

    def __str__(self) -> str:
        raise TypeError("a bug, not the template's")


def test_a_failure_outside_the_template_is_not_called_bad_input():
    with pytest.raises(TypeError, match="a bug"):
        render.render("echo {{ x }}", {"x": Broken()}, "line", WHERE)
