"""state.json read as the sidecar keeps it: a line at a time, each run compacted, and nothing else
different from the state every other reader gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoexp import model, report, statefile


class Planned:
    def __init__(self, index: int, name: str, params: dict):
        self.name, self.index, self.params = name, index, params


def a_state(exp: Path) -> model.State:
    """Runs in every shape a poll leaves them: waiting, ended with a closed log cursor, requeued,
    retried with what a rule gave it, cancelled; awkward names and parameters (a quote and ``": ``
    and a carriage return in a name, an integer beyond 64 bits, non-ASCII); and a history."""
    names = ["plain", 'odd": {na\rme', "ünï", "big"]
    params = [{"lr": 0.1}, {"lr": 0.2, "tag": "a, b\n}"}, {"lr": 0.3}, {"seed": 2 ** 70}]
    st = model.new_experiment("exp", [Planned(k, n, p) for k, (n, p) in enumerate(zip(names, params))], exp, "slurm")
    for k, run in enumerate(st["runs"].values()):
        model.add_attempt(run, model.new_attempt(1, f"7_{k}", "2026-12-03T07:00:00Z", f"{exp}/logs/array/slurm-7_{k}.out"))
    ended = st["runs"]["plain"]
    ended["attempts"][-1].update(state="COMPLETED", started="2026-12-03T07:01:00Z", completed="2026-12-03T07:02:00Z",
                                 elapsed_s=60, exit_code="0:0", nodes="node1", ended_seen="2026-12-03T07:02:10Z")
    model.show_latest(ended)
    ended["log_cursor"] = {"path": ended["attempts"][-1]["log"], "offset": 10, "size": 10, "attempt": 1, "final": True}
    ended["metrics"] = {"loss": 0.5}
    ended["events"].append(model.new_event("checkpoint", "2026-12-03T07:01:30Z", {"path": "/ck/1"}, 1))
    odd = st["runs"]['odd": {na\rme']
    odd["attempts"][-1].update(state="NODE_FAIL", ended_seen="2026-12-03T07:02:10Z")
    model.add_attempt(odd, model.requeued_attempt(odd["attempts"][-1], "2026-12-03T07:03:00Z"))
    model.add_attempt(st["runs"]["ünï"], model.new_attempt(2, "8_0", None, "x.out", given={"mem": ["2G", "OOM"]}))
    model.mark_cancelled(st["runs"]["big"], "user", "2026-12-03T07:04:00Z")
    model.log(st, "NOTE", "exp", Detail="a line\nand another")
    return st


def test_a_kept_state_reads_and_writes_as_the_plain_one(tmp_path):
    statefile.write(tmp_path, a_state(tmp_path))
    text = statefile.path(tmp_path).read_bytes()
    plain, kept = statefile.read(tmp_path), statefile.read(tmp_path, kept=True)
    assert kept == plain
    assert kept["runs"]["big"]["params"]["seed"] == 2 ** 70
    assert b"".join(statefile.dumps(kept)) == b"".join(statefile.dumps(plain)) == text


def test_a_kept_run_changes_as_a_plain_one(tmp_path):
    """Compacted runs are plain dicts: a poll adds, changes and removes their keys as before."""
    statefile.write(tmp_path, a_state(tmp_path))
    plain, kept = statefile.read(tmp_path), statefile.read(tmp_path, kept=True)
    for st in (plain, kept):
        run = st["runs"]["ünï"]
        assert type(run) is dict and type(run["attempts"][-1]) is dict
        run["log_cursor"] = model.new_log_cursor("x.out")
        run["attempts"][-1].update(state="RUNNING", started="2026-12-03T07:05:00Z")
        run["attempts"][-1].pop("given")
        model.show_latest(run)
        st["runs"]["plain"].pop("metrics")
        st["runs"]["plain"]["cancelled"] = "rule"
        model.add_attempt(st["runs"]["big"], model.new_attempt(2, "9_0", None, "y.out"))
    assert kept == plain
    assert list(kept["runs"]["ünï"]) == list(plain["runs"]["ünï"])  # the keys' order too: the file's lines
    assert b"".join(statefile.dumps(kept)) == b"".join(statefile.dumps(plain))


def test_a_kept_states_empty_events_and_metrics_are_one_object_that_refuses_change(tmp_path):
    """100,000 waiting runs share one empty ``events`` and one empty ``metrics``: changing one in
    place would change them all, so it raises (a poll assigns new ones, and they are its own)."""
    statefile.write(tmp_path, a_state(tmp_path))
    kept = statefile.read(tmp_path, kept=True)
    waiting, other = kept["runs"]["ünï"], kept["runs"]["big"]
    assert waiting["events"] is other["events"] == [] and waiting["metrics"] is other["metrics"] == {}
    with pytest.raises(TypeError):
        waiting["events"].append(model.new_event("checkpoint", "2026-12-03T07:01:30Z", {}, 1))
    with pytest.raises(TypeError):
        waiting["metrics"]["loss"] = 0.1
    assert other["events"] == [] and other["metrics"] == {}
    assert kept["runs"]["plain"]["metrics"] == {"loss": 0.5}  # a run's own are its own
    kept["runs"]["plain"]["metrics"]["loss"] = 0.4


def test_a_state_in_another_layout_is_kept_all_the_same(tmp_path):
    """A state.json written otherwise (by hand, by an older version) is parsed whole."""
    st = a_state(tmp_path)
    statefile.path(tmp_path).write_text(json.dumps(st, indent=2))
    assert statefile.read(tmp_path, kept=True) == json.loads(json.dumps(st))


def test_a_sidecar_keeps_the_state_it_read_for_its_first_poll(tmp_path):
    """One parse for a first poll: the state read for the query's targets is the one it applies to,
    unless state.json was written in between."""
    from autoexp.sidecar.poll import first_watch

    st = a_state(tmp_path)
    st["arrays"] = [model.new_array(job, "0-3", 1, "array.sbatch", 0, "2026-12-03T07:00:00Z", "launch")
                    for job in ("7", "8")]
    statefile.write(tmp_path, st)
    watch = first_watch(tmp_path)
    assert watch.ids == ["7", "8"]
    kept = watch.kept()
    assert kept is not None and kept[0] == statefile.stamp(tmp_path)
    assert kept[1]["runs"] == statefile.read(tmp_path)["runs"]
    watch = first_watch(tmp_path)
    with statefile.locked(tmp_path) as st:  # someone else writes
        st["runs"]["plain"]["metrics"]["loss"] = 0.25
    with statefile.locked(tmp_path, known=watch.kept(), keep=True) as st:
        assert st["runs"]["plain"]["metrics"]["loss"] == 0.25


def test_the_summary_copies_the_rows_of_unchanged_runs_only_from_the_file_it_wrote(tmp_path, monkeypatch):
    """A sidecar rewriting the summary of 100,000 runs formats only the rows of runs that changed,
    and copies the rest from the summary it wrote last, never from a file someone else wrote."""
    formatted = []
    table_row = report.table_row
    monkeypatch.setattr(report, "table_row", lambda name, *rest: formatted.append(name) or table_row(name, *rest))
    summary = tmp_path / statefile.SUMMARY

    def write(st):
        formatted.clear()
        statefile.write(tmp_path, st)
        written = sorted(formatted)
        assert summary.read_bytes() == b"".join(report.summary(st))  # as if every row were formatted anew
        return written

    st = a_state(tmp_path)
    assert write(st) == sorted(st["runs"])
    model.mark_cancelled(st["runs"]["ünï"], "user", "2026-12-03T07:05:00Z")
    assert write(st) == ["ünï"]
    assert write(st) == []
    summary.write_text(summary.read_text().replace("| plain |", "| edited by hand |"))  # someone else's write
    assert write(st) == sorted(st["runs"])
