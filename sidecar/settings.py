"""What the sidecar needs from the experiment's resolved config.yaml, read once when it starts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import stages
from ..config import Config
from ..durations import parse_duration, slurm_time_seconds
from ..model import Run
from . import logwatch


@dataclass
class Settings:
    """What the sidecar needs from the experiment's resolved config.yaml."""

    interval: float = 60.0
    rules: logwatch.Rules = field(default_factory=logwatch.Rules)
    stall_after: float | None = None
    stall_action: str = "log"
    retry_max: int = 0
    retry_on: frozenset = frozenset()
    retry_rules: dict = field(default_factory=dict)  # failure class -> what the next attempt gets
    base: dict = field(default_factory=dict)  # slurm.mem, slurm.time and slurm.partition as planned
    mode: str = "job"
    handover: float = 300.0
    watchdog: float = 600.0  # carried mode: seconds between the watchdog jobs (sidecar.watchdog)
    time_limit: float | None = None  # sidecar.time in seconds
    mail: bool = False
    report_metric: str | None = None  # report.metric: what report.html ranks the runs by
    report_goal: str = "min"
    report_every: float = 300.0  # report.every: how often report.html is rewritten while runs change
    stages: dict[str, Settings] = field(default_factory=dict)  # a staged experiment: each stage's own

    def of(self, run: Run) -> Settings:
        """The settings that apply to a run: its stage's monitor rules and retries, if it has one."""
        return self.stages.get(run.get("stage") or "", self)

    def any_rules(self) -> bool:
        return any(s.rules or s.stall_after for s in (self, *self.stages.values()))

    def monitoring(self, monitor: dict) -> Settings:
        """A copy with ``monitor``'s log rules, stall watch and retries (a stage's own)."""
        retries = monitor.get("retries") or {}
        return replace(self, rules=logwatch.Rules.from_monitor(monitor),
                       stall_after=parse_duration(monitor["stall_after"]) if monitor.get("stall_after") else None,
                       stall_action=monitor.get("stall_action") or "log",
                       retry_max=int(retries.get("max") or 0),
                       retry_on=frozenset(s.upper() for s in [*(retries.get("on") or []),
                                                               *(retries.get("rules") or {})]),
                       retry_rules=dict(retries.get("rules") or {}), stages={})

    @classmethod
    def load(cls, exp_dir: Path, data: dict | None = None) -> Settings:
        """``data``: the experiment's config when the caller has it already (launch), else read."""
        data = data if data is not None else Config.from_experiment(Path(exp_dir)).data
        monitor = data.get("monitor") or {}
        sidecar = data.get("sidecar") or {}
        retries = monitor.get("retries") or {}
        limit = str(sidecar.get("time") or "")
        report = data.get("report") or {}
        loaded = cls(
            interval=float(monitor.get("interval") or 60),
            rules=logwatch.Rules.from_monitor(monitor),
            stall_after=parse_duration(monitor["stall_after"]) if monitor.get("stall_after") else None,
            stall_action=monitor.get("stall_action") or "log",
            retry_max=int(retries.get("max") or 0),
            retry_on=frozenset(s.upper() for s in [*(retries.get("on") or []), *(retries.get("rules") or {})]),
            retry_rules=dict(retries.get("rules") or {}),
            base={k: str(v) for k, v in (data.get("slurm") or {}).items() if k in ("mem", "time", "partition") and v},
            mode=sidecar.get("mode") or "job",
            handover=parse_duration(sidecar.get("handover") or "5m"),
            watchdog=parse_duration(sidecar["watchdog"]) if sidecar.get("watchdog")
            else 10 * float(monitor.get("interval") or 60),
            time_limit=slurm_time_seconds(limit),
            mail=bool((data.get("notify") or {}).get("mail")),
            report_metric=report.get("metric"),
            report_goal=report.get("goal") or "min",
            report_every=parse_duration(report.get("every") or "5m"),
        )
        names = [*(["prepare"] if data.get("prepare") else []), *(data.get("stages") or {})]
        loaded.stages = {name: loaded.monitoring(stages.settings(data, name)["monitor"] or {}) for name in names}
        return loaded

