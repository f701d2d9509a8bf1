"""The faststream Kafka broker with a producer that cannot lose or reorder events.

aiokafka defaults to ``acks=1`` without idempotence; a preference-changed event that a
leader acknowledged and then lost would leave a sender sending, so both are set here.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker


def build_broker(bootstrap: str, client_id: str = "optout") -> KafkaBroker:
    return KafkaBroker(
        bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        request_timeout_ms=10_000,
        logger=None,
    )
