"""Launch cost on the real cluster: autoexp (plan, launch, sbatch calls) beside one sbatch per run
and beside submitit's ``map_array`` over as many trivial calls.

    python bench/launch.py [--sizes 100 1000 10000] [--baseline-max 10000] [--submitit-max 100000]

"plan" is `autoexp.plan_experiment` alone (render and write the directory); "launch" is the whole
of `autoexp.launch` from a loaded config: plan, write, read the site's limits, submit, record.
Every job is submitted held (--hold) and cancelled right after it is counted, so nothing runs.
The baselines are what users do without autoexp: a loop of `sbatch run.slurm`, one per run, and
submitit's `executor.map_array(fn, range(N))` (a peer that also submits arrays; it pickles each call).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import autoexp

SHIM = """#!/bin/bash
echo x >> {count}
exec {real} "$@"
"""


def count_sbatch(tmp: Path) -> Path:
    """Put a counting sbatch first on PATH; returns the file that gets one line per call."""
    real = shutil.which("sbatch")
    if not real:
        sys.exit("sbatch not on PATH: run cluster/setup.sh first")
    shim_dir = tmp / "shim"
    shim_dir.mkdir()
    count = tmp / "sbatch-calls"
    (shim_dir / "sbatch").write_text(SHIM.format(count=count, real=real))
    (shim_dir / "sbatch").chmod(0o755)
    os.environ["PATH"] = f"{shim_dir}:{os.environ['PATH']}"
    return count


def calls(count: Path) -> int:
    n = len(count.read_text().splitlines()) if count.exists() else 0
    count.unlink(missing_ok=True)
    return n


def config(tmp: Path, name: str, n: int) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "output_dir": str(tmp / "exp"), "command": "echo {{ i }}", "max_parallel": 16,
        "sweep": {"grid": {"i": list(range(n))}}, "slurm": {"hold": True, "time": "00:05:00"},
        "sidecar": {"hold": True}}))
    return path


def cancel(job_ids: list[str]) -> None:
    for start in range(0, len(job_ids), 500):
        subprocess.run(["scancel", *job_ids[start:start + 500]], capture_output=True, timeout=120)


def baseline(tmp: Path, n: int) -> tuple[float, list[str]]:
    """One `sbatch` per run, as in the seed workflow (without its 5 s stagger)."""
    script = tmp / "run.slurm"
    script.write_text("#!/bin/bash\n#SBATCH --hold\n#SBATCH --output=/dev/null\necho run\n")
    ids = []
    start = time.perf_counter()
    for _ in range(n):
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True,
                             timeout=60, check=True)
        ids.append(out.stdout.strip())
    return time.perf_counter() - start, ids


def submitit_baseline(tmp: Path, n: int) -> tuple[float, list[str]]:
    """submitit's ``map_array`` over ``n`` trivial calls, held; its time and its array job ids."""
    import submitit

    executor = submitit.SlurmExecutor(folder=tmp / f"submitit{n}")
    executor.update_parameters(time=5, array_parallelism=16, additional_parameters={"hold": True})
    start = time.perf_counter()
    jobs = executor.map_array(abs, range(n))
    took = time.perf_counter() - start
    return took, sorted({job.job_id.split("_")[0] for job in jobs})


def measured(way, tmp: Path, n: int, count: Path, width: int) -> str:
    """A baseline's columns: its time and its sbatch calls (its jobs cancelled once counted)."""
    took, ids = way(tmp, n)
    made = calls(count)
    cancel(ids)
    return f"{took:>{width}.2f} | {made:>12}"


def skipped(width: int) -> str:
    return f"{'skipped':>{width}} | {'-':>12}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--baseline-max", type=int, default=10000,
                        help="skip the one-sbatch-per-run baseline above this N")
    parser.add_argument("--submitit-max", type=int, default=100000, help="skip submitit's map_array above this N")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="autoexp-bench-"))
    count = count_sbatch(tmp)
    print(f"{'N':>6} | {'plan s':>7} | {'launch s':>8} | {'sbatch calls':>12} | "
          f"{'1 sbatch/run s':>14} | {'sbatch calls':>12} | {'submitit map_array s':>20} | {'sbatch calls':>12}")
    try:
        for n in args.sizes:
            start = time.perf_counter()
            autoexp.plan_experiment(autoexp.load_config(config(tmp, f"plan{n}", n)), scheduler="slurm")
            plan_s = time.perf_counter() - start
            calls(count)

            start = time.perf_counter()
            result = autoexp.launch(autoexp.load_config(config(tmp, f"launch{n}", n)), scheduler="slurm")
            launch_s = time.perf_counter() - start
            launch_calls = calls(count)
            cancel([*result.arrays, result.sidecar])

            base = measured(baseline, tmp, n, count, 14) if n <= args.baseline_max else skipped(14)
            peer = measured(submitit_baseline, tmp, n, count, 20) if n <= args.submitit_max else skipped(20)
            print(f"{n:>6} | {plan_s:>7.2f} | {launch_s:>8.2f} | {launch_calls:>12} | {base} | {peer}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
