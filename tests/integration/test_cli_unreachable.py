"""CLI commands facing a dependency that does not answer: one line naming it, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.settings import Settings
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

OPTOUT = str(Path(sys.executable).with_name("optout"))


def run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.as_environment()}
    return subprocess.run(
        [OPTOUT, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.mark.parametrize(
    ("setting", "url", "args", "named"),
    [
        ("database_url", "postgresql://u:p@127.0.0.1:{port}/db", ["migrate"], "PostgreSQL"),
        ("redis_url", "redis://127.0.0.1:{port}/0", ["check", "u1", "reminders", "sms"], "Redis"),
        (
            "database_url",
            "postgresql://u:p@127.0.0.1:{port}/db",
            ["check", "never-seen", "reminders", "sms"],
            "PostgreSQL",
        ),
        ("database_url", "postgresql://u:p@127.0.0.1:{port}/db", ["history", "u1"], "PostgreSQL"),
    ],
)
def test_one_line_naming_the_dependency(
    settings: Settings, setting: str, url: str, args: list[str], named: str
) -> None:
    port = free_port()
    broken = settings.model_copy(update={setting: SecretStr(url.format(port=port))})
    answer = run(broken, *args)
    assert answer.returncode == 1, answer.stderr
    lines = answer.stderr.strip().splitlines()
    assert len(lines) == 1, answer.stderr
    assert lines[0].startswith(f"optout {args[0]}: {named} at 127.0.0.1:{port} did not answer (")
    assert "u:p" not in answer.stderr
