"""What the channel routes (intake, links, pages, SMS) share: configuration and helpers.

Built by the server from settings and the container, kept on ``app.state.channels``; the
routes find it through the ``channels`` dependency, so a test can build it around fakes.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from service.application.decisions import DecisionService
from service.application.intake import CommandIntake
from service.application.page_links import PageLinks
from service.application.rate_limits import Throttle
from service.application.sms_replies import SmsReplies
from service.domain.link_tokens import (
    LinkClaim,
    LinkSigner,
    UnsubscribeLink,
    preferences_link,
    unsubscribe_link,
)
from service.entrypoints.http.errors import ApiError

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


def load_texts(lang: str = "en") -> Mapping[str, str]:
    """The one file a translator edits (``templates/texts.LANG.toml``)."""
    with (TEMPLATES / f"texts.{lang}.toml").open("rb") as handle:
        return {k: str(v) for k, v in tomllib.load(handle).items()}


@dataclass
class ChannelsConfig:
    intake: CommandIntake
    sms: SmsReplies
    decisions: DecisionService
    signer: LinkSigner | None
    public_base_url: str
    support_contact: str
    sms_auth_token: bytes
    sms_default_region: str
    page_outcome_wait_seconds: float
    texts: Mapping[str, str]
    links: PageLinks | None = None  # None: the signer alone, no deny list (tests)
    throttle: Throttle | None = None  # None: no rate limits on the pages

    def __repr__(self) -> str:
        # The SMS token and the link keys are secrets: never in a log line or traceback.
        return f"ChannelsConfig(public_base_url={self.public_base_url!r})"

    def make_link(self, claim: LinkClaim) -> UnsubscribeLink:
        """The URL and the two RFC 8058 headers a sender puts on its mail."""
        if self.signer is None:
            raise ApiError(503, "links_not_configured", "no OPTOUT_LINK_KEYS are configured", None)
        return unsubscribe_link(self.signer, self.public_base_url, claim)

    def make_preferences_link(self, claim: LinkClaim) -> str:
        """The URL of a preference page that may also opt in."""
        if self.signer is None:
            raise ApiError(503, "links_not_configured", "no OPTOUT_LINK_KEYS are configured", None)
        return preferences_link(self.signer, self.public_base_url, claim)

    def page_links(self) -> PageLinks:
        return self.links if self.links is not None else PageLinks(self.signer, _NoRevocations())


class _NoRevocations:
    async def is_revoked(self, token_id: str) -> bool:
        return False

    async def revoke(self, token_id: str, *, revoked_by: str) -> bool:
        raise ApiError(503, "revocation_unavailable", "no deny list is configured")


def now_seconds() -> int:
    return int(time.time())


async def _channels(request: Request) -> ChannelsConfig:
    found: Any = getattr(request.app.state, "channels", None)
    if not isinstance(found, ChannelsConfig):
        raise ApiError(404, "not_found", "Not Found")
    return found


Channels = Annotated[ChannelsConfig, Depends(_channels)]
