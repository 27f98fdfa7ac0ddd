"""Sweep expansion: order, names, and the names autoexp refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoexp import config as configmod, sweep
from autoexp.errors import InputError
from conftest import write_config


def runs_of(tmp_path, **data):
    data.setdefault("name", "s")
    data.setdefault("command", "true")
    cfg = configmod.load(write_config(tmp_path, data))
    return sweep.expand(cfg, Path("/exp"))


def test_grid_is_a_cartesian_product_first_key_slowest(tmp_path):
    runs = runs_of(tmp_path, sweep={"grid": {"rank": [8, 16], "lr": [1e-5, 5e-5]}})
    assert [r.params for r in runs] == [{"rank": 8, "lr": 1e-5}, {"rank": 8, "lr": 5e-5},
                                        {"rank": 16, "lr": 1e-5}, {"rank": 16, "lr": 5e-5}]
    assert [r.name for r in runs] == ["rank8_lr1e-05", "rank8_lr5e-05", "rank16_lr1e-05", "rank16_lr5e-05"]
    assert [r.index for r in runs] == [0, 1, 2, 3]


def test_list_points_are_appended_and_exclude_drops_matches(tmp_path):
    runs = runs_of(tmp_path, sweep={"grid": {"rank": [8, 64], "lr": [1e-5, 5e-5]},
                                    "list": [{"rank": 128, "lr": 1e-4}],
                                    "exclude": [{"rank": 64, "lr": 5e-5}]})
    assert [r.name for r in runs] == ["rank8_lr1e-05", "rank8_lr5e-05", "rank64_lr1e-05", "rank128_lr0.0001"]


def test_exclude_with_one_key_drops_every_point_with_that_value(tmp_path):
    runs = runs_of(tmp_path, sweep={"grid": {"a": [1, 2, 3], "b": ["x", "y"]}, "exclude": [{"a": 2}]})
    assert {r.params["a"] for r in runs} == {1, 3} and len(runs) == 4


def test_default_names_use_only_parameters_that_vary(tmp_path):
    runs = runs_of(tmp_path, sweep={"grid": {"model": ["llama"], "seed": [1, 2]}})
    assert [r.name for r in runs] == ["seed1", "seed2"]


def test_default_names_make_awkward_values_safe(tmp_path):
    runs = runs_of(tmp_path, sweep={"list": [{"tag": "a b/c"}, {"tag": "d$e"}]})
    assert [r.name for r in runs] == ["taga-b-c", "tagd-e"]


def test_run_name_template(tmp_path):
    runs = runs_of(tmp_path, run_name="r{{ run_index }}-{{ rank }}", sweep={"grid": {"rank": [8, 16]}})
    assert [r.name for r in runs] == ["r0-8", "r1-16"]


def test_no_sweep_is_one_run(tmp_path):
    runs = runs_of(tmp_path)
    assert [(r.name, r.params) for r in runs] == [("run", {})]


def test_order_is_deterministic(tmp_path):
    data = {"sweep": {"grid": {"b": [2, 1], "a": ["z", "y"]}, "list": [{"a": "q", "b": 0}]}}
    assert [r.name for r in runs_of(tmp_path, **data)] == [r.name for r in runs_of(tmp_path, **data)]


@pytest.mark.parametrize("name,problem", [("", "is empty"), ("a/b", "contains '/'"), ("..", "'.' or '..'"),
                                          ("-x", "starts with '-'")])
def test_unsafe_names_are_refused(name, problem):
    assert problem in sweep.check_name(name)


def test_duplicate_names_name_both_points(tmp_path):
    with pytest.raises(InputError) as err:
        runs_of(tmp_path, run_name="same", sweep={"grid": {"x": [1, 2]}})
    assert "points 0 {'x': 1} and 1 {'x': 2}" in str(err.value)
