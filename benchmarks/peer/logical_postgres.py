"""A PostgreSQL server of the benchmark's own, with logical decoding on, for the CDC peer.

Change data capture needs ``wal_level=logical``; the shared server runs with ``minimal`` and
must not be restarted, so the benchmark starts its own from the same binaries, on its own
port and data directory, and removes it afterwards. Its other settings follow the shared
server's (deploy/local/stack), but for ``fsync=off``: the latency measured runs from a
commit's acknowledgement, which comes after the WAL flush as the change's streaming does, so
the flush lies outside the figure either way; on a disk shared with the rest of the stack it
would only cap the commit rate below the load asked for.
PostgreSQL refuses to run as root, so as root it runs as the postgres user, with its data
under /var/tmp where that user can reach it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "shared_buffers": "256MB",
    "wal_buffers": "16MB",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "15min",
    "wal_level": "logical",
    "max_wal_senders": "4",
    "max_replication_slots": "4",
    "fsync": "off",
}


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not found:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql (run make stack)")
    return Path(found[-1])


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str]) -> None:
    subprocess.run(_as_postgres(args), check=True, capture_output=True, timeout=120, cwd="/")


@dataclass(frozen=True)
class LogicalPostgres:
    port: int
    root: Path

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


@contextmanager
def logical_postgres(port: int) -> Iterator[LogicalPostgres]:
    root = Path(tempfile.mkdtemp(prefix="optout-peer-pg-", dir="/var/tmp"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    bindir = _bindir()
    pg_ctl = str(bindir / "pg_ctl")
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"])
        options = f"-p {port} -k {root}" + "".join(f" -c {k}={v}" for k, v in SETTINGS.items())
        _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"])
        yield LogicalPostgres(port=port, root=root)
    finally:
        if (data / "postmaster.pid").exists():
            with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)
