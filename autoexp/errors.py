"""The two kinds of failure a user sees, each mapped to the exit status the contract promises."""


class AutoexpError(Exception):
    """A failure that is not the user's input: a refused submission, a dead scheduler (exit 1)."""

    exit_status = 1


class InputError(AutoexpError):
    """Bad input: a config, an argument, an unknown experiment or run (exit 2, nothing changed).

    The message is one line that names where the problem is: ``file: key.path: what is wrong``.
    """

    exit_status = 2

    def __init__(self, message: str, source: str = "", key: str = ""):
        self.source, self.key, self.reason = source, key, message
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class SchedulerError(AutoexpError):
    """The scheduler refused or failed a call; carries its stderr for the message."""


class SchedulerTimeout(SchedulerError):
    """The scheduler did not answer in time: what it was asked may or may not have been done (a
    timed-out sbatch is "unknown", not "refused")."""


class SchedulerFull(SchedulerError):
    """The scheduler refused a submission for a limit on queued jobs: no room now, not a failure
    (the sidecar submits the runs when tasks have left the queue)."""
