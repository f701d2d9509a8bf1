"""Kafka Connect and the Debezium connectors' jars, fetched once by Maven into a cache.

The pom and settings beside this file pin every version; the jars land in ``.stack/peer/libs``
(or ``BENCH_PEER_LIBS``), marked complete by a stamp named after the pom's digest, so a
second run fetches nothing and a changed pom fetches again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
POM = HERE / "pom.xml"
MAVEN_SETTINGS = HERE / "settings.xml"


def libs_dir() -> Path:
    return Path(os.environ.get("BENCH_PEER_LIBS", ROOT / ".stack" / "peer" / "libs"))


def _stamp(libs: Path) -> Path:
    digest = hashlib.sha256(POM.read_bytes() + MAVEN_SETTINGS.read_bytes()).hexdigest()[:16]
    return libs / f".complete-{digest}"


def missing_tools() -> list[str]:
    """The programs the peer needs that are not on PATH (Java 17 runs it, Maven fetches it)."""
    return [tool for tool in ("java", "mvn") if shutil.which(tool) is None]


def ensure_jars(log: Path) -> Path:
    """The directory holding every jar of the peer's classpath; fetched if not complete."""
    libs = libs_dir()
    if _stamp(libs).exists():
        return libs
    if missing := missing_tools():
        raise RuntimeError(f"the peer benchmark needs {', '.join(missing)} (Java 17 and Maven)")
    partial = libs.with_name(libs.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        done = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-s",
                str(MAVEN_SETTINGS),
                "-f",
                str(POM),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={partial}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"mvn could not fetch the peer's jars (see {log})")
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    _stamp(libs).touch()
    return libs
