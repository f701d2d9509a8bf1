"""Signed unsubscribe links: who may stop what, proven without a database lookup.

A link in a mail must work for months, on any device, without a login, and must not let
anyone who guesses an id unsubscribe somebody else. So the link carries its own claim
(tenant, subject, topic, channel, issued_at) and an HMAC-SHA256 over it. The key id in the
token lets keys rotate: several keys verify, one signs, and links signed with a retired key
keep working until that key is removed.

Token text: ``v1.{key_id}.{claim}.{mac}``, the claim and the MAC in unpadded base64url, the
claim a JSON array. Everything is URL-safe, so the token is one path segment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

VERSION = "v1"
_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MIN_KEY_BYTES = 32

Failure = Literal["malformed", "unknown_key", "bad_signature", "expired"]


class LinkTokenError(ValueError):
    """A token that proves nothing; ``kind`` says which check failed (never the claim)."""

    def __init__(self, kind: Failure) -> None:
        super().__init__(kind)
        self.kind: Failure = kind


@dataclass(frozen=True, slots=True)
class LinkClaim:
    """What a link allows: stopping `topic` on `channel` for one subject of one tenant."""

    tenant: str
    subject_id: str
    topic: str
    channel: str
    issued_at: int  # seconds since the epoch (UTC)


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
        self, keys: Mapping[str, bytes], signing_key_id: str, *, validity_seconds: int
    ) -> None:
        if signing_key_id not in keys:
            raise ValueError(f"signing key id {signing_key_id!r} is not among the keys")
        for key_id, secret in keys.items():
            if not _KEY_ID.match(key_id):
                raise ValueError(f"key id {key_id!r}: 1-32 characters of [A-Za-z0-9_-]")
            if len(secret) < MIN_KEY_BYTES:
                raise ValueError(f"key {key_id!r}: shorter than {MIN_KEY_BYTES} bytes")
        if validity_seconds <= 0:
            raise ValueError("validity_seconds must be positive")
        self._keys = dict(keys)
        self.signing_key_id = signing_key_id
        self.validity_seconds = validity_seconds

    def __repr__(self) -> str:
        # Never let a key reach a log line or a traceback through repr().
        return f"LinkSigner(key_ids={sorted(self._keys)!r}, signing={self.signing_key_id!r})"

    def sign(self, claim: LinkClaim) -> str:
        body = json.dumps(
            [claim.tenant, claim.subject_id, claim.topic, claim.channel, claim.issued_at],
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
        """The claim of a genuine, unexpired token; ``LinkTokenError`` otherwise."""
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
        claim = _parse_claim(_unb64(body))
        if now - claim.issued_at > self.validity_seconds:
            raise LinkTokenError("expired")
        return claim


def _parse_claim(raw: bytes) -> LinkClaim:
    try:
        fields = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise LinkTokenError("malformed") from None
    if (
        not isinstance(fields, list)
        or len(fields) != 5
        or not all(isinstance(f, str) for f in fields[:4])
        or not isinstance(fields[4], int)
        or isinstance(fields[4], bool)
    ):
        raise LinkTokenError("malformed")
    tenant, subject_id, topic, channel, issued_at = fields
    return LinkClaim(tenant, subject_id, topic, channel, issued_at)


def parse_keys(spec: str) -> dict[str, bytes]:
    """``KEY_ID:SECRET`` entries separated by commas; errors name the key id, never the key."""
    keys: dict[str, bytes] = {}
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        key_id, _, secret = item.partition(":")
        where = f"OPTOUT_LINK_KEYS entry {index + 1} ({key_id or 'unnamed'})"
        if not key_id or not secret:
            raise ValueError(f"{where}: expected KEY_ID:SECRET")
        if key_id in keys:
            raise ValueError(f"{where}: duplicate key id")
        keys[key_id] = secret.encode()
    return keys


def signer_from(keys_spec: str, signing_key_id: str, validity_seconds: int) -> LinkSigner | None:
    """The signer of a ``KEY_ID:SECRET,...`` setting (the first key signs unless one is
    named), or None when no key is configured."""
    keys = parse_keys(keys_spec)
    if not keys:
        return None
    return LinkSigner(keys, signing_key_id or next(iter(keys)), validity_seconds=validity_seconds)


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
