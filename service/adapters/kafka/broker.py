"""The faststream Kafka broker, which owns the worker's consumer and documents the topics.

It publishes nothing: the worker's outputs go through ``producer.KafkaOutput``.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker


def build_broker(bootstrap: str, client_id: str = "optout") -> KafkaBroker:
    return KafkaBroker(bootstrap, client_id=client_id, logger=None)
