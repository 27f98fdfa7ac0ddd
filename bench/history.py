"""The metric history's cost: a run that printed 1,000,000 metric lines, read by the sidecar.

    python bench/history.py [--lines 1000000] [--poll-lines 1000]

Three figures, each beside its baseline measured in the same run:
* catching up on the whole log in one poll (a sidecar started late, or resumed) with every value
  kept in the history, beside the same scan keeping no history and `grep -E -c` on the same file;
* an ordinary poll: the log grew by --poll-lines lines, and the run's history (already holding the
  million points' bounded series) is read, extended and written back;
* the history's size on disk and in points (the bound), and the process's peak RSS.
No cluster needed: this is the sidecar's log scanning, run in this process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from autoexp import history, model
from autoexp.sidecar import logwatch

PATTERN = r"step (?P<step>\d+) loss[=:]\s*(?P<value>[-+0-9.eE]+)"
GREP = r"step [0-9]+ loss[=:][[:space:]]*[-+0-9.eE]+"


def write_log(path: Path, start: int, count: int) -> None:
    with open(path, "a") as fh:
        for first in range(start, start + count, 100_000):
            last = min(first + 100_000, start + count)
            fh.write("".join(f"step {i} loss: {1 + 1 / i:.6f} lr: 3e-4 tokens/s: 81234\n" for i in range(first, last)))


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--poll-lines", type=int, default=1000)
    args = parser.parse_args()
    rules = logwatch.Rules.from_monitor({"metrics": {"loss": PATTERN}})
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        exp = Path(tmp)
        log = exp / "run.out"
        write_log(log, 1, args.lines)
        log.read_bytes()  # the page cache, warm for every side
        mb = log.stat().st_size / (1 << 20)
        print(f"a log of {args.lines:,} metric lines ({mb:.0f} MB):")

        _, wall, cpu = timed(lambda: logwatch.scan(model.new_log_cursor(str(log)), rules, final=True))
        print(f"  catch up, values counted, no history kept       {wall:6.2f} s wall  {cpu:6.2f} s CPU")
        cursor = model.new_log_cursor(str(log))

        def with_history():
            recorder = history.Recorder(exp, "run", 1)
            logwatch.scan(cursor, rules, final=False, sink=recorder)
            recorder.save()
        _, wall, cpu = timed(with_history)
        print(f"  catch up, every value into the history          {wall:6.2f} s wall  {cpu:6.2f} s CPU")
        _, wall, _ = timed(lambda: subprocess.run(["grep", "-E", "-c", GREP, str(log)], capture_output=True,
                                                  env={"LC_ALL": "C"}, check=True))
        print(f"  grep -E -c, LC_ALL=C (baseline)                 {wall:6.2f} s wall")

        write_log(log, args.lines + 1, args.poll_lines)
        _, wall, cpu = timed(with_history)
        print(f"  a poll: +{args.poll_lines} lines, history read, extended, written  "
              f"{wall * 1000:6.1f} ms wall  {cpu * 1000:6.1f} ms CPU")
        saved = exp / history.DIR / "run.json"
        series = history.series(exp, "run")["loss"][1]
        points = len(json.loads(saved.read_text())["loss"]["1"]["buckets"])
        print(f"  history: {len(series):,} points kept of {args.lines + args.poll_lines:,} "
              f"({points} buckets, bound {2 * history.CAP:,} points), {saved.stat().st_size / 1024:.0f} KiB on disk")
        print(f"  peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
