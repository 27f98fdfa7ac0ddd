"""What the sidecar needs from the experiment's resolved config.yaml, read once when it starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..durations import parse_duration, slurm_time_seconds
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
    time_limit: float | None = None  # sidecar.time in seconds
    mail: bool = False
    report_metric: str | None = None  # report.metric: what report.html ranks the runs by
    report_goal: str = "min"
    report_every: float = 300.0  # report.every: how often report.html is rewritten while runs change

    @classmethod
    def load(cls, exp_dir: Path) -> Settings:
        data = Config.from_experiment(Path(exp_dir)).data
        monitor = data.get("monitor") or {}
        sidecar = data.get("sidecar") or {}
        retries = monitor.get("retries") or {}
        limit = str(sidecar.get("time") or "")
        report = data.get("report") or {}
        return cls(
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
            time_limit=slurm_time_seconds(limit),
            mail=bool((data.get("notify") or {}).get("mail")),
            report_metric=report.get("metric"),
            report_goal=report.get("goal") or "min",
            report_every=parse_duration(report.get("every") or "5m"),
        )

