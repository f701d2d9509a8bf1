"""How large an output record may be, read from the broker, and DLQ records cut to fit.

The broker refuses a record batch larger than the topic's ``max.message.bytes`` (default:
the broker's ``message.max.bytes``), after compression; aiokafka, like the Java client, also
refuses on the client side any record whose *uncompressed* size exceeds the producer's
``max_request_size``. A dead letter carries bytes someone else produced, possibly compressed
on the way in and far larger once decompressed, and it must never be refused: a DLQ record
that cannot be sent would stall its partition. So the limits are read at start-up, and a
dead letter that would not fit is cut, saying so in its headers; the full value stays in
the source topic at the offset the headers name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from service.adapters.kafka.connection import KafkaConnection
from service.adapters.kafka.outgoing import OutgoingRecord
from service.application.errors import DependencyUnavailable

# Kafka's own default (message.max.bytes), used when the broker does not say.
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588
# Room left for what the estimate does not count: the length varint of a cut value.
_SAFETY_BYTES = 64


@dataclass(frozen=True, slots=True)
class SizeLimits:
    """`record_bytes`: the producer's ``max_request_size`` (the largest uncompressed record
    it sends); `dead_letter_bytes`: the DLQ topic's ``max.message.bytes``."""

    record_bytes: int = KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    dead_letter_bytes: int = KAFKA_DEFAULT_MAX_MESSAGE_BYTES


def _config_value(response: object, name: str) -> int | None:
    for resource in response.to_object()["resources"]:  # type: ignore[attr-defined]
        if resource["error_code"] != 0:
            continue
        for entry in resource["config_entries"]:
            if entry["config_names"] == name and entry["config_value"]:
                return int(entry["config_value"])
    return None


async def read_size_limits(kafka: KafkaConnection, dead_letter_topic: str) -> SizeLimits:
    """The broker's ``message.max.bytes`` and the DLQ topic's ``max.message.bytes``."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10_000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        broker_id = str(cluster["brokers"][0]["node_id"])
        broker_response, topic_response = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.BROKER, broker_id, {"message.max.bytes": None}),
                ConfigResource(
                    ConfigResourceType.TOPIC, dead_letter_topic, {"max.message.bytes": None}
                ),
            ]
        )
    finally:
        await admin.close()
    broker = _config_value(broker_response, "message.max.bytes") or KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    topic = _config_value(topic_response, "max.message.bytes") or broker
    # Large enough for every topic the producer writes; the DLQ is held to its own below.
    return SizeLimits(record_bytes=max(broker, topic), dead_letter_bytes=topic)


def estimated_size(key: bytes | None, value: bytes, headers: tuple[tuple[str, bytes], ...]) -> int:
    """aiokafka's own upper bound for one record in a batch of its own, uncompressed."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
    return size


def fit_dead_letter(
    record: OutgoingRecord, limits: SizeLimits, compress: Callable[[bytes], bytes]
) -> OutgoingRecord:
    """The record as it is when it fits (uncompressed, or once compressed with the producer's
    codec), else its value cut to fit with ``x-original-size`` and ``x-truncated: true``."""
    limit = min(limits.dead_letter_bytes, limits.record_bytes) - _SAFETY_BYTES
    value = record.value or b""
    whole = estimated_size(record.key, value, record.headers)
    if whole <= limit:
        return record
    if whole <= limits.record_bytes - _SAFETY_BYTES:
        framing = estimated_size(record.key, b"", record.headers)
        if framing + len(compress(value)) <= limit:
            return record
    headers = (
        *record.headers,
        ("x-original-size", str(len(value)).encode()),
        ("x-truncated", b"true"),
    )
    key = record.key
    room = limit - estimated_size(key, b"", headers)
    if room < 0 and key is not None:
        # A key as large as the limit: keep what fits of it, and no value.
        key = key[: max(0, len(key) + room)]
        room = 0
    return OutgoingRecord(record.topic, key, value[: max(0, room)], headers)


class KafkaTopicRetention:
    """The commands topic's ``retention.ms`` (``application/retention``), asked each time:
    an operator may change it while the worker runs."""

    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        self._kafka = kafka
        self._topic = topic

    async def retention_seconds(self) -> float | None:
        admin = AIOKafkaAdminClient(**self._kafka.client_kwargs(), request_timeout_ms=10_000)
        try:
            await admin.start()
            try:
                (response,) = await admin.describe_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, self._topic, {"retention.ms": None})]
                )
            finally:
                await admin.close()
        except (KafkaError, OSError) as exc:
            raise DependencyUnavailable("kafka", type(exc).__name__) from exc
        value = _config_value(response, "retention.ms")
        if value is None or value < 0:
            return None
        return value / 1000
