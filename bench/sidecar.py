"""The sidecar's cost per poll on the real cluster, and its log-matching speed beside `grep -E`.

    python bench/sidecar.py [--sizes 1000 10000] [--run-for 600] [--after 3] [--log-mb 256] [--keep DIR]
                            [--held 10000 100000]

For each size an experiment of that many tasks (each runs `true`, with the seed's event and metric
patterns configured) is launched for real; its own sidecar job is cancelled at once and the
benchmark polls instead, in a child process, exactly as the sidecar does (`autoexp.sidecar.poll`),
every 2 s until every run has ended, then --after more times. Tasks still waiting after --run-for
seconds are cancelled (on a 2-core test cluster 10,000 tasks take long to run; accounting then
shows them as one collapsed CANCELLED row, not one row each). Per poll it reports the wall and CPU
time of the one `sacct` call (a counting shim on PATH checks it is one) and of autoexp's own work
(parse sacct's output, read state, apply the records, scan logs, write state.json, the summary and
events.log), and the child's peak RSS. Run it alone on the cluster: other jobs skew the figures.

With --held, experiments of that many held tasks (they stay PENDING: nothing runs) are polled as
the sidecar polls them: a full poll as before this change (every array, from the experiment's
beginning, state read, applied and written: the baseline), then a poll with nothing changed, then,
after 100 tasks are released and have run, the poll that sees those 100 changes, then one more
with nothing changed. Each with its own CPU, sacct's wall time and rows, and the peak RSS.

Then log matching: --log-mb of synthetic training logs (64 files) scanned by `autoexp.sidecar.logwatch`
with the seed's patterns, beside `grep -E -c` with the same patterns on the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import autoexp
from autoexp import backends, model, sidecar, slurm, statefile
from autoexp.sidecar import logwatch, records
from autoexp.sidecar.work import Watch

EVENTS = [{"name": "nan_loss", "pattern": r"loss[=:]\s*nan", "action": "log"},
          {"name": "checkpoint", "pattern": r"saved checkpoint (?P<path>\S+)"}]
METRICS = {"loss": r"loss[=:]\s*(?P<value>[-+0-9.eE]+)"}
# The same patterns for grep -E (POSIX classes for \s and \S).
GREP = [r"loss[=:][[:space:]]*nan", r"saved checkpoint [^[:space:]]+", r"loss[=:][[:space:]]*[-+0-9.eE]+"]

SHIM = """#!/bin/bash
out=$({real} "$@"); rc=$?
printf '%s\\n' "$out" | grep -c . >> {count}
[ -n "$out" ] && printf '%s\\n' "$out"
exit $rc
"""  # one line per call: the rows it printed


# --------------------------------------------------------------------------- polling (child)

def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM), in MiB. Not getrusage's ru_maxrss: Linux carries that
    over fork and exec, so a child started by a parent that planned 100,000 runs would report the
    parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(exp_dir: Path, after: int, every: float, run_for: float) -> None:
    """Poll like the sidecar until done, then ``after`` more times; one JSON line per poll."""
    settings = sidecar.Settings.load(exp_dir)
    st = statefile.read(exp_dir)
    sched = backends.get(st["scheduler"], exp_dir)
    parsing = [0.0]
    parse = slurm.parse_sacct

    def timed_parse(text):  # parsing sacct's output is autoexp's work, not sacct's
        start = time.perf_counter()
        try:
            return parse(text)
        finally:
            parsing[0] = time.perf_counter() - start
    slurm.parse_sacct = timed_parse
    extra, targets, deadline = None, None, time.monotonic() + run_for
    while extra is None or extra < after:
        if deadline and time.monotonic() > deadline:
            sched.cancel([a["job_id"] for a in st["arrays"]])
            deadline = None
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time()
        parsing[0] = 0.0
        result = sidecar.poll(exp_dir, sched, settings, targets=targets)
        targets = result.targets
        children2 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sacct_cpu = (children2.ru_utime + children2.ru_stime) - (children.ru_utime + children.ru_stime)
        counts = statefile.read(exp_dir)["counts"]
        print(json.dumps({"phase": "finished" if result.done else "running", "records": result.records,
                          "sacct_wall": result.query_s - parsing[0], "sacct_cpu": sacct_cpu,
                          "own_wall": result.work_s + parsing[0], "own_cpu": time.process_time() - cpu,
                          "rss_mb": peak_rss_mb(),
                          "counts": counts}), flush=True)
        if result.done:
            extra = (extra or 0) + 1
        time.sleep(every)


def held(exp_dir: Path, shim_count: Path, changed: int = 100) -> None:
    """The four polls of a held experiment (see the module's docstring); one JSON line each."""
    settings = sidecar.Settings.load(exp_dir)
    st = statefile.read(exp_dir, raw=[])  # its runs left unparsed: the stand-in's own read must not set the peak
    sched = backends.get(st["scheduler"], exp_dir)
    array, created, since = st["arrays"][0]["job_id"], st["created"], records.since(st)
    sidecar_job = st["sidecar"]["job_id"]
    del st
    real_sacct = os.environ["BENCH_REAL_SACCT"]

    def one(what: str, targets) -> sidecar.PollResult:
        shim_count.unlink(missing_ok=True)
        cpu = time.process_time()
        result = sidecar.poll(exp_dir, sched, settings, targets=targets)
        own = time.process_time() - cpu
        rows = [int(x) for x in shim_count.read_text().split()] if shim_count.exists() else []
        print(json.dumps({"what": what, "own_cpu": own, "sacct_wall": result.query_s, "sacct_calls": len(rows),
                          "rows": sum(rows), "records": result.records, "changes": result.changes,
                          "wrote": not result.quiet,
                          "rss_mb": peak_rss_mb()}), flush=True)
        return result

    def listed() -> bool:  # accounting lists the held array and the cancelled sidecar job: a quiet poll is quiet
        out = subprocess.run([real_sacct, "-n", "-P", "-X", f"--jobs={array},{sidecar_job}", "--format=JobID,State",
                              f"--starttime={created[:-1]}"], capture_output=True, text=True).stdout
        return any(line.startswith(f"{array}_") for line in out.splitlines()) and f"{sidecar_job}|CANCELLED" in out
    deadline = time.monotonic() + 120
    while not listed() and time.monotonic() < deadline:
        time.sleep(1)
    base = one("full poll as before (baseline)", Watch([array], since))
    quiet = one("nothing changed", base.targets)
    quiet = one("nothing changed", quiet.targets)
    subprocess.run(["scontrol", "release", f"{array}_[0-{changed - 1}]"], check=True, capture_output=True)

    def ended() -> bool:
        out = subprocess.run([real_sacct, "-n", "-P", "-X", f"--jobs={array}", "--format=JobID,State",
                              f"--starttime={created[:-1]}"], capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines() if line.endswith("|COMPLETED")) >= changed
    while not ended():
        time.sleep(1)
    time.sleep(2)
    changes = one(f"{changed} changed", quiet.targets)
    one("nothing changed", changes.targets)
    del base, quiet, changes  # the sidecar keeps one state at a time (the last poll's): so does this
    one("full poll as before (baseline)", Watch([array], since))


def held_figures(base: Path, n: int, shim_count: Path) -> list[dict]:
    exp_dir = launch(base, n, hold=True)
    try:
        proc = subprocess.run([sys.executable, __file__, "--measure-held", str(exp_dir)], capture_output=True,
                              text=True, check=True, env={**os.environ, "BENCH_SHIM_COUNT": str(shim_count)})
    finally:
        st = statefile.read(exp_dir)
        subprocess.run(["scancel", *[a["job_id"] for a in st["arrays"]]], capture_output=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def report_held(n: int, rows: list[dict]) -> None:
    print(f"\n{n} held tasks: per poll, the sidecar's own CPU, sacct (wall, calls, rows), peak RSS so far")
    print(f"  {'poll':32} {'own cpu':>8} {'sacct wall':>10} {'calls':>5} {'rows':>6} {'changes':>7} "
          f"{'wrote':>5} {'rss MB':>6}")
    for r in rows:
        print(f"  {r['what']:32} {r['own_cpu']:8.3f} {r['sacct_wall']:10.3f} {r['sacct_calls']:>5} {r['rows']:>6} "
              f"{r['changes']:>7} {r['wrote']!s:>5} {r['rss_mb']:6.0f}")


def launch(base: Path, n: int, hold: bool = False) -> Path:
    config = {"name": f"bench-sidecar-{n}{'-held' if hold else ''}", "output_dir": str(base), "command": "true",
              "sweep": {"grid": {"i": list(range(n))}}, "run_name": "r{{ i }}",
              "slurm": {"time": "00:05:00", "mem": "100M", **({"hold": True} if hold else {})},
              "monitor": {"interval": 3600, "events": EVENTS, "metrics": METRICS}}
    path = base / f"bench-{n}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = autoexp.launch(autoexp.load_config(path))
    backends.get(result.scheduler, result.exp_dir).cancel([result.sidecar])  # the benchmark polls instead
    return result.exp_dir


def poll_figures(exp_dir: Path, after: int, run_for: float, shim_count: Path) -> list[dict]:
    shim_count.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, __file__, "--measure", str(exp_dir), "--after", str(after),
                           "--run-for", str(run_for)],
                          capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    calls = len(shim_count.read_text().splitlines()) if shim_count.exists() else 0  # one line per call
    for row in rows:
        row["sacct_calls_total"] = calls
    return rows


def report_polls(n: int, rows: list[dict]) -> None:
    calls = rows[0]["sacct_calls_total"]
    print(f"\n{n} tasks: {len(rows)} polls, {calls} sacct calls ({calls / len(rows):.2f} per poll); "
          f"peak RSS {max(r['rss_mb'] for r in rows):.0f} MB; at the end {rows[-1]['counts']}")
    print(f"  {'phase':9} {'polls':>5} {'records':>8}   {'sacct wall':>10} {'sacct cpu':>10}   "
          f"{'own wall':>9} {'own cpu':>8}   (median / max, seconds)")
    for phase in ("running", "finished"):
        chosen = [r for r in rows if r["phase"] == phase]
        if not chosen:
            continue

        def fig(key, chosen=chosen):
            values = [r[key] for r in chosen]
            return f"{statistics.median(values):.3f}/{max(values):.3f}"
        print(f"  {phase:9} {len(chosen):>5} {max(r['records'] for r in chosen):>8}   {fig('sacct_wall'):>10} "
              f"{fig('sacct_cpu'):>10}   {fig('own_wall'):>9} {fig('own_cpu'):>8}")


# --------------------------------------------------------------------------- log matching

def synthetic_logs(directory: Path, total_mb: int, files: int = 64) -> list[Path]:
    rng = random.Random(1)
    per_file = total_mb * (1 << 20) // files
    paths = []
    for k in range(files):
        lines, size, step = [], 0, 0
        while size < per_file:
            step += 1
            if step % 500 == 0:
                line = f"saved checkpoint /scratch/ck/run{k}/step_{step}\n"
            elif step % 97 == 0:
                line = f"[rank0] data loader: shard {rng.randrange(1000)} ready, {rng.random():.3f}s\n"
            else:
                line = (f"step {step} | loss: {rng.uniform(0.1, 3):.4f} | lr: {rng.uniform(1e-5, 1e-4):.3e} | "
                        f"grad_norm: {rng.uniform(0.1, 10):.3f} | tokens/s: {rng.randrange(10000, 90000)}\n")
            lines.append(line)
            size += len(line)
        path = directory / f"run{k}.out"
        path.write_text("".join(lines))
        paths.append(path)
    return paths


def log_matching(directory: Path, total_mb: int) -> None:
    paths = synthetic_logs(directory, total_mb)
    size = sum(p.stat().st_size for p in paths) / (1 << 20)
    rules = logwatch.Rules.from_monitor({"events": EVENTS, "metrics": METRICS})
    for path in paths:  # warm the page cache for both sides
        path.read_bytes()
    start = time.perf_counter()
    events = 0
    for path in paths:
        events += len(logwatch.scan(model.new_log_cursor(path), rules, final=True).events)
    ours = time.perf_counter() - start
    print(f"\nlog matching, {size:.0f} MB in {len(paths)} logs, {len(EVENTS)} events + {len(METRICS)} metric "
          f"({events} events found):")
    print(f"  autoexp.logwatch         {size / ours:8.0f} MB/s  ({ours:.2f} s)")
    argv = ["grep", "-E", "-c", *[w for p in GREP for w in ("-e", p)], *map(str, paths)]
    for label, env in (("grep -E -c", os.environ), ("grep -E -c, LC_ALL=C", {**os.environ, "LC_ALL": "C"})):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, env=env)
        grep = time.perf_counter() - start
        print(f"  {label:23}  {size / grep:8.0f} MB/s  ({grep:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--after", type=int, default=3, help="polls once every run has ended")
    parser.add_argument("--run-for", type=float, default=600, help="cancel tasks still waiting after this")
    parser.add_argument("--log-mb", type=int, default=256)
    parser.add_argument("--keep", type=Path, help="keep the experiments here (default: a temporary dir)")
    parser.add_argument("--held", type=int, nargs="*", default=[10000, 100000])
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure-held", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.after, every=2.0, run_for=args.run_for)
    if args.measure_held:
        return held(args.measure_held, Path(os.environ["BENCH_SHIM_COUNT"]))
    if not shutil.which("sacct"):
        sys.exit("sacct is not on PATH: run cluster/setup.sh first")
    base = Path(args.keep or tempfile.mkdtemp(prefix="bench-sidecar-"))
    base.mkdir(parents=True, exist_ok=True)
    shim = base / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sacct").write_text(SHIM.format(count=base / "sacct-calls", real=shutil.which("sacct")))
    (shim / "sacct").chmod(0o755)
    os.environ["BENCH_REAL_SACCT"] = shutil.which("sacct") or "sacct"
    os.environ["PATH"] = f"{shim}:{os.environ['PATH']}"
    try:
        for n in args.held:
            report_held(n, held_figures(base, n, base / "sacct-calls"))
        for n in args.sizes:
            exp_dir = launch(base, n)
            report_polls(n, poll_figures(exp_dir, args.after, args.run_for, base / "sacct-calls"))
        if args.log_mb:
            logs = base / "logs"
            logs.mkdir(exist_ok=True)
            log_matching(logs, args.log_mb)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
