"""`optout worker --processes N`: N worker processes in one consumer group, one per core.

Python runs one thread of bytecode at a time, so one worker process uses one core however
many lanes it runs. N processes join the same consumer group and share the partitions (each
process owns its partitions alone, so the per-subject order and the offset discipline are
those of a single worker). Process i serves its health and metrics on `OPTOUT_ADMIN_PORT + i`
(or a free port each when the port is 0).

The supervisor does not restart a process that dies: it stops the others and exits with that
process's status, so the orchestrator that restarts containers sees the failure. SIGTERM and
SIGINT are passed on to every process, which each drain their batch in flight as one worker
does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

import structlog

log = structlog.get_logger(__name__)

_START = "from service.entrypoints.cli import app; app()"


def run_processes(count: int, admin_port: int) -> int:
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(count):
        env = dict(os.environ)
        env["OPTOUT_ADMIN_PORT"] = str(admin_port + index if admin_port else 0)
        if env.get("OPTOUT_CONSUMER_INSTANCE_ID"):  # static membership: one id per process
            env["OPTOUT_CONSUMER_INSTANCE_ID"] += f"-{index}"
        children.append(subprocess.Popen([sys.executable, "-c", _START, "worker"], env=env))  # noqa: S603
    log.info("worker_processes_started", processes=count, pids=[c.pid for c in children])
    status = 0
    while any(child.poll() is None for child in children):
        for child in children:
            code = child.poll()
            if code is not None and code != 0 and not stopping:
                log.error("worker_process_exited", pid=child.pid, status=code)
                status = status or code
                forward(signal.SIGTERM, None)
        time.sleep(0.2)
    for child in children:
        status = status or (child.returncode if child.returncode and child.returncode > 0 else 0)
    log.info("worker_processes_stopped", status=status)
    return status
