"""Many real workers in one process, one per probe: ``python -m tests.chaos.probe_host FILE``.

FILE holds a JSON list of ``Settings.as_environment()`` mappings. Each becomes a
``Service(with_worker=True)``, the object ``optout worker`` runs, on its own topics and
consumer group; a probe whose record stalls its worker leaves the others running. One
process starts in a second where forty would take a minute on two cores. The suite ends it
with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from service.entrypoints.server import Service
from service.logging import configure_logging
from service.settings import Settings


def settings_from(environment: dict[str, str]) -> Settings:
    prefix = "OPTOUT_"
    fields: dict[str, Any] = {k[len(prefix) :].lower(): v for k, v in environment.items()}
    return Settings(**fields)


async def main(configs: list[Settings]) -> None:
    configure_logging("INFO", "json")
    async with AsyncExitStack() as stack:
        await asyncio.gather(
            *(stack.enter_async_context(Service(s, with_worker=True)) for s in configs)
        )
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main([settings_from(env) for env in json.loads(Path(sys.argv[1]).read_text())]))
