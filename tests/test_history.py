"""Metric history: every value of a metric, per attempt, bounded, each point exactly once."""

from __future__ import annotations

import copy
import math

from autoexp import history, model
from autoexp.sidecar import logwatch

RULES = logwatch.Rules.from_monitor({"metrics": {
    "loss": r"step (?P<step>\d+) loss[=:]\s*(?P<value>[-+0-9.eEnaif]+)",
    "acc": r"acc (?P<value>[0-9.]+)"}})


def write_log(path, lines):
    with open(path, "a") as fh:
        fh.writelines(line + "\n" for line in lines)


def record(exp, log_cursor, attempt=1, final=False):
    recorder = history.Recorder(exp, "r0", attempt)
    found = logwatch.scan(log_cursor, RULES, final=final, sink=recorder)
    recorder.save()
    return found


def test_every_value_with_its_step_and_per_attempt(tmp_path):
    log = tmp_path / "r0.out"
    write_log(log, ["step 1 loss: 2.5", "noise", "acc 0.5", "step 2 loss=2.0", "step 3 loss: nan", "acc 0.7"])
    cursor = model.new_log_cursor(str(log))
    found = record(tmp_path, cursor)
    assert found.metrics == {"loss": "nan", "acc": 0.7}  # the last value, as status shows it
    write_log(log, ["step 4 loss: 1.5"])
    record(tmp_path, cursor)
    got = history.series(tmp_path, "r0")
    assert got == {"loss": {1: [[1, 2.5], [2, 2.0], [4, 1.5]]}, "acc": {1: [[1, 0.5], [2, 0.7]]}}
    # a second attempt's values are a series of their own
    log2 = tmp_path / "r0-2.out"
    write_log(log2, ["step 1 loss: 3.0"])
    record(tmp_path, model.new_log_cursor(str(log2)), attempt=2)
    assert history.series(tmp_path, "r0")["loss"] == {1: [[1, 2.5], [2, 2.0], [4, 1.5]], 2: [[1, 3.0]]}
    rows = list(history.rows(tmp_path, ["r0"]))
    assert rows[0] == {"run": "r0", "attempt": 1, "metric": "acc", "step": 1, "value": 0.5}
    assert history.to_csv(iter(rows)).splitlines()[:2] == ["run,attempt,metric,step,value", "r0,1,acc,1,0.5"]


def test_lines_read_again_after_a_crash_are_not_recorded_twice(tmp_path):
    """The sidecar saved the history, then died before the state (and its cursor) was written:
    the next sidecar reads the same lines again from the older cursor."""
    log = tmp_path / "r0.out"
    write_log(log, [f"step {i} loss: {1 / i}" for i in range(1, 51)])
    cursor = model.new_log_cursor(str(log))
    record(tmp_path, cursor)
    saved_in_state = copy.deepcopy(cursor)
    write_log(log, [f"step {i} loss: {1 / i}" for i in range(51, 101)])
    record(tmp_path, cursor)  # history written; the state write that held `cursor` is lost
    record(tmp_path, saved_in_state)  # the next sidecar, from the cursor the state kept
    points = history.series(tmp_path, "r0")["loss"][1]
    assert [p[0] for p in points] == list(range(1, 101))


def test_a_million_lines_stay_bounded_and_keep_their_shape(tmp_path):
    """1,000,000 loss lines with a spike: at most 2 * CAP points, first, last, spike and dip kept,
    and no stretch of the run left without points."""
    n = 1_000_000
    log = tmp_path / "r0.out"

    def loss(i):
        return 10.0 if i == 777_777 else (0.001 if i == 333_333 else 1 + math.exp(-i / 200_000))
    with open(log, "w") as fh:
        for start in range(1, n + 1, 100_000):
            fh.write("".join(f"step {i} loss: {loss(i):.6f}\n" for i in range(start, start + 100_000)))
    cursor = model.new_log_cursor(str(log))
    record(tmp_path, cursor, final=True)
    points = history.series(tmp_path, "r0")["loss"][1]
    assert history.CAP <= len(points) < 2 * history.CAP
    steps = [p[0] for p in points]
    assert steps == sorted(steps) and steps[0] == 1 and steps[-1] == n
    assert [777_777, 10.0] in points and [333_333, 0.001] in points
    assert max(b - a for a, b in zip(steps, steps[1:])) <= 8 * n / history.CAP
    for step, value in points:  # every kept point is a real point of the curve
        assert value == round(loss(step), 6)
    assert (tmp_path / "metrics" / "r0.json").stat().st_size < 100_000


def test_halved_keeps_extremes_first_and_last():
    points = [[i, v] for i, v in enumerate([5, 1, 9, 3, 4, 4, 4, 8, 0, 2])]
    kept = history.halved(points)
    assert kept[0] == [0, 5] and kept[-1] == [9, 2]
    assert [2, 9] in kept and [8, 0] in kept and len(kept) < len(points)


def test_the_report_without_plotly_keeps_its_tables(tmp_path, monkeypatch):
    """Plotly is an optional extra: without it report.html still ranks the runs, lists every
    attempt with its log, and says how to get the plots."""
    from autoexp import htmlreport

    monkeypatch.setattr(htmlreport, "_plotly", lambda: None)
    attempt = {"attempt": 1, "job_id": "7_0", "state": "FAILED", "submitted": "2026-01-01T00:00:00Z",
               "started": "2026-01-01T00:00:05Z", "completed": "2026-01-01T00:01:00Z", "nodes": "node1",
               "log": str(tmp_path / "runs" / "a" / "slurm-7_0.out")}
    runs = {"a": {"index": 0, "params": {"lr": 0.1}, "state": "FAILED", "metrics": {"loss": 2.0},
                  "attempts": [attempt], "elapsed_s": 55},
            "b": {"index": 1, "params": {"lr": 0.2}, "state": "COMPLETED", "metrics": {"loss": 1.0},
                  "attempts": [{**attempt, "job_id": "7_1", "state": "COMPLETED"}], "elapsed_s": 50}}
    doc = {"experiment": "x", "exp_dir": str(tmp_path), "updated": "2026-01-01T00:01:00Z",
           "counts": {"FAILED": 1, "COMPLETED": 1}, "runs": runs,
           "health": {"sidecar": "finished", "fix": None, "log": None, "last_error": None},
           "progress": {"runs": 2, "finished": 2}}
    page = htmlreport.write(doc, tmp_path)
    text = page.read_text()
    assert "pip install 'autoexp[report]'" in text and "<script" not in text
    ranking = text[text.index("id=ranking"):text.index("id=attempts")]
    assert ranking.index(">b<") < ranking.index(">a<")  # lowest loss first
    assert "href='runs/a/slurm-7_0.out'" in ranking and "7_1" in text[text.index("id=attempts"):]
