"""Page links in use: a token is genuine, current and not revoked, or it opens nothing.

The signature, purpose and dates are checked by the domain (``LinkSigner``, no I/O); the
deny list of revoked token ids is a port (PostgreSQL in production), looked up on every
use, so a revocation holds from the next request on, in every process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from service.domain.link_tokens import LinkClaim, LinkSigner, LinkTokenError


class RevokedLinks(Protocol):
    async def is_revoked(self, token_id: str) -> bool: ...

    async def revoke(self, token_id: str, *, revoked_by: str) -> bool:
        """Add ``token_id`` to the deny list; False when it was there already."""
        ...


class LinkRevoked(Exception):
    """A genuine link whose id is on the deny list."""


class LinksNotConfigured(Exception):
    """No ``OPTOUT_LINK_KEYS``: no link can be made or checked."""


class PageLinks:
    def __init__(
        self,
        signer: LinkSigner | None,
        revoked: RevokedLinks,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self._revoked = revoked
        self._clock = clock

    async def open(self, token: str) -> LinkClaim:
        """The claim of a usable token; ``LinkTokenError``, ``LinkRevoked`` or
        ``LinksNotConfigured`` otherwise."""
        if self.signer is None:
            raise LinksNotConfigured
        claim = self.signer.verify(token, now=int(self._clock()))
        if await self._revoked.is_revoked(claim.token_id):
            raise LinkRevoked
        return claim

    async def revoke(self, token_or_id: str, *, revoked_by: str) -> tuple[str, bool]:
        """Revoke a link given as its token (or its URL's last segment) or its token id.

        Returns the token id and whether it was newly revoked. A token must be genuine
        (signed by a configured key, even if expired); a bare id is taken as given.
        """
        text = token_or_id.strip().rsplit("/", 1)[-1]
        if text.count(".") == 3:
            if self.signer is None:
                raise LinksNotConfigured
            token_id = self.signer.token_id_of(text)
        elif _is_token_id(text):
            token_id = text
        else:
            raise LinkTokenError("malformed")
        return token_id, await self._revoked.revoke(token_id, revoked_by=revoked_by)


def _is_token_id(text: str) -> bool:
    return 0 < len(text) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in text)
