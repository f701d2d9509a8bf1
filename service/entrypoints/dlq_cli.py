"""``optout dlq replay``: chosen dead letters' original bytes onto the bulk lane's commands topic.

Exit status: 0 done; 1 Kafka did not answer or refused (one line); 2 bad usage (no selection,
an empty offset range).
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AsyncExitStack
from dataclasses import asdict
from typing import Annotated

import typer

from service.application.dlq_replay import ReplaySelection, ReplayTally
from service.logging import configure_logging
from service.settings import load_settings

dlq_app = typer.Typer(help="The dead-letter topic.", no_args_is_help=True)


@dlq_app.command("replay")
def replay(
    partition: Annotated[
        list[int] | None,
        typer.Option(min=0, help="Only this partition of the dead-letter topic (repeatable)."),
    ] = None,
    from_offset: Annotated[
        int | None, typer.Option(min=0, help="Only dead letters at or after this offset.")
    ] = None,
    to_offset: Annotated[
        int | None, typer.Option(min=0, help="Only dead letters at or before this offset.")
    ] = None,
    reason: Annotated[
        str | None,
        typer.Option(
            max=200,
            help="Only dead letters whose x-error header starts with this "
            '(e.g. "failed with": records a dependency kept refusing).',
        ),
    ] = None,
    replay_all: Annotated[
        bool, typer.Option("--all", help="Every dead letter (no other selection needed).")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be replayed, send nothing.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The tally as one JSON document.")
    ] = False,
) -> None:
    """Republish the original key and value of the chosen dead letters on the bulk lane
    (OPTOUT_TOPIC_COMMANDS_BULK), where the worker judges them again behind live commands.

    A command applied before is answered `duplicate`; values cut to fit the dead-letter topic
    (x-truncated) and records without a key or value are counted, not replayed.
    """
    if not (replay_all or partition or reason or from_offset is not None or to_offset is not None):
        typer.echo(
            "optout dlq replay: choose dead letters (--reason, --partition, --from-offset, "
            "--to-offset) or pass --all",
            err=True,
        )
        raise typer.Exit(2)
    try:
        selection = ReplaySelection(
            partitions=frozenset(partition) if partition else None,
            from_offset=from_offset,
            to_offset=to_offset,
            reason=reason,
        )
    except ValueError as exc:
        typer.echo(f"optout dlq replay: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def run() -> ReplayTally:
        from service.bootstrap import dead_letter_replayer

        async with AsyncExitStack() as stack:
            replayer = await dead_letter_replayer(settings, stack, dry_run=dry_run)
            return await replayer.run(selection)

    try:
        tally = asyncio.run(run())
    except Exception as exc:  # one line naming Kafka, never a traceback
        why = str(exc) if isinstance(exc, LookupError | PermissionError) else type(exc).__name__
        typer.echo(
            f"optout dlq replay: Kafka at {settings.kafka_bootstrap} failed ({why})", err=True
        )
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps({**asdict(tally), "dry_run": dry_run}))
        return
    verb = "would replay" if dry_run else "replayed"
    typer.echo(
        f"{verb} {tally.replayed} of {tally.chosen} chosen dead letters ({tally.read} read) "
        f"onto {settings.commands_bulk_topic}; not replayed: {tally.truncated} truncated, "
        f"{tally.without_key_or_value} without key or value"
    )
