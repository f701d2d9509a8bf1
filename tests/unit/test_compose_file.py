"""docker-compose.yml describes the same stack as the settings expect."""

from __future__ import annotations

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
