"""Snapshot records to the compacted preferences topic, as ``optout events republish`` sends them.

Through the worker's producer (``KafkaOutput``: ``acks=all``, idempotent, so a retried send
cannot reorder a key's records) under the worker's key (``event_key``): a key's records land
in the partition the worker's land in, which is what lets the last one win.

The topic is created when missing, with the worker's settings (compacted): a broker that
creates topics on first use would make it with its defaults, and a topic that deletes by
age is no snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress

from aiokafka.errors import KafkaError

from service.adapters.kafka.connection import KafkaConnection, KafkaUnreachable, explained
from service.adapters.kafka.contract_publisher import event_key
from service.adapters.kafka.producer import KafkaOutput, OutgoingRecord
from service.adapters.kafka.topics import KafkaTopic, ensure_topics
from service.application.errors import DependencyUnavailable
from service.application.republish import SnapshotRecord

_JSON = (("content-type", b"application/json"),)


class KafkaSnapshotSink:
    def __init__(self, output: KafkaOutput, topic: str) -> None:
        self._output = output
        self._topic = topic

    @classmethod
    async def started(cls, kafka: KafkaConnection, topic: KafkaTopic) -> KafkaSnapshotSink:
        """A sink whose producer is started (stop it with ``stop``); Kafka not answering is
        ``DependencyUnavailable``."""
        output = KafkaOutput(kafka, client_id="optout-republish")
        try:
            await ensure_topics(kafka, [topic])
            await output.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            with suppress(Exception):
                await output.stop()
            why = await explained(kafka, exc)
            cause = str(why) if isinstance(why, KafkaUnreachable | PermissionError) else None
            raise DependencyUnavailable("kafka", cause or type(exc).__name__) from exc
        return cls(output, topic.name)

    async def stop(self) -> None:
        await self._output.stop()

    async def send(self, records: Sequence[SnapshotRecord]) -> None:
        await self._output.send_all(
            [
                OutgoingRecord(
                    self._topic,
                    event_key(r.tenant, r.subject_id),
                    r.payload,
                    _JSON if r.payload is not None else (),
                )
                for r in records
            ]
        )
