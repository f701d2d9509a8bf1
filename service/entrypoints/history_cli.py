"""`optout history`: a subject's proof of consent, whole, as JSON or CSV (registered in cli.py).

Reads PostgreSQL only, so it works while Kafka or Redis are down. Exit status: 0 with the
export, 1 for an unknown subject or an unreachable database, 2 for a malformed identifier.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import asyncpg
import typer

from service.application.history import HistoryPage, UnknownSubject
from service.domain.identifiers import InvalidIdentifier
from service.entrypoints.history_export import HistoryOut, to_csv


class ExportFormat(StrEnum):
    json = "json"
    csv = "csv"


def history(
    subject: Annotated[
        str, typer.Argument(help="Subject id, or an identifier (email:…, phone:…, device:…).")
    ],
    tenant: Annotated[str, typer.Option(help="Tenant of the subject.")] = "default",
    export_format: Annotated[
        ExportFormat, typer.Option("--format", help="json: one document; csv: one row a change.")
    ] = ExportFormat.json,
    out: Annotated[
        Path | None, typer.Option(help="Write the export here instead of to standard output.")
    ] = None,
) -> None:
    """Proof of consent: every recorded change of SUBJECT, oldest first, as JSON or CSV.

    Includes the history of every id linked or merged into it; fields removed by erasure
    show as `erased`.
    """
    from service.bootstrap import open_consent_history
    from service.entrypoints.cli import _UNREACHABLE, _settings, _unreachable

    settings = _settings()

    async def export() -> list[HistoryPage]:
        async with AsyncExitStack() as stack:
            consent = await open_consent_history(settings, stack)
            return [page async for page in consent.pages(tenant, subject)]

    try:
        pages = asyncio.run(export())
    except InvalidIdentifier as exc:
        typer.echo(f"optout history: {exc}", err=True)
        raise typer.Exit(2) from None
    except UnknownSubject:
        typer.echo(f"optout history: no subject has this id in tenant {tenant!r}", err=True)
        raise typer.Exit(1) from None
    except (*_UNREACHABLE, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _unreachable("history", exc, settings) from None
    if export_format is ExportFormat.csv:
        text = to_csv(record for page in pages for record in page.records)
    else:
        text = HistoryOut.of(pages).model_dump_json(indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        # newline="": the CSV's own CRLF line ends are written as they are.
        with out.open("w", encoding="utf-8", newline="") as file:
            file.write(text)
        typer.echo(f"wrote {out}", err=True)
