"""The faststream Kafka broker, which owns the worker's consumer and documents the topics.

It publishes nothing: the worker's outputs go through ``producer.KafkaOutput``.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker
from faststream.security import (
    BaseSecurity,
    SASLPlaintext,
    SASLScram256,
    SASLScram512,
)

from service.adapters.kafka.connection import KafkaConnection

_SASL = {
    "SCRAM-SHA-512": SASLScram512,
    "SCRAM-SHA-256": SASLScram256,
    "PLAIN": SASLPlaintext,
}


def broker_security(kafka: KafkaConnection) -> BaseSecurity | None:
    """The connection's TLS and SASL as faststream's security object; faststream turns it
    back into the very keyword arguments ``KafkaConnection.client_kwargs`` gives aiokafka."""
    if not kafka.uses_tls:
        return None
    context = kafka.ssl_context()
    if not kafka.uses_sasl:
        return BaseSecurity(ssl_context=context)
    return _SASL[kafka.sasl_mechanism](kafka.username, kafka.password, ssl_context=context)


def build_broker(kafka: KafkaConnection, client_id: str = "optout") -> KafkaBroker:
    return KafkaBroker(
        kafka.bootstrap, security=broker_security(kafka), client_id=client_id, logger=None
    )
