"""The sidecar: runs on a compute node and keeps the experiment's state true (issue 3 fills it)."""

from __future__ import annotations

import socket
from pathlib import Path

from . import state as statefile


def run(exp_dir: Path, once: bool = False) -> int:
    with statefile.locked(exp_dir) as st:
        st["sidecar"].update(host=socket.gethostname(), heartbeat=statefile.now())
        statefile.log(st, "SIDECAR_START", f"job {st['sidecar'].get('job_id')}", Host=socket.gethostname())
    return 0
