"""Adapters name a failure as the dependency being unavailable or as a refusal of the data,
and /healthz follows liveness."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from aiokafka import errors as kafka_errors
from asyncpg.exceptions import _base as asyncpg_base
from redis import exceptions as redis_errors

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.producer import KafkaOutput
from service.adapters.postgres.errors import translate as translate_postgres
from service.adapters.redis_cache import translate as translate_redis
from service.application.errors import DependencyUnavailable, Refused, failure_name
from service.application.health import Liveness, Readiness
from service.entrypoints.http.admin import build_admin_app


def postgres_error(cls: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    return cls.new({"C": cls.sqlstate, "M": "a message quoting a value"})


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        asyncpg.InterfaceError("connection is closed"),
        postgres_error(asyncpg.CannotConnectNowError),
        postgres_error(asyncpg.ConnectionDoesNotExistError),
        postgres_error(asyncpg.DeadlockDetectedError),
        postgres_error(asyncpg.UndefinedTableError),
        postgres_error(asyncpg.TooManyConnectionsError),
    ],
)
def test_postgres_unavailable(exc: Exception) -> None:
    translated = translate_postgres(exc)
    assert isinstance(translated, DependencyUnavailable)
    assert translated.dependency == "postgresql"
    assert "quoting" not in translated.cause


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (
            postgres_error(asyncpg.UntranslatableCharacterError),
            "refused by PostgreSQL (SQLSTATE 22P05)",
        ),
        (postgres_error(asyncpg.CheckViolationError), "refused by PostgreSQL (SQLSTATE 23514)"),
        (postgres_error(asyncpg.RaiseError), "refused by PostgreSQL (SQLSTATE P0001)"),
        (asyncpg_base.DataError("bad argument"), "refused by the PostgreSQL driver (DataError)"),
    ],
)
def test_postgres_refusals(exc: Exception, failure: str) -> None:
    translated = translate_postgres(exc)
    assert isinstance(translated, Refused)
    assert translated.failure == failure
    assert failure_name(translated) == failure


def test_redis() -> None:
    assert isinstance(translate_redis(redis_errors.ConnectionError()), DependencyUnavailable)
    assert isinstance(translate_redis(redis_errors.BusyLoadingError()), DependencyUnavailable)
    refused = translate_redis(redis_errors.ResponseError("ERR something"))
    assert isinstance(refused, Refused)
    assert refused.failure == "refused by Redis (ResponseError)"
    other = ValueError()
    assert translate_redis(other) is other


async def test_kafka() -> None:
    output = KafkaOutput(KafkaConnection("127.0.0.1:1"))
    producer = output._producer
    refused = output._translate(producer, kafka_errors.MessageSizeTooLargeError())
    assert isinstance(refused, Refused)
    assert refused.failure == "refused by Kafka (MessageSizeTooLargeError)"
    # The producer was never started: its sender task does not exist, so it counts as broken.
    down = output._translate(producer, kafka_errors.KafkaConnectionError())
    assert isinstance(down, DependencyUnavailable)
    assert down.dependency == "kafka"
    await output.stop()


def test_unknown_failures_are_named_by_class_only() -> None:
    group = ExceptionGroup("lanes", [ValueError("secret value")])
    assert failure_name(group) == "failed with ValueError"


async def test_healthz_follows_liveness() -> None:
    liveness = Liveness()
    app = build_admin_app(Readiness(), liveness=liveness)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        assert (await http.get("/healthz")).status_code == 200
        liveness.fail("kafka producer could not be recreated (KafkaConnectionError)")
        failing = await http.get("/healthz")
        assert failing.status_code == 503
        assert failing.json()["reason"].startswith("kafka producer")
        liveness.recover()
        assert (await http.get("/healthz")).status_code == 200
