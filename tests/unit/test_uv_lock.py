"""uv.lock matches pyproject.toml, and every install uses the same pinned uv."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pinned_uv() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    required: str = pyproject["tool"]["uv"]["required-version"]
    assert required.startswith("=="), "uv is pinned to one exact version"
    return required.removeprefix("==")


def test_uv_lock_is_up_to_date() -> None:
    # `make venv` installs the pinned uv into .tools/; elsewhere a uv on PATH is used.
    uv = ROOT / ".tools" / "bin" / "uv"
    found = str(uv) if uv.exists() else shutil.which("uv")
    if found is None:
        pytest.skip("no uv: run `make venv`")
    result = subprocess.run(
        [found, "lock", "--check", "--no-python-downloads"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, (
        f"uv.lock is out of date with pyproject.toml: run `make lock`\n{result.stderr}"
    )


def test_uv_version_is_the_same_everywhere() -> None:
    version = _pinned_uv()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(rf"^UV_VERSION := {re.escape(version)}$", makefile, re.MULTILINE)
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    assert re.findall(r"uv==([0-9.]+)", dockerfile) == [version]
