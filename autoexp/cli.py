"""The ``autoexp`` command: argument parsing and printing over the Python API, nothing more."""

from __future__ import annotations

import argparse
import sys

from .errors import AutoexpError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoexp", description=__doc__)
    parser.add_argument("--output-dir", help="where experiments live (default: $AUTOEXP_OUTPUT_DIR or ./experiments)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=globals()[f"cmd_{name}"])
        return p

    for name, text in (("plan", "write the experiment directory; submit nothing"),
                       ("launch", "plan, submit the array(s) and the sidecar, print ids, exit")):
        p = add(name, text)
        p.add_argument("config", help="the experiment's YAML config" + (
            ", or a scaffolded experiment directory, launched as it is" if name == "launch" else ""))
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a config key (value is YAML)")
        p.add_argument("--site", help="site config when the file names none")
        p.add_argument("--scheduler", choices=("slurm", "local"), help="default: slurm if sbatch is on PATH")
        if name == "launch":
            p.add_argument("--dry-run", action="store_true", help="print what would be submitted")

    def experiment_arg(p, optional=False):
        p.add_argument("exp", nargs="?" if optional else None, metavar="EXP",
                       help="experiment directory or name" + (" (default: the newest)" if optional else ""))
        p.add_argument("--output-dir", default=argparse.SUPPRESS, help="where experiments live")

    p = add("status", "show an experiment's runs and whether its sidecar is alive")
    experiment_arg(p, optional=True)
    p.add_argument("--json", action="store_true", help="print the state and its health as JSON")
    p.add_argument("--watch", action="store_true", help="redraw until every run has ended")
    p.add_argument("--every", type=float, default=2.0, metavar="SECONDS", help="--watch redraw interval")
    p.add_argument("--refresh", action="store_true", help="ask the scheduler once if no sidecar is alive")
    p.add_argument("--all", action="store_true", help="list every run, however many")
    p = add("list", "list the experiments under the output directory")
    p.add_argument("--output-dir", default=argparse.SUPPRESS, help="where experiments live")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    p = add("cancel", "cancel the whole experiment (arrays and sidecar), or some runs")
    experiment_arg(p)
    p.add_argument("runs", nargs="*", metavar="RUN", help="run names (or indices); none: everything")
    p = add("retry", "resubmit chosen runs as a new attempt")
    experiment_arg(p)
    p.add_argument("runs", nargs="*", metavar="RUN", help="run names (or indices)")
    p.add_argument("--failed", action="store_true", help="every failed run (not cancelled ones)")
    p = add("resume", "resubmit the sidecar if it is not alive")
    experiment_arg(p)
    p = add("logs", "show a run's log")
    experiment_arg(p)
    p.add_argument("run", metavar="RUN", help="run name (or index)")
    p.add_argument("stage", nargs="?", metavar="STAGE", help="a staged experiment: the stage's log "
                   "(with an axis, name the task: RUN eval+task=arc)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    p.add_argument("--attempt", type=int, metavar="N", help="that attempt's log (default: the latest)")

    p = add("metrics", "print every recorded metric value: run, attempt, metric, step, value")
    experiment_arg(p)
    form = p.add_mutually_exclusive_group()
    form.add_argument("--csv", action="store_true", help="as CSV, with a header line (the default)")
    form.add_argument("--json", action="store_true", help="as a JSON list of rows")
    p = add("report", "write report.html: metric curves, final values against parameters, ranking, timeline")
    experiment_arg(p)
    p.add_argument("--metric", help="the metric runs are ranked by (default: report.metric, else the first)")
    p.add_argument("--goal", choices=("min", "max"), help="lower or higher is better (default: report.goal, min)")

    p = add("sidecar", "what the sidecar job runs: poll until every run is finished")
    p.add_argument("exp", help="experiment directory or name")
    p.add_argument("--once", action="store_true", help="one poll, then exit")
    return parser


def _load(args):
    from .experiment import load_config

    return load_config(args.config, args.overrides, site=args.site)


def cmd_plan(args) -> int:
    from pathlib import Path

    from .errors import InputError
    from .experiment import plan_experiment

    if Path(args.config).is_dir():
        raise InputError("a scaffolded experiment directory is not planned but launched as it is "
                         "(`autoexp launch DIR --dry-run` shows what it would submit)", args.config)

    built = plan_experiment(_load(args), scheduler=args.scheduler)
    print(f"planned {len(built.runs)} runs in {built.exp_dir}")
    for array in built.arrays:
        spec = f"one array per poll that finds {array.trigger['event']} lines" if array.trigger else \
            f"--array={array.spec}"
        print(f"  {array.script}: {spec}")
    return 0


def cmd_launch(args) -> int:
    from pathlib import Path

    from .backends import default_name
    from .experiment import launch

    if Path(args.config).is_dir():
        return launch_directory(args)
    config = _load(args)
    if not args.scheduler and default_name() == "local":
        print("autoexp: sbatch is not on PATH; running the tasks on this machine (local scheduler)",
              file=sys.stderr)
    result = launch(config, dry_run=args.dry_run, scheduler=args.scheduler)
    if result.dry_run:
        print("dry run, nothing submitted:")
        print(result.text)
        return 0
    print(f"launched {config.name} ({result.scheduler}): array job(s) {', '.join(result.arrays)}, "
          f"sidecar job {result.sidecar}")
    print(f"  directory: {result.exp_dir}")
    print(f"  follow it: autoexp status {result.exp_dir}")
    return 0


def launch_directory(args) -> int:
    """``autoexp launch DIR``: a scaffolded experiment directory, as it is (autoexp/scaffoldplan.py)."""
    from .scaffoldplan import launch_directory

    result = launch_directory(args.config, args.overrides, site=args.site, dry_run=args.dry_run,
                              scheduler=args.scheduler)
    if result.dry_run or not result.sidecar:
        print("dry run, nothing submitted:" if result.dry_run else "nothing to submit:")
        print(result.text)
        return 0
    print(f"launched {result.exp_dir} ({result.scheduler}): array job(s) {', '.join(result.arrays)}, "
          f"sidecar job {result.sidecar}")
    print(f"  follow it: autoexp status {result.exp_dir}")
    return 0


def cmd_status(args) -> int:
    import gc
    import time

    from .experiment import find, status
    from .statusview import json_bytes, render, terminal_layout

    gc.disable()  # each read builds one big acyclic document: collecting would only walk it (20 ms)
    exp_dir = find(args.exp, args.output_dir)
    while True:
        raw: list[bytes] | None = [] if args.json else None  # --json copies the runs' text (statusview.json_text)
        doc = status(exp_dir, refresh=args.refresh, history=args.json, raw=raw)
        if raw:
            sys.stdout.buffer.write(json_bytes(doc, raw[-1]) + b"\n")
            sys.stdout.flush()
        else:
            colour, limit, width = terminal_layout(sys.stdout, args.all)
            text = render(doc, colour, limit, width)
            if args.watch and sys.stdout.isatty():  # in place: home, each line over the last, clear the rest
                text = "\033[H" + text.replace("\n", "\033[K\n") + "\033[J"
            sys.stdout.write(text)
            sys.stdout.flush()
        if not args.watch or doc["done"]:
            return 0
        time.sleep(args.every)


def json_text(data) -> str:
    import json

    return json.dumps(data)


def cmd_list(args) -> int:
    from .experiment import experiments, output_dir
    from .statusview import list_text

    found = experiments(args.output_dir)
    sys.stdout.write(json_text(found) + "\n" if args.json else list_text(found, output_dir(args.output_dir)))
    return 0


def _names(runs: list[str]) -> str:
    return f"{len(runs)} runs" if len(runs) > 5 else ", ".join(runs)


def cmd_cancel(args) -> int:
    from .experiment import cancel

    result = cancel(args.exp, args.runs, args.output_dir)
    print(f"cancelled {_names(result['runs'])} (scancel {' '.join(result['jobs']) or '-'})")
    if result["sidecar"]:
        print(f"cancelled the sidecar (job {result['sidecar']}); the experiment is finished")
    return 0


def cmd_retry(args) -> int:
    from .experiment import retry

    result = retry(args.exp, args.runs, args.failed, args.output_dir)
    if not result["runs"]:
        print("no failed runs: nothing to retry")
        return 0
    print(f"resubmitted {_names(result['runs'])} as array job(s) {', '.join(result['arrays'])}")
    if result["sidecar"]:
        print(f"no sidecar was alive: submitted sidecar job {result['sidecar']}")
    return 0


def cmd_resume(args) -> int:
    from .experiment import resume

    result = resume(args.exp, args.output_dir)
    job, watcher = result["sidecar"], result["watcher"]
    if result["submitted"]:
        print(f"submitted sidecar job {job}: no sidecar was alive")
    elif watcher == "finished":
        print("every run has ended: no sidecar needed, nothing to do")
    elif watcher == "alive":
        print(f"sidecar job {job} is alive: nothing to do")
    else:
        print(f"sidecar job {job} has not started yet ({watcher}): nothing to do")
    return 0


def cmd_logs(args) -> int:
    from .runlogs import logs

    logs(args.exp, args.run, attempt=args.attempt, follow=args.follow, output=args.output_dir, stage=args.stage)
    return 0


def cmd_metrics(args) -> int:
    from .history import to_csv
    from .sweepview import metrics

    rows = metrics(args.exp, args.output_dir)
    sys.stdout.write(json_text(rows) + "\n" if args.json else to_csv(iter(rows)))
    return 0


def cmd_report(args) -> int:
    from .sweepview import write_report

    print(write_report(args.exp, args.output_dir, metric=args.metric, goal=args.goal))
    return 0


def cmd_sidecar(args) -> int:
    import logging

    from .experiment import find
    from .sidecar import run

    # The sidecar job's output file is its log: every poll's line, and what went wrong.
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s", force=True)
    return run(find(args.exp, args.output_dir), once=args.once)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # KEY=VALUE overrides may come after options (`launch c.yaml --dry-run a=1`): argparse takes
    # positionals in one run only, so the stragglers are collected here.
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if "=" not in item or item.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.handler(args)
    except AutoexpError as err:
        print(f"autoexp: error: {err}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
