"""What the channel tests share: settings with keys and tokens, a running service, and a
count of the records in the commands topic (to prove that nothing was published)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from service.domain.link_tokens import LinkClaim, LinkSigner, unsubscribe_link
from service.entrypoints.server import Service
from service.settings import Settings

READ_TOKEN = "reader-token-0123456789abcdef"
WRITE_TOKEN = "writer-token-0123456789abcdef"
OPS_TOKEN = "operator-token-0123456789abcdef"
OLD_KEY = "old-key-" + "o" * 32
NEW_KEY = "new-key-" + "n" * 32
SMS_TOKEN = "twilio-auth-token-0123456789"
SUPPORT = "help@example.test"


def channel_settings(settings: Settings) -> Settings:
    tokens = f"reader:{READ_TOKEN}:read,writer:{WRITE_TOKEN}:write,ops:{OPS_TOKEN}:admin:*"
    return settings.model_copy(
        update={
            "api_tokens": SecretStr(tokens),
            "channels": "on",
            "link_keys": SecretStr(f"k1:{OLD_KEY},k2:{NEW_KEY}"),
            "link_signing_key_id": "k2",
            "public_base_url": f"http://127.0.0.1:{settings.http_port}",
            "support_contact": SUPPORT,
            "sms_auth_token": SecretStr(SMS_TOKEN),
            "page_outcome_wait_seconds": 5.0,
        }
    )


def signer(key_id: str = "k2", validity_seconds: int = 90 * 86_400) -> LinkSigner:
    keys = {"k1": OLD_KEY.encode(), "k2": NEW_KEY.encode()}
    return LinkSigner(keys, key_id, validity_seconds=validity_seconds)


def link_path(claim: LinkClaim, key_id: str = "k2") -> str:
    """The path of a link made as the service makes it (``/u/TOKEN``)."""
    url = unsubscribe_link(signer(key_id), "http://x", claim).url
    return url.removeprefix("http://x")


@dataclass
class Running:
    settings: Settings
    base_url: str


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    async with Service(settings, with_worker=True) as service:
        assert service.container is not None
        assert service.container.channels is not None
        await service.container.channels.started.wait()
        yield Running(settings, f"http://127.0.0.1:{settings.http_port}")


async def published(settings: Settings, topic: str | None = None) -> int:
    """How many records the commands topic (or `topic`) holds (the sum of its end offsets)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        # The service created the topic with this many partitions.
        parts = range(settings.topic_partitions)
        ends = await consumer.end_offsets(
            [TopicPartition(topic or settings.topic_commands, p) for p in parts]
        )
        return sum(ends.values())
    finally:
        await consumer.stop()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, "the form carries no CSRF field"
    return found.group(1)


def http_client(base_url: str, token: str | None = None) -> httpx.AsyncClient:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=15)
