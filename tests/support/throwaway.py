"""Servers of a test's own (PostgreSQL, Redis, Kafka), so the test can stop and restart them.

Stopping the shared stack's servers would break the tests running beside it; these are the
same real servers from the same binaries and jars, on their own ports and data directories.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not found:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql (run make stack)")
    return Path(found[-1])


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class ThrowawayPostgres:
    """``settings`` are extra server settings (``-c name=value``), e.g. ``ssl=on``."""

    port: int
    data: Path
    bindir: Path
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
            timeout=60,
            cwd="/",
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        opts += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._ctl("-o", opts, "-l", str(self.data.parent / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")

    def reload(self) -> None:
        """Re-read pg_hba.conf (and the other reloadable files) without a restart."""
        self._ctl("reload")


@contextmanager
def throwaway_postgres(
    port: int, settings: Mapping[str, str] | None = None
) -> Iterator[ThrowawayPostgres]:
    root = Path(tempfile.mkdtemp(prefix="optout-pg-", dir="/var/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    bindir = _bindir()
    subprocess.run(
        _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
        timeout=120,
        cwd="/",
    )
    instance = ThrowawayPostgres(port=port, data=data, bindir=bindir, settings=settings or {})
    instance.start()
    try:
        yield instance
    finally:
        with suppress(subprocess.CalledProcessError):
            instance.stop()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for_port(
    port: int, process: subprocess.Popen[bytes], name: str, *, within_s: float
) -> None:
    """Return once the server accepts connections; fail fast if its process died."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            raise RuntimeError(f"throwaway {name} exited")
        time.sleep(0.05)
    raise RuntimeError(f"throwaway {name} did not start")


@dataclass
class ThrowawayRedis:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process, "redis", within_s=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@contextmanager
def throwaway_redis(port: int) -> Iterator[ThrowawayRedis]:
    directory = Path(tempfile.mkdtemp(prefix="optout-redis-"))
    instance = ThrowawayRedis(port=port, directory=directory)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class ThrowawayRedisCluster:
    """Three primaries, no replicas: every hash slot has an owner, so the cluster answers
    ``cluster_state:ok`` and the client spreads keys over three servers as in production.

    Each node gets its cluster-bus port explicitly (``--cluster-port``): the default, port +
    10000, can fall outside the port range for the ephemeral ports tests pick.
    """

    ports: Sequence[int]
    bus_ports: Sequence[int]
    directory: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
            node_dir = self.directory / str(port)
            node_dir.mkdir()
            process = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    str(bus_port),
                    "--cluster-config-file",
                    str(node_dir / "nodes.conf"),
                    "--cluster-node-timeout",
                    "5000",
                    "--dir",
                    str(node_dir),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.processes.append(process)
            _wait_for_port(port, process, "redis cluster node", within_s=10)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self._wait_until_ok(within_s=30)

    def _wait_until_ok(self, *, within_s: float) -> None:
        """Slots are assigned at once, but each node must also see the others before it
        serves keys: wait until every node reports the cluster healthy."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if all(self._state_ok(port) for port in self.ports):
                return
            time.sleep(0.1)
        raise RuntimeError("throwaway redis cluster did not reach cluster_state:ok")

    @staticmethod
    def _state_ok(port: int) -> bool:
        found = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "cluster", "info"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return "cluster_state:ok" in found.stdout

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(10)
        self.processes = []


@contextmanager
def throwaway_redis_cluster(
    ports: Sequence[int], bus_ports: Sequence[int]
) -> Iterator[ThrowawayRedisCluster]:
    directory = Path(tempfile.mkdtemp(prefix="optout-redis-cluster-"))
    instance = ThrowawayRedisCluster(ports=ports, bus_ports=bus_ports, directory=directory)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(directory, ignore_errors=True)


def _kafka_libs() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    libs = Path(os.environ.get("OPTOUT_KAFKA_LIBS", cache / "optout/kafka-4.1.1/libs"))
    if not libs.is_dir():
        raise RuntimeError(f"no Kafka jars at {libs} (run make stack)")
    return libs


@dataclass
class ThrowawayKafka:
    """A second single-node KRaft broker, so a test can stop and restart Kafka."""

    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, *args: str) -> list[str]:
        return [
            "java",
            "-Xms128m",
            "-Xmx384m",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp",
            f"{_kafka_libs()}/*",
            *args,
        ]

    def listener_properties(self) -> list[str]:
        """The client listener; a secured variant overrides this."""
        return [
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        ]

    def format_arguments(self) -> list[str]:
        """Extra arguments of the storage tool's ``format`` (e.g. SCRAM credentials)."""
        return []

    def format(self) -> None:
        props = self.directory / "server.properties"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}",
                    *self.listener_properties(),
                    "controller.listener.names=CONTROLLER",
                    f"log.dirs={self.directory / 'data'}",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=false",
                    "log.cleaner.dedupe.buffer.size=2097152",
                ]
            )
            + "\n"
        )
        (self.directory / "log4j2.properties").write_text(
            "rootLogger.level = WARN\nrootLogger.appenderRef.stdout.ref = STDOUT\n"
            "appender.console.type = Console\nappender.console.name = STDOUT\n"
            "appender.console.layout.type = PatternLayout\n"
            "appender.console.layout.pattern = %p %m%n\n"
        )
        subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                "dGhyb3dhd2F5LWthZmthMQ",
                "-c",
                str(props),
                *self.format_arguments(),
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        log = open(self.directory / "kafka.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            self._java("kafka.Kafka", str(self.directory / "server.properties")),
            stdout=log,
            stderr=log,
        )
        _wait_for_port(self.port, self.process, "kafka", within_s=60)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
            self.process = None


@contextmanager
def throwaway_kafka(port: int, controller_port: int) -> Iterator[ThrowawayKafka]:
    directory = Path(tempfile.mkdtemp(prefix="optout-kafka-"))
    instance = ThrowawayKafka(port=port, controller_port=controller_port, directory=directory)
    instance.format()
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(directory, ignore_errors=True)
