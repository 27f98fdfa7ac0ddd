"""autoexp: launch a sweep as one Slurm job array and let a sidecar job keep its state true."""

from .errors import AutoexpError, InputError, SchedulerError
from .experiment import (LaunchResult, cancel, experiments, find, launch, load_config, plan_experiment, resume, retry,
                         status)
from .run import NotInRunError, current_run
from .runlogs import log_path, logs
from .sweepview import metrics, write_report

__all__ = ["AutoexpError", "Config", "InputError", "LaunchResult", "NotInRunError", "RunFailed", "SchedulerError",
           "cancel", "current_run", "experiments", "find", "launch", "launch_directory", "launch_function",
           "load_config", "log_path", "logs", "metrics", "plan_experiment", "results", "resume", "retry", "status",
           "write_report"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Config is imported on first use: `autoexp status` must not pay for yaml (nor plan for jinja2).
    if name == "Config":
        from .config import Config

        return Config
    if name == "launch_directory":  # a scaffolded experiment directory, as it is
        from .scaffoldplan import launch_directory

        return launch_directory
    # Not imported with the package: `python -m autoexp.functions` runs it as the task's main module.
    if name in ("launch_function", "results", "RunFailed"):
        from . import functions

        return getattr(functions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
