"""Log matching: only new bytes, whole lines, and a fresh start when the file is not the same one."""

from __future__ import annotations

import os

from autoexp import model
from autoexp.sidecar import logwatch

RULES = logwatch.Rules.from_monitor({
    "events": [{"name": "nan_loss", "pattern": r"loss[=:]\s*nan", "action": "cancel"},
               {"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}],
    "metrics": {"loss": r"loss[=:]\s*(?P<value>[-+0-9.eE]+|nan)", "step": r"step (\d+)"},
})


def events(found):
    return [(m.rule.name, m.groups) for m in found.events]


def test_reads_only_what_was_added(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("step 1 loss: 2.5\nsaved checkpoint /ck/1\n")
    cursor = model.new_log_cursor(log)
    first = logwatch.scan(cursor, RULES)
    assert events(first) == [("checkpoint", {"path": "/ck/1"})]
    assert first.metrics == {"loss": 2.5, "step": 1}
    assert logwatch.scan(cursor, RULES).events == []  # nothing new: nothing counted twice
    with open(log, "a") as fh:
        fh.write("step 2 loss: 1.25\nsaved checkpoint /ck/2\nstep 3 loss: 0.5\n")
    second = logwatch.scan(cursor, RULES)
    assert events(second) == [("checkpoint", {"path": "/ck/2"})]
    assert second.metrics == {"loss": 0.5, "step": 3} and second.grew
    assert cursor["offset"] == log.stat().st_size


def test_a_line_split_across_two_polls_is_matched_once_whole(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("saved checkpoint /ck/e")
    cursor = model.new_log_cursor(log)
    assert logwatch.scan(cursor, RULES).events == []  # no newline yet: not a line
    assert cursor["offset"] == 0
    with open(log, "a") as fh:
        fh.write("poch_0\nloss: na")
    assert events(logwatch.scan(cursor, RULES)) == [("checkpoint", {"path": "/ck/epoch_0"})]
    with open(log, "a") as fh:
        fh.write("n\n")
    found = logwatch.scan(cursor, RULES)
    assert events(found) == [("nan_loss", {})]
    assert found.metrics["loss"] == "nan"  # not a float: state.json must stay strict JSON


def test_final_scan_takes_a_last_line_without_newline(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("loss: 0.1\nsaved checkpoint /ck/last")
    cursor = model.new_log_cursor(log)
    assert logwatch.scan(cursor, RULES).events == []
    assert events(logwatch.scan(cursor, RULES, final=True)) == [("checkpoint", {"path": "/ck/last"})]


def test_truncated_log_is_read_again_from_the_top(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("saved checkpoint /ck/1\n" + "x" * 100 + "\n")
    cursor = model.new_log_cursor(log)
    logwatch.scan(cursor, RULES)
    log.write_text("saved checkpoint /ck/again\n")  # O_TRUNC, same inode, shorter
    found = logwatch.scan(cursor, RULES)
    assert found.restarted == "truncated"
    assert events(found) == [("checkpoint", {"path": "/ck/again"})]


def test_log_rewritten_in_place_longer_is_noticed(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("loss: 1.0\n")
    cursor = model.new_log_cursor(log)
    logwatch.scan(cursor, RULES)
    log.write_text("saved checkpoint /ck/9\nloss: 3.0\nmore text here\n")  # same inode, longer
    found = logwatch.scan(cursor, RULES)
    assert found.restarted == "rewritten"
    assert events(found) == [("checkpoint", {"path": "/ck/9"})]


def test_replaced_log_is_a_new_file(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("loss: 1.0\n" * 50)
    cursor = model.new_log_cursor(log)
    logwatch.scan(cursor, RULES)
    new = tmp_path / "new.out"
    new.write_text("loss: 1.0\n" * 60 + "saved checkpoint /ck/new\n")
    os.replace(new, log)  # another inode under the same name
    found = logwatch.scan(cursor, RULES)
    assert found.restarted == "replaced"
    assert events(found) == [("checkpoint", {"path": "/ck/new"})]


def test_missing_log_is_not_an_error(tmp_path):
    cursor = model.new_log_cursor(tmp_path / "not-yet.out")
    found = logwatch.scan(cursor, RULES, final=True)
    assert found.events == [] and not found.grew and cursor["offset"] == 0


def test_a_match_across_two_lines_does_not_count(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("loss:\nnan\nloss: 3\n")
    found = logwatch.scan(model.new_log_cursor(log), RULES)
    assert found.events == [] and found.metrics["loss"] == 3


def test_progress_bar_carriage_returns_and_long_partial_lines(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("10%|#   | loss=0.9\r50%|##  | loss=nan\r")
    cursor = model.new_log_cursor(log)
    found = logwatch.scan(cursor, RULES)
    assert events(found) == [("nan_loss", {})]
    with open(log, "a") as fh:
        fh.write("y" * (logwatch.MAX_LINE + 10))  # no line end at all: matched anyway, once
    assert logwatch.scan(cursor, RULES).bytes_read >= logwatch.MAX_LINE


def test_metric_last_value_found_far_from_the_end(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("loss: 7.5\n" + "noise line\n" * 50_000)
    assert logwatch.scan(model.new_log_cursor(log), RULES).metrics["loss"] == 7.5


def test_every_event_in_file_order(tmp_path):
    log = tmp_path / "run.out"
    log.write_text("saved checkpoint /a\nloss: nan\nsaved checkpoint /b\n")
    found = logwatch.scan(model.new_log_cursor(log), RULES)
    assert events(found) == [("checkpoint", {"path": "/a"}), ("nan_loss", {}), ("checkpoint", {"path": "/b"})]


def test_chunks_larger_than_one_read(tmp_path, monkeypatch):
    monkeypatch.setattr(logwatch, "CHUNK", 64)
    log = tmp_path / "run.out"
    lines = [f"step {i} loss: {i / 10}" for i in range(200)] + ["saved checkpoint /ck/x"]
    log.write_text("\n".join(lines) + "\n")
    found = logwatch.scan(model.new_log_cursor(log), RULES)
    assert events(found) == [("checkpoint", {"path": "/ck/x"})]
    assert found.metrics == {"loss": 19.9, "step": 199}
