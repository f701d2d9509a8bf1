"""The SDK on read-only credentials, as a sender should run it: a PostgreSQL role that can only
``SELECT`` the service's schema and a Redis ACL user limited to reads (the definitions the
README gives), without ``OPTOUT_IDENTIFIER_KEY``. Checks are answered from Redis and, on a
miss, from PostgreSQL; the refill Redis refuses is skipped; a write through the same
credentials is refused (the positive control that they really are read-only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from service.client import OptoutClient
from service.settings import Settings
from tests.support.contract_client import ContractClient, command
from tests.support.services import Endpoints

pytestmark = pytest.mark.integration

PASSWORD = "sdk-read-only-0123456789abcdef"


def with_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


@pytest.fixture
async def read_only(
    settings: Settings, endpoints: Endpoints, unique: str
) -> AsyncIterator[Settings]:
    role, user = f"sdk_{unique}", f"sdk-{unique}"
    schema = settings.database_schema
    admin = await asyncpg.connect(endpoints.database_url)
    redis = Redis.from_url(endpoints.redis_url)
    try:
        # README "Least privilege for senders": the role and the ACL user, as documented.
        await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        await admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}')
        await admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO {role}')
        await redis.execute_command(
            "ACL", "SETUSER", user, "reset", "on", f">{PASSWORD}",
            f"~{settings.redis_prefix}:*", "+@read", "+@connection", "+evalsha", "+eval",
            "+script|load",
        )  # type: ignore[no-untyped-call]  # fmt: skip
        yield settings.model_copy(
            update={
                "database_url": SecretStr(with_user(endpoints.database_url, role)),
                "redis_url": SecretStr(with_user(endpoints.redis_url, user)),
                "identifier_key": SecretStr(""),
            }
        )
    finally:
        await redis.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]
        await redis.aclose()
        await admin.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM {role}')
        await admin.execute(f'REVOKE ALL ON SCHEMA "{schema}" FROM {role}')
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_the_sdk_answers_on_read_only_credentials(
    settings: Settings, read_only: Settings
) -> None:
    from service.entrypoints.server import Service

    async with Service(settings, with_worker=True), ContractClient(settings) as kafka:
        await kafka.apply(command("ro-user", [("opt_out", "marketing", "email")]))
    # Positive control: these credentials cannot write, to either store.
    conn = await asyncpg.connect(read_only.database_dsn)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(
                f'DELETE FROM "{settings.database_schema}".subjects WHERE subject_id = $1',
                "ro-user",
            )
    finally:
        await conn.close()
    redis = Redis.from_url(read_only.redis_dsn)
    try:
        with pytest.raises(NoPermissionError):
            await redis.set(f"{settings.redis_prefix}:probe", "1")
        # Scripts run with the caller's permissions: no write through EVAL either.
        with pytest.raises(ResponseError, match="can't run this command"):
            await redis.eval(
                "return redis.call('SET', KEYS[1], '1')", 1, f"{settings.redis_prefix}:probe"
            )
    finally:
        await redis.aclose()

    async with await OptoutClient.connect(read_only, local_cache=False) as client:
        # Written through by the worker: from Redis.
        assert not (await client.is_allowed("ro-user", "marketing.newsletter", "email")).allowed
        # Never heard of: a miss, read from PostgreSQL; the refill is refused and skipped.
        for _ in range(2):
            assert (await client.is_allowed("ro-stranger", "marketing", "email")).allowed
        assert await client.filter_allowed(["ro-user", "ro-other"], "marketing", "email") == [
            "ro-other"
        ]
