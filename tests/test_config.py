"""Bad input: exit status 2, one line naming the file and the key, nothing written or submitted."""

from __future__ import annotations

import pytest
import yaml

from autoexp import cli, config as configmod
from autoexp.durations import parse_duration
from conftest import autoexp

GOOD = {
    "name": "cfgtest",
    "command": "echo {{ rank }} {{ lr }}",
    "sweep": {"grid": {"rank": [8, 16], "lr": [1.0e-5, 5.0e-5]}},
    "slurm": {"time": "00:05:00"},
}


def variant(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in changes.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return data


DELETE = object()

CASES = {
    # id: (config data or raw text, overrides, [fragments the one-line message must contain])
    "malformed_yaml": ("name: x\ncommand: [unclosed\n", [], ["malformed YAML", "line"]),
    "unknown_key": (variant(max_paralel=2), [], ["max_paralel", "unknown key", "did you mean 'max_parallel'"]),
    "unknown_nested_key": (variant(**{"monitor.intervall": 5}), [], ["monitor.intervall", "did you mean 'interval'"]),
    "wrong_type": (variant(max_parallel="four"), [], ["max_parallel", "expected an integer"]),
    "missing_name": (variant(name=DELETE), [], ["name", "required key is missing"]),
    "missing_command": (variant(command=DELETE), [], ["command", "required key is missing"]),
    "empty_sweep": (variant(**{"sweep.grid": {"rank": []}}), [], ["sweep", "no runs"]),
    "all_excluded": (variant(**{"sweep.grid": {"rank": [8]}, "sweep.exclude": [{"rank": 8}]}), [], ["sweep", "no runs"]),
    "bad_time": (variant(**{"slurm.time": "2 hours"}), [], ["slurm.time", "not a Slurm time"]),
    "undefined_variable": (variant(command="echo {{ rnak }}"), [], ["command", "undefined variable 'rnak'", "did you mean 'rank'"]),
    "undefined_in_env": (variant(env={"OUT": "{{ ouput_dir }}"}), [], ["env.OUT", "undefined variable"]),
    "unknown_site": (variant(site="lumii"), [], ["site", "unknown site 'lumii'"]),
    "unknown_sbatch_option": (variant(**{"slurm.partiton": "x"}), [], ["slurm.partiton", "did you mean 'partition'"]),
    "managed_sbatch_option": (variant(**{"slurm.array": "0-3"}), [], ["slurm.array", "set by autoexp"]),
    "bad_name": (variant(name="my exp/1"), [], ["name", "not valid"]),
    "bad_regex": (variant(monitor={"events": [{"name": "x", "pattern": "(unclosed"}]}), [],
                  ["monitor.events[0].pattern", "invalid regular expression"]),
    "bad_action": (variant(monitor={"events": [{"name": "x", "pattern": "x", "action": "reboot"}]}), [],
                   ["monitor.events[0].action"]),
    "bad_duration": (variant(monitor={"stall_after": "soon"}), [], ["monitor.stall_after", "not a duration"]),
    "override_unknown_key": (GOOD, ["max_paralel=2"], ["override 'max_paralel=2'", "did you mean 'max_parallel'"]),
    "override_wrong_type": (GOOD, ["max_parallel=many"], ["override 'max_parallel=many'", "max_parallel"]),
    "override_malformed": (GOOD, ["slurm.time"], ["override", "KEY=VALUE"]),
    "run_name_unsafe": (variant(run_name="r/{{ rank }}_{{ lr }}"), [], ["run_name", "contains '/'"]),
    "run_name_dotdot": (variant(run_name=".."), [], ["run_name", "'.' or '..'"]),
    "run_name_clash": (variant(run_name="rank{{ rank }}"), [], ["run_name", "both get the name 'rank8'", "'lr': 1e-05", "'lr': 5e-05"]),
    "run_name_attempt": (variant(run_name="r{{ rank }}_{{ lr }}_{{ attempt }}"), [], ["run_name", "undefined variable 'attempt'"]),
    "param_reserved": (variant(**{"sweep.grid": {"run_dir": [1, 2]}}), [], ["sweep", "run_dir"]),
}


def write_case(tmp_path, data):
    path = tmp_path / "exp.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line_and_writes_nothing(case, workdir, capsys):
    data, overrides, fragments = CASES[case]
    path = write_case(workdir, data)
    status = cli.main(["plan", str(path), *overrides, "--scheduler", "local"])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("autoexp: error: ")
    if not any(f.startswith("override") for f in fragments):
        assert str(path) in lines[0], "the message must name the file"
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (workdir / "experiments").exists() or not any((workdir / "experiments").iterdir())


def test_bad_input_from_the_command_line_exits_2(workdir):
    path = write_case(workdir, variant(max_paralel=2))
    proc = autoexp("launch", path, "--scheduler", "local", cwd=workdir)
    assert proc.returncode == 2
    assert "did you mean 'max_parallel'" in proc.stderr
    assert proc.stdout == ""
    assert not (workdir / "experiments").exists()


def test_error_names_the_site_file_when_the_site_is_wrong(workdir, capsys):
    site = workdir / "mysite.yaml"
    site.write_text("slurm: {time: forever}\n")
    path = write_case(workdir, variant(site="mysite.yaml"))
    assert cli.main(["plan", str(path), "--scheduler", "local"]) == 2
    err = capsys.readouterr().err
    assert str(site) in err and "slurm.time" in err


def test_overrides_apply_on_top_of_file_and_site(workdir):
    path = write_case(workdir, variant(site="local"))
    cfg = configmod.load(path, ["max_parallel=3", "slurm.time=01:00:00", "sweep.grid.lr=[0.1]"])
    assert cfg["max_parallel"] == 3
    assert cfg["slurm"]["time"] == "01:00:00"
    assert cfg["slurm"]["partition"] == "debug"  # from the local site, not overridden
    assert cfg["sweep"]["grid"]["lr"] == [0.1]


def test_yaml_exponent_without_dot_is_a_float(workdir):
    path = write_case(workdir, "name: x\ncommand: echo {{ lr }}\nsweep: {grid: {lr: [1e-5, 3e-4]}}\n")
    cfg = configmod.load(path)
    assert cfg["sweep"]["grid"]["lr"] == [1e-5, 3e-4]


def test_only_true_and_false_are_booleans(workdir):
    """`retries: {on: [...]}` as the README writes it: `on` is a key, not YAML 1.1's true."""
    path = write_case(workdir, "name: x\ncommand: echo {{ flag }}\nsweep: {grid: {flag: [yes, no, on, off]}}\n"
                               "monitor: {retries: {max: 2, on: [NODE_FAIL, PREEMPTED]}}\n"
                               "slurm: {exclusive: true, requeue: False}\n")
    cfg = configmod.load(path)
    assert cfg["monitor"]["retries"] == {"max": 2, "on": ["NODE_FAIL", "PREEMPTED"]}
    assert cfg["sweep"]["grid"]["flag"] == ["yes", "no", "on", "off"]
    assert cfg["slurm"]["exclusive"] is True and cfg["slurm"]["requeue"] is False
    assert configmod.parse_override("monitor.retries.on=[NODE_FAIL]") == ("monitor.retries.on", ["NODE_FAIL"])
    assert configmod.parse_override("slurm.exclusive=true") == ("slurm.exclusive", True)


def test_sbatch_option_spellings_are_normalised(workdir):
    path = write_case(workdir, variant(slurm={"cpus_per_task": 4, "exclusive": True, "qos": None}))
    cfg = configmod.load(path)
    assert cfg["slurm"]["cpus-per-task"] == 4 and cfg["slurm"]["exclusive"] is True


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200),
                                          ("1d", 86400), ("01:30:00", 5400), ("1-00:00:10", 86410)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
