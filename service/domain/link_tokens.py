"""Signed page links: who may do what on which page, proven without a database lookup.

A link in a mail must work for months, on any device, without a login, and must not let
anyone who guesses an id unsubscribe somebody else. So the link carries its own claim
(tenant, subject, topic, channel, issued_at, purpose, token id) and an HMAC-SHA256 over it.
The key id in the token lets keys rotate: several keys verify, one signs, and links signed
with a retired key keep working until that key is removed, or until its not-after date
passes for links it signed after that date.

Purposes: ``unsubscribe`` (the ``/u`` link in every mail: it may stop its own topic on its
own channel, and open the preference page read-only, where only opt-outs are taken) and
``preferences`` (the ``/p`` link that may also opt in, valid for a shorter time). A token id
(``jti``) names each link, so one link can be revoked (a deny list checked on use).

Token text: ``v1.{key_id}.{claim}.{mac}``, the claim and the MAC in unpadded base64url, the
claim a JSON array: ``[tenant, subject, topic, channel, issued_at, purpose, jti]``. Links
made before purposes existed carry the first five only: they are ``unsubscribe`` links, and
their id is derived from their MAC (so they can be revoked too). Everything is URL-safe, so
the token is one path segment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from urllib.parse import quote

VERSION = "v1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_TOKEN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_NOT_AFTER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MIN_KEY_BYTES = 32
# A link claiming to be issued further ahead than this is refused: it would otherwise
# outlive its validity by as much as its issuer's clock (or a thief) chose.
MAX_FUTURE_SECONDS = 300
DEFAULT_PREFERENCES_VALIDITY_SECONDS = 7 * 86_400

Purpose = Literal["unsubscribe", "preferences"]
PURPOSES: tuple[Purpose, ...] = ("unsubscribe", "preferences")
Failure = Literal[
    "malformed", "unknown_key", "bad_signature", "expired", "not_yet_valid", "retired_key"
]


class LinkTokenError(ValueError):
    """A token that proves nothing; ``kind`` says which check failed (never the claim).

    ``validity_seconds`` is the validity of the expired link's purpose (for the page's text).
    """

    def __init__(self, kind: Failure, *, validity_seconds: int = 0) -> None:
        super().__init__(kind)
        self.kind: Failure = kind
        self.validity_seconds = validity_seconds


def new_token_id() -> str:
    """128 random bits, base64url: the id a link is revoked by."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """What a link allows: for ``unsubscribe``, stopping `topic` on `channel` for one subject
    of one tenant (and viewing the preference page); for ``preferences``, choosing on the
    preference page, opt-ins included."""

    tenant: str
    subject_id: str
    topic: str
    channel: str
    issued_at: int  # seconds since the epoch (UTC)
    purpose: Purpose = "unsubscribe"
    token_id: str = field(default_factory=new_token_id)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise LinkTokenError("malformed")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise LinkTokenError("malformed") from None
    # Only the canonical spelling: the last character's unused bits would otherwise let
    # several strings stand for one token.
    if _b64(raw) != text:
        raise LinkTokenError("malformed")
    return raw


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()


class LinkSigner:
    """Signs with one key, verifies with any configured key.

    ``keys`` maps key ids to secrets; ``signing_key_id`` names the one that signs.
    """

    def __init__(
        self,
        keys: Mapping[str, bytes],
        signing_key_id: str,
        *,
        validity_seconds: int,
        preferences_validity_seconds: int = DEFAULT_PREFERENCES_VALIDITY_SECONDS,
        not_after: Mapping[str, int] | None = None,
    ) -> None:
        if signing_key_id not in keys:
            raise ValueError(f"signing key id {signing_key_id!r} is not among the keys")
        for key_id, secret in keys.items():
            if not _KEY_ID.match(key_id):
                raise ValueError(f"key id {key_id!r}: 1-32 characters of [A-Za-z0-9_-]")
            if len(secret) < MIN_KEY_BYTES:
                raise ValueError(f"key {key_id!r}: shorter than {MIN_KEY_BYTES} bytes")
        if validity_seconds <= 0 or preferences_validity_seconds <= 0:
            raise ValueError("validity_seconds must be positive")
        self._keys = dict(keys)
        self._not_after = dict(not_after or {})
        unknown = set(self._not_after) - set(self._keys)
        if unknown:
            raise ValueError(f"not-after dates for unknown key ids {sorted(unknown)!r}")
        self.signing_key_id = signing_key_id
        self.validity_seconds = validity_seconds
        self.preferences_validity_seconds = preferences_validity_seconds

    def validity_of(self, purpose: Purpose) -> int:
        """How long a link of ``purpose`` stays valid after it was issued, in seconds."""
        if purpose == "preferences":
            return self.preferences_validity_seconds
        return self.validity_seconds

    def signing_secret(self) -> bytes:
        """The signing key's secret, for deriving a key of another purpose (never logged)."""
        return self._keys[self.signing_key_id]

    def signing_key_retired(self, now: int) -> bool:
        """Whether the signing key's not-after date has passed (it must not sign then)."""
        limit = self._not_after.get(self.signing_key_id)
        return limit is not None and now > limit

    def __repr__(self) -> str:
        # Never let a key reach a log line or a traceback through repr().
        return f"LinkSigner(key_ids={sorted(self._keys)!r}, signing={self.signing_key_id!r})"

    def sign(self, claim: LinkClaim) -> str:
        if claim.purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}")
        if not _TOKEN_ID.match(claim.token_id):
            raise ValueError("token id: 1-64 characters of [A-Za-z0-9_-]")
        limit = self._not_after.get(self.signing_key_id)
        if limit is not None and claim.issued_at > limit:
            raise ValueError(f"signing key {self.signing_key_id!r} is past its not-after date")
        body = json.dumps(
            [
                claim.tenant,
                claim.subject_id,
                claim.topic,
                claim.channel,
                claim.issued_at,
                claim.purpose,
                claim.token_id,
            ],
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        signed = f"{VERSION}.{self.signing_key_id}.{_b64(body)}"
        return f"{signed}.{_b64(_mac(self._keys[self.signing_key_id], signed))}"

    def tag(self, purpose: str, text: str) -> str:
        """A MAC of ``text`` for one purpose (a form's CSRF field), with the signing key.

        Another purpose, or a token with another claim, never gets the same tag.
        """
        key = self._keys[self.signing_key_id]
        return _b64(_mac(key, f"{purpose}:{_b64(text.encode())}"))

    def check_tag(self, purpose: str, text: str, tag: str) -> bool:
        return hmac.compare_digest(self.tag(purpose, text).encode(), tag.encode("utf-8", "replace"))

    def verify(self, token: str, *, now: int) -> LinkClaim:
        """The claim of a genuine, current token; ``LinkTokenError`` otherwise."""
        key_id, claim = self._genuine(token)
        if claim.issued_at - now > MAX_FUTURE_SECONDS:
            raise LinkTokenError("not_yet_valid")
        limit = self._not_after.get(key_id)
        if limit is not None and claim.issued_at > limit:
            raise LinkTokenError("retired_key")
        validity = self.validity_of(claim.purpose)
        if now - claim.issued_at > validity:
            raise LinkTokenError("expired", validity_seconds=validity)
        return claim

    def token_id_of(self, token: str) -> str:
        """The id of a genuine token, current or not (what revoking it stores)."""
        return self._genuine(token)[1].token_id

    def _genuine(self, token: str) -> tuple[str, LinkClaim]:
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            raise LinkTokenError("malformed")
        _, key_id, body, mac = parts
        key = self._keys.get(key_id)
        if key is None:
            raise LinkTokenError("unknown_key")
        # Constant-time comparison before the claim is even parsed: a forged claim teaches
        # the forger nothing about how far it got.
        if not hmac.compare_digest(_mac(key, f"{VERSION}.{key_id}.{body}"), _unb64(mac)):
            raise LinkTokenError("bad_signature")
        return key_id, _parse_claim(_unb64(body), mac)


def _parse_claim(raw: bytes, mac: str) -> LinkClaim:
    try:
        fields = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LinkTokenError("malformed") from None
    if (
        not isinstance(fields, list)
        or len(fields) not in (5, 7)
        or not all(isinstance(f, str) for f in fields[:4])
        or not isinstance(fields[4], int)
        or isinstance(fields[4], bool)
    ):
        raise LinkTokenError("malformed")
    tenant, subject_id, topic, channel, issued_at = fields[:5]
    if len(fields) == 5:
        # A link made before purposes: an unsubscribe link, named by its MAC.
        legacy_id = "m-" + mac[:32]
        return LinkClaim(tenant, subject_id, topic, channel, issued_at, "unsubscribe", legacy_id)
    purpose, token_id = fields[5:]
    if purpose not in PURPOSES or not isinstance(token_id, str) or not _TOKEN_ID.match(token_id):
        raise LinkTokenError("malformed")
    return LinkClaim(tenant, subject_id, topic, channel, issued_at, purpose, token_id)


@dataclass(frozen=True, slots=True)
class LinkKeys:
    """``OPTOUT_LINK_KEYS`` parsed: the secrets by key id, and the not-after moments (the
    last second, UTC, of the date given) of the keys that have one."""

    secrets: dict[str, bytes]
    not_after: dict[str, int]

    def __repr__(self) -> str:
        return f"LinkKeys(key_ids={sorted(self.secrets)!r}, not_after={self.not_after!r})"


def parse_link_keys(spec: str) -> LinkKeys:
    """``KEY_ID:SECRET[:NOT_AFTER]`` entries separated by commas.

    The rule: the key id runs to the first ``:``. When the entry has exactly three
    ``:``-separated fields and the last is ``YYYY-MM-DD``, that is the key's not-after date
    (UTC, inclusive) and the middle field the secret; otherwise everything after the key id
    is the secret (so secrets made before dates existed, colons and all, keep working). An
    entry of four or more fields ending in ``YYYY-MM-DD`` cannot be told apart (a secret
    with a colon, or a date?) and is refused, as is a date that is not a real one. Errors
    name the entry and its key id, never the secret.
    """
    secrets_by_id: dict[str, bytes] = {}
    not_after: dict[str, int] = {}
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        fields = item.split(":")
        key_id = fields[0]
        where = f"OPTOUT_LINK_KEYS entry {index + 1} ({key_id or 'unnamed'})"
        secret = item.partition(":")[2]
        if len(fields) >= 3 and _NOT_AFTER.match(fields[-1]):
            if len(fields) > 3:
                raise ValueError(
                    f"{where}: ambiguous: the secret contains ':' and the entry ends with a"
                    " date; use a secret without ':' to give a not-after date"
                )
            secret = fields[1]
            try:
                day = date.fromisoformat(fields[2])
            except ValueError:
                raise ValueError(f"{where}: not-after {fields[2]!r} is not a date") from None
            last = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            not_after[key_id] = int(last.timestamp()) - 1
        if not key_id or not secret:
            raise ValueError(f"{where}: expected KEY_ID:SECRET[:NOT_AFTER_DATE]")
        if key_id in secrets_by_id:
            raise ValueError(f"{where}: duplicate key id")
        if len(secret.encode()) < MIN_KEY_BYTES:
            raise ValueError(f"{where}: secret shorter than {MIN_KEY_BYTES} bytes")
        secrets_by_id[key_id] = secret.encode()
    return LinkKeys(secrets_by_id, not_after)


def parse_keys(spec: str) -> dict[str, bytes]:
    """The secrets of ``OPTOUT_LINK_KEYS`` by key id (see ``parse_link_keys``)."""
    return parse_link_keys(spec).secrets


def signer_from(
    keys_spec: str,
    signing_key_id: str,
    validity_seconds: int,
    preferences_validity_seconds: int = DEFAULT_PREFERENCES_VALIDITY_SECONDS,
) -> LinkSigner | None:
    """The signer of a ``KEY_ID:SECRET[:NOT_AFTER],...`` setting (the first key signs unless
    one is named), or None when no key is configured."""
    keys = parse_link_keys(keys_spec)
    if not keys.secrets:
        return None
    return LinkSigner(
        keys.secrets,
        signing_key_id or next(iter(keys.secrets)),
        validity_seconds=validity_seconds,
        preferences_validity_seconds=preferences_validity_seconds,
        not_after=keys.not_after,
    )


ONE_CLICK_POST = "List-Unsubscribe=One-Click"


@dataclass(frozen=True, slots=True)
class UnsubscribeLink:
    """The URL and the two RFC 8058 header values a sender puts on its mail."""

    url: str
    list_unsubscribe: str
    list_unsubscribe_post: str


def unsubscribe_link(signer: LinkSigner, base_url: str, claim: LinkClaim) -> UnsubscribeLink:
    url = f"{base_url.rstrip('/')}/u/{quote(signer.sign(claim), safe='')}"
    return UnsubscribeLink(url, f"<{url}>", ONE_CLICK_POST)


def preferences_link(signer: LinkSigner, base_url: str, claim: LinkClaim) -> str:
    """The URL of the preference page for a ``preferences`` claim (no mail headers: this
    link is not an unsubscribe link)."""
    if claim.purpose != "preferences":
        raise ValueError("a preference-page link needs a claim of purpose 'preferences'")
    return f"{base_url.rstrip('/')}/p/{quote(signer.sign(claim), safe='')}"
