"""autoexp: launch a sweep as one Slurm job array and let a sidecar job keep its state true."""

from .config import Config
from .errors import AutoexpError, InputError, SchedulerError
from .experiment import LaunchResult, find, launch, load_config, plan

__all__ = ["AutoexpError", "Config", "InputError", "LaunchResult", "SchedulerError", "find", "launch",
           "load_config", "plan"]
__version__ = "0.1.0"
