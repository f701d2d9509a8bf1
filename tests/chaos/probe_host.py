"""Many real workers in one process, one per probe: ``python -m tests.chaos.probe_host FILE``.

FILE holds a JSON list of ``Settings.as_environment()`` mappings. Each becomes a
``Service(with_worker=True)``, the object ``optout worker`` runs, on its own topics and
consumer group; a probe whose record stalls its worker leaves the others running. One
process starts in a second where forty would take a minute on two cores. The suite ends it
with SIGKILL.

The services' ports are chosen here by the system (port 0), never picked in advance by the
suite: a port found free there could be taken by one of this process's own Kafka
connections before the service bound it. Each service's admin port is written, as it
starts, to ``FILE.ports/<consumer group>`` (written whole, then renamed into place).
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


def ports_dir(config_file: Path) -> Path:
    return config_file.with_name(config_file.name + ".ports")


async def main(configs: list[Settings], ports: Path) -> None:
    configure_logging("INFO", "json")

    async def start(stack: AsyncExitStack, settings: Settings) -> None:
        service = Service(
            settings.model_copy(update={"http_port": 0, "admin_port": 0}), with_worker=True
        )
        await stack.enter_async_context(service)
        staged = ports / f".{settings.consumer_group}"
        staged.write_text(str(service.ports["admin"]))
        staged.rename(ports / settings.consumer_group)

    async with AsyncExitStack() as stack:
        await asyncio.gather(*(start(stack, s) for s in configs))
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    config_file = Path(sys.argv[1])
    configs = [settings_from(env) for env in json.loads(config_file.read_text())]
    ports_dir(config_file).mkdir(parents=True, exist_ok=True)
    asyncio.run(main(configs, ports_dir(config_file)))
