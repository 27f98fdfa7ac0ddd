"""`autoexp status` on the real cluster: wall time and peak RSS for finished experiments of 1,000
and 10,000 runs, beside `sacct` for the same jobs and `python -c pass` (the interpreter's start-up).

    python bench/status.py [--sizes 1000 10000] [--repeat 9] [--keep DIR]

Each experiment is launched for real (every task runs `true`) and measured once its sidecar has
recorded every run as ended. With --keep the experiments stay in DIR and a later run measures
them again without relaunching. Times are the median (and best) of --repeat runs of each command
in a fresh process, after one warm-up run; peak RSS is that process's own (from GNU time).
Launching 10,000 tasks takes a while (about 20 minutes on the 2-core test cluster).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from autoexp.slurm import SACCT_FIELDS

TIME = "/usr/bin/time"  # GNU time: a small parent, so the peak RSS is the command's own
# As users run it: with compiled modules cached (a coding sandbox may forbid writing them).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(argv: list[str], repeat: int) -> tuple[float, float, int]:
    """(median s, best s, peak RSS MiB) of ``argv`` run ``repeat`` times after one warm-up run,
    output discarded.

    The RSS comes from GNU time, not from our own wait4: a child forked from this (bigger)
    process would report our pages as its peak.
    """
    times, rss = [], 0
    for _ in range(repeat + 1):
        start = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, timeout=600, env=ENV)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(argv)} failed: {proc.stderr}")
        rss = max(rss, int(proc.stderr.split()[-1]))
    return statistics.median(times[1:]), min(times[1:]), rss // 1024


def done(exp: Path) -> bool:
    return (exp / "state.json").exists() and json.loads((exp / "state.json").read_text()).get("done")


def launched(base: Path, n: int) -> Path:
    """An experiment of ``n`` runs of `true`: launched now, unless kept finished from before."""
    exp = base / "experiments" / f"status{n}"
    if not done(exp):
        shutil.rmtree(exp, ignore_errors=True)
        config = base / f"status{n}.yaml"
        config.write_text(yaml.safe_dump({
            "name": f"status{n}", "output_dir": str(base / "experiments"), "command": "true",
            "sweep": {"grid": {"i": list(range(n))}}, "slurm": {"time": "00:05:00", "mem": "50M"},
            "monitor": {"interval": 10}}))
        subprocess.run([sys.executable, "-m", "autoexp", "launch", str(config)], check=True, timeout=600,
                       stdout=subprocess.DEVNULL)
        print(f"launched {n} runs in {exp}", file=sys.stderr, flush=True)
    return exp


def sacct_argv(exp: Path) -> list[str]:
    """The query the sidecar makes for the whole experiment, in one call."""
    state = json.loads((exp / "state.json").read_text())
    since = min(a["submitted"] for a in state["arrays"]).rstrip("Z")
    since = (dt.datetime.fromisoformat(since) - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    return ["sacct", "--noheader", "--parsable2", "--duplicates", "--allocations",
            f"--format={','.join(SACCT_FIELDS)}", f"--jobs={','.join(a['job_id'] for a in state['arrays'])}",
            f"--starttime={since}"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the experiments in this directory")
    args = parser.parse_args()
    if not shutil.which("sbatch"):
        sys.exit("sbatch not on PATH: run cluster/setup.sh first")
    if not os.access(TIME, os.X_OK):
        sys.exit(f"{TIME} not found: install GNU time (apt-get install time)")
    base = args.keep or Path(tempfile.mkdtemp(prefix="autoexp-bench-status-"))
    base.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    experiments: dict[int, Path] = {}
    try:
        for n in args.sizes:
            experiments[n] = launched(base, n)
        while not all(done(exp) for exp in experiments.values()):
            time.sleep(10)
        print(f"{'command':<34} | {'runs':>6} | {'median s':>8} | {'best s':>7} | {'peak RSS MiB':>12} | state.json MB")
        rows = [("python -c pass", None, [python, "-c", "pass"])]
        for n, exp in experiments.items():
            rows += [("autoexp status", n, [python, "-m", "autoexp", "status", str(exp)]),
                     ("autoexp status --json", n, [python, "-m", "autoexp", "status", "--json", str(exp)]),
                     ("sacct (the sidecar's query)", n, sacct_argv(exp))]
        for label, n, argv in rows:
            median, best, rss = measure(argv, args.repeat)
            size = f"{(experiments[n] / 'state.json').stat().st_size / 1e6:.1f}" if n else "-"
            print(f"{label:<34} | {n or '-':>6} | {median:>8.3f} | {best:>7.3f} | {rss:>12} | {size}", flush=True)
    finally:
        for exp in experiments.values():
            if not done(exp):
                subprocess.run([python, "-m", "autoexp", "cancel", str(exp)], timeout=300)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
