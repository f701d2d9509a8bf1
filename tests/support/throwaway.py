"""A PostgreSQL server of a test's own, so the test can stop and restart it.

Stopping the shared stack's server would break the tests running beside it; this one is a
real PostgreSQL from the same binaries, on its own port and data directory.
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


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not found:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql (run make stack)")
    return Path(found[-1])


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@dataclass
class ThrowawayPostgres:
    port: int
    data: Path
    bindir: Path

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", opts, "-l", str(self.data.parent / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")


@contextmanager
def throwaway_postgres(port: int) -> Iterator[ThrowawayPostgres]:
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
    )
    instance = ThrowawayPostgres(port=port, data=data, bindir=bindir)
    instance.start()
    try:
        yield instance
    finally:
        with suppress(subprocess.CalledProcessError):
            instance.stop()
        shutil.rmtree(root, ignore_errors=True)
