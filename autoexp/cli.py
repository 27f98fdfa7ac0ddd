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
        p.add_argument("config", help="the experiment's YAML config")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override a config key (value is YAML)")
        p.add_argument("--site", help="site config when the file names none")
        p.add_argument("--scheduler", choices=("slurm", "local"), help="default: slurm if sbatch is on PATH")
        if name == "launch":
            p.add_argument("--dry-run", action="store_true", help="print what would be submitted")

    p = add("sidecar", "what the sidecar job runs: poll until every run is finished")
    p.add_argument("exp", help="experiment directory or name")
    p.add_argument("--once", action="store_true", help="one poll, then exit")
    return parser


def _load(args):
    from .experiment import load_config

    return load_config(args.config, args.overrides, site=args.site)


def cmd_plan(args) -> int:
    from .experiment import plan

    built = plan(_load(args), scheduler=args.scheduler)
    print(f"planned {len(built.runs)} runs in {built.exp_dir}")
    for array in built.arrays:
        print(f"  {array.script}: --array={array.spec}")
    return 0


def cmd_launch(args) -> int:
    from . import scheduler
    from .experiment import launch

    config = _load(args)
    if not args.scheduler and scheduler.default_name() == "local":
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


def cmd_sidecar(args) -> int:
    from .experiment import find
    from .sidecar import run

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
