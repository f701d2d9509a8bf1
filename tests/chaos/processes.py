"""The service's processes as the suite runs them: workers to kill, and one HTTP API.

Workers are real `optout worker` processes (``tests.support.oracle.start_worker``); the API
is a real `optout api` process with a read token. Each writes its log under the run's
directory; nothing is stopped by name, only by the process handles kept here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.settings import Settings
from tests.support.oracle import start_worker, worker_env
from tests.support.ports import free_port

# Worker log events that say a batch did not go through, counted with their error type.
_TROUBLE = (
    "batch_failed_retrying",
    "offset_commit_failed",
    "batch_abandoned_after_revocation",
    "rebalance_abandons_batch",
)


def worker_trouble(log_dir: Path) -> dict[str, int]:
    """`event (error type)` → count, over every worker log of a run: the failures' names."""
    found: Counter[str] = Counter()
    for path in sorted(log_dir.glob("worker-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("event") in _TROUBLE:
                error = entry.get("error")
                found[f"{entry['event']} ({error})" if error else entry["event"]] += 1
    return dict(found.most_common())


def _stop(process: subprocess.Popen[bytes], within_s: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(within_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass
class WorkerPool:
    settings: Settings
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started: int = 0
    kills: int = 0

    def start(self, name: str | None = None) -> str:
        self.started += 1
        name = name or f"w{self.started}"
        self.processes[name] = start_worker(
            self.settings, self.log_dir / f"worker-{name}.log", free_port()
        )
        return name

    def live(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.poll() is None]

    def dead_unexpectedly(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.poll() is not None]

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        self.kills += 1

    def stop(self, name: str) -> None:
        _stop(self.processes.pop(name))

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.stop(name)


@dataclass
class ApiProcess:
    """`optout api` with one read token of every tenant; answers GET /v1/subjects/{id}/check."""

    settings: Settings
    log_dir: Path
    token: str
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = worker_env(self.settings)
        env["OPTOUT_HTTP_PORT"] = str(self.port)
        env["OPTOUT_ADMIN_PORT"] = str(self.admin_port)
        # Every tenant: each read names the tenant it asks about.
        env["OPTOUT_API_TOKENS"] = f"chaos:{self.token}:check:*"
        with open(self.log_dir / "api.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "service.entrypoints.cli", "api"],
                env=env,
                stdout=log,
                stderr=log,
                cwd=os.getcwd(),
            )

    async def start(self) -> None:
        self.process = self._spawn()
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError("optout api exited at start (see api.log)")
                try:
                    admin = f"http://127.0.0.1:{self.admin_port}/healthz"
                    if (await http.get(admin, timeout=1)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise RuntimeError("optout api did not answer /healthz within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None
