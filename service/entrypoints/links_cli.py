"""`optout links revoke`: put one page link on the deny list (registered in cli.py).

Writes PostgreSQL only. Exit status: 0 when the link is revoked (now or before), 1 for an
unreachable database, 2 for something that is not a link of this service.
"""

from __future__ import annotations

import asyncio
import getpass
from contextlib import AsyncExitStack
from typing import Annotated

import typer

from service.application.page_links import LinksNotConfigured
from service.domain.link_tokens import LinkTokenError

links_app = typer.Typer(help="Page links: revoke one.", no_args_is_help=True)


@links_app.command("revoke")
def revoke(
    link: Annotated[
        str, typer.Argument(help="The link's URL, its token, or its token id (`token_id`).")
    ],
) -> None:
    """Revoke one link: from the next request on, in every process, it opens nothing.

    A token or URL must be signed by one of OPTOUT_LINK_KEYS (expired is fine); a bare
    token id is taken as given. Links made before token ids existed are named by their MAC:
    give the link itself.
    """
    from service.bootstrap import open_page_links
    from service.entrypoints.cli import _UNREACHABLE, _settings, _unreachable

    settings = _settings()

    async def run() -> tuple[str, bool]:
        async with AsyncExitStack() as stack:
            links = await open_page_links(settings, stack)
            return await links.revoke(link, revoked_by=f"cli:{getpass.getuser()}")

    try:
        token_id, new = asyncio.run(run())
    except LinksNotConfigured:
        typer.echo("optout links revoke: no OPTOUT_LINK_KEYS to check the link with", err=True)
        raise typer.Exit(2) from None
    except LinkTokenError as exc:
        typer.echo(f"optout links revoke: not a link of this service ({exc.kind})", err=True)
        raise typer.Exit(2) from None
    except _UNREACHABLE as exc:
        raise _unreachable("links revoke", exc, settings) from None
    typer.echo(f"{token_id} {'revoked' if new else 'was already revoked'}")
