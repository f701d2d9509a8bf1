"""Readiness probe for the local stack: exit 0 only when the broker answers a metadata request."""

import asyncio
import logging
import sys

from aiokafka.admin import AIOKafkaAdminClient


async def probe(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    await admin.start()
    try:
        await admin.describe_cluster()
    finally:
        await admin.close()


def main() -> int:
    logging.disable(logging.CRITICAL)  # a refused connection is an answer here, not an error
    try:
        asyncio.run(asyncio.wait_for(probe(sys.argv[1]), timeout=5))
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
