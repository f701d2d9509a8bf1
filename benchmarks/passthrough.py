"""The baseline: consume commands and produce one record each, with the worker's settings.

What the service costs beyond moving records through Kafka is only visible next to what
moving them costs on the same machine with the same client settings. This process does
exactly the worker's Kafka part and nothing else (no decoding, no PostgreSQL, no Redis):

- one consumer in the worker's group style: manual commits, ``auto_offset_reset=earliest``,
  batches from ``getmany`` (``OPTOUT_BATCH_WAIT_SECONDS``, ``OPTOUT_BATCH_MAX_RECORDS``)
  and, like faststream's batch loop, a pause of that timeout after an empty poll;
- one producer with the service's settings (``acks=all``, idempotence, ``linger_ms=0``);
- per batch: send every record (same key, same value, the worker's content-type header)
  without waiting, gather the acknowledgements, then commit the batch's offsets;
- the worker's runtime (``entrypoints/runtime.py``: uvloop, the collector's settings).

Run: ``python -m benchmarks.passthrough --output-topic NAME`` with the ``OPTOUT_*``
variables (bootstrap, commands topic, consumer group, batch size and wait) in the
environment. It logs ``partitions_assigned`` and one ``batch`` line per batch (JSON, stderr,
like the worker) and stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from service.entrypoints.runtime import run_forever
from service.logging import configure_logging
from service.settings import Settings

log = structlog.get_logger("benchmarks.passthrough")

_HEADERS = [("content-type", b"application/json")]


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))


async def passthrough(settings: Settings, output_topic: str, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="optout-passthrough",
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_interval_ms=600_000,
    )
    consumer.subscribe([settings.topic_commands], listener=_Assignments())
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="optout-passthrough",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        request_timeout_ms=10_000,
    )
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(
                timeout_ms=round(settings.batch_wait_seconds * 1000),
                max_records=settings.batch_max_records,
            )
            if not batch:
                continue  # the worker's poll does not sleep after an empty one either
            started = time.perf_counter()
            pending: list[asyncio.Future[Any]] = []
            offsets: dict[TopicPartition, int] = {}
            count = 0
            for tp, records in batch.items():
                for r in records:
                    pending.append(
                        await producer.send(output_topic, r.value, key=r.key, headers=_HEADERS)
                    )
                count += len(records)
                offsets[tp] = records[-1].offset + 1
            await asyncio.gather(*pending)
            published = time.perf_counter()
            await consumer.commit(offsets)
            log.info(
                "batch",
                records=count,
                kafka_ms=round((published - started) * 1000, 2),
                commit_ms=round((time.perf_counter() - published) * 1000, 2),
            )
    finally:
        await consumer.stop()
        await producer.stop()


async def main(output_topic: str) -> None:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await passthrough(settings, output_topic, stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output-topic", required=True, help="where the records are copied to")
    run_forever(main(parser.parse_args().output_topic))
