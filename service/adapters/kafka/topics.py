"""Creates the contract's topics at start-up when they are missing."""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

from service.adapters.kafka.connection import KafkaConnection

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class KafkaTopic:
    name: str
    partitions: int
    replication: int = 1
    config: dict[str, str] = field(default_factory=dict)


async def ensure_topics(kafka: KafkaConnection, specs: list[KafkaTopic]) -> list[str]:
    """Create each missing topic; return the names created by this call.

    A principal sees only the topics its ACLs let it describe, and may not be allowed to
    create any: a refusal names the topic and the missing permission in one line.
    """
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if not missing:
            return []
        new = [
            NewTopic(
                name=s.name,
                num_partitions=s.partitions,
                replication_factor=s.replication,
                topic_configs=s.config,
            )
            for s in missing
        ]
        response = await admin.create_topics(new)
        created = []
        for name, code, *_ in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code == TopicAuthorizationFailedError.errno:
                raise PermissionError(
                    f"topic {name} is missing and this principal may not create it "
                    "(TopicAuthorizationFailed): create it beforehand or grant CREATE"
                )
            elif code != TopicAlreadyExistsError.errno:
                raise RuntimeError(f"creating topic {name} failed with Kafka error code {code}")
        log.info("topics_created", topics=created)
        return created
    finally:
        await admin.close()


async def check_copartitioned(kafka: KafkaConnection, live: str, bulk: str) -> None:
    """Refuse to start when the two command topics differ in partition count: a subject's
    commands would then be on partitions owned by different workers, and its events could
    leave out of version order (adapters/kafka/priority.py)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics([live, bulk])
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described if d["error_code"] == 0}
    if counts.get(live) != counts.get(bulk):
        raise RuntimeError(
            f"topics {live} ({counts.get(live)} partitions) and {bulk} "
            f"({counts.get(bulk)} partitions) must have the same partition count: recreate "
            "the bulk topic with the live topic's count"
        )
