"""One Kafka Connect standalone worker, driven over its REST API.

Standalone mode keeps source offsets in a file (here in a temporary directory) and needs no
config or status topics, so the peer leaves nothing on the shared broker but the topics and
consumer groups the benchmark names itself. Connectors are added and removed over REST, so
one JVM serves every trial. The worker's log goes to ``bench-results/peer-connect.log``;
lines that say when a sink task got its partitions are stamped as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import end_process, free_port

_ASSIGNED = "Adding newly assigned partitions"

_LOG4J = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.runtime.name = org.apache.kafka.connect.runtime
logger.runtime.level = INFO
logger.rest.name = org.apache.kafka.connect.runtime.rest.RestServer
logger.rest.level = WARN
logger.assigned.name = org.apache.kafka.clients.consumer.internals.ConsumerRebalanceListenerInvoker
logger.assigned.level = INFO
logger.debezium.name = io.debezium
logger.debezium.level = INFO
"""


class ConnectError(RuntimeError):
    """The worker or one of its connectors failed; the message names where to look."""


@dataclass
class ConnectWorker:
    libs: Path
    log_path: Path
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="peer-connect-")))
    rest_port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    assignments: list[tuple[float, str]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def _worker_properties(self, bootstrap: str) -> str:
        return "\n".join(
            [
                f"bootstrap.servers={bootstrap}",
                "key.converter=org.apache.kafka.connect.storage.StringConverter",
                "value.converter=org.apache.kafka.connect.json.JsonConverter",
                "value.converter.schemas.enable=true",
                f"offset.storage.file.filename={self.directory / 'offsets'}",
                # Sink offsets are committed this often: the drain's end is read from the
                # committed offsets, so this bounds how late that end is seen.
                "offset.flush.interval.ms=100",
                f"listeners=http://127.0.0.1:{self.rest_port}",
                # The connectors' jars declare their plugins (META-INF/services): no scan.
                "plugin.discovery=service_load",
                # Lets a connector set its own consumer's max.poll.records (its batch size).
                "connector.client.config.override.policy=All",
                "",
            ]
        )

    async def start(self, bootstrap: str, *, within_s: float = 120) -> None:
        (self.directory / "worker.properties").write_text(self._worker_properties(bootstrap))
        (self.directory / "log4j2.properties").write_text(_LOG4J)
        self.proc = await asyncio.create_subprocess_exec(
            "java",
            "-Xms256m",
            "-Xmx2g",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp",
            f"{self.libs}/*",
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(self.directory / "worker.properties"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read_log())
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise ConnectError(f"Kafka Connect exited (see {self.log_path})")
            with contextlib.suppress(OSError, ConnectError):
                await self.rest("GET", "/connectors")
                return
            await asyncio.sleep(0.25)
        raise ConnectError(f"Kafka Connect did not answer within {within_s:g} s")

    async def _read_log(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as out:
            while line := await self.proc.stdout.readline():
                out.write(line)
                if _ASSIGNED.encode() in line:
                    self.assignments.append((time.perf_counter(), line.decode(errors="replace")))

    async def rest(self, method: str, path: str, body: Any = None) -> Any:
        """One REST call; JSON in and out. Raises ConnectError on an HTTP error status."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # the worker's own loopback address
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )

        def call() -> Any:
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                # Connect's own error document: a config problem names the setting at fault.
                reason = ""
                with contextlib.suppress(Exception):
                    reason = ": " + str(json.loads(exc.read()).get("message", ""))[:300]
                raise ConnectError(f"{method} {path}: HTTP {exc.code}{reason}") from None
            return json.loads(raw) if raw else None

        return await asyncio.to_thread(call)

    async def create(self, name: str, config: dict[str, str]) -> None:
        await self.rest("POST", "/connectors", {"name": name, "config": config})

    async def delete(self, name: str) -> None:
        with contextlib.suppress(ConnectError, OSError):
            await self.rest("DELETE", f"/connectors/{name}")

    async def wait_running(self, name: str, tasks: int, *, within_s: float = 60) -> None:
        """Until the connector and its tasks run; a failed task raises at once."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                status = await self.rest("GET", f"/connectors/{name}/status")
            except ConnectError:  # 404 until the connector is created
                status = None
            if status is not None:
                self.check(status, name)
                states = [t["state"] for t in status.get("tasks", [])]
                if status["connector"]["state"] == "RUNNING" and states.count("RUNNING") >= tasks:
                    return
            await asyncio.sleep(0.1)
        raise ConnectError(f"connector {name} not running within {within_s:g} s")

    async def failed(self, name: str) -> str | None:
        """The first failed task's error class, or None while every task runs."""
        try:
            status = await self.rest("GET", f"/connectors/{name}/status")
        except ConnectError:
            return None
        for task in status.get("tasks", []):
            if task.get("state") == "FAILED":
                return _first_line(task.get("trace", ""))
        return None

    def check(self, status: dict[str, Any], name: str) -> None:
        for task in status.get("tasks", []):
            if task.get("state") == "FAILED":
                raise ConnectError(
                    f"connector {name}: task failed: {_first_line(task.get('trace', ''))} "
                    f"(see {self.log_path})"
                )

    async def stop(self) -> None:
        """SIGTERM (connectors stop, offsets are flushed), SIGKILL if that takes too long."""
        if self.proc is not None:
            await end_process(self.proc, self._reader, grace_seconds=20)
        shutil.rmtree(self.directory, ignore_errors=True)


def _first_line(trace: str) -> str:
    """The exception class of a Java trace: its first line up to the message."""
    return trace.splitlines()[0].split(":", 1)[0] if trace else "unknown"
