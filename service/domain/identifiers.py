"""Identifiers of a person: `email:…`, `phone:…` and `device:…` subject ids.

A subject id with one of these prefixes names a way to reach a person rather than an
account. It is normalised once, at the door, so that `email:Alice@Example.com ` and
`email:alice@example.com` are the same subject everywhere (commands, checks, links). Any
other subject id stays opaque, as contract v1 always had it.

Erasure keeps a keyed hash of each identifier as a suppression (`pseudonym`): the person is
never contacted again, and no identifier is left in clear.
"""

from __future__ import annotations

import hashlib
import hmac

import phonenumbers

EMAIL = "email:"
PHONE = "phone:"
DEVICE = "device:"
PREFIXES = (EMAIL, PHONE, DEVICE)
ERASED = "erased:"
"""Prefix of an erased identifier's suppression: `erased:` and the identifier's keyed hash."""


class InvalidIdentifier(ValueError):
    """An identifier-shaped subject id that cannot be normalised; the message says why."""


def is_identifier(subject_id: str) -> bool:
    return subject_id.startswith(PREFIXES)


def is_erased(subject_id: str) -> bool:
    return subject_id.startswith(ERASED)


def normalize(subject_id: str) -> str:
    """The one spelling of a subject id; opaque ids come back unchanged.

    Emails are trimmed and lower-cased (mail providers treat the local part case-blindly in
    practice, and a suppression that misses `Alice@` for `alice@` is the costlier error);
    phone numbers become E.164 and must carry their country code (`+…`), since a command
    has no region to guess one from.
    """
    if subject_id.startswith(EMAIL):
        address = subject_id[len(EMAIL) :].strip().lower()
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain or "@" in local or any(c.isspace() for c in address):
            raise InvalidIdentifier("an email identifier must be email:local@domain")
        return EMAIL + address
    if subject_id.startswith(PHONE):
        number = subject_id[len(PHONE) :].strip()
        try:
            parsed = phonenumbers.parse(number, None)
        except phonenumbers.NumberParseException:
            raise InvalidIdentifier(
                "a phone identifier must be phone:+<country code><number>"
            ) from None
        if not phonenumbers.is_possible_number(parsed):
            raise InvalidIdentifier("a phone identifier must be a possible phone number")
        return PHONE + phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    if subject_id.startswith(DEVICE):
        device = subject_id[len(DEVICE) :].strip()
        if not device:
            raise InvalidIdentifier("a device identifier must be device:<id>")
        return DEVICE + device
    return subject_id


def pseudonym(key: bytes, tenant: str, subject_id: str) -> str:
    """The suppression id an erased identifier leaves behind: HMAC-SHA256 under `key`.

    Keyed, so that the hash of a guessed address cannot be computed without the secret; the
    tenant is part of the message, so two tenants' suppressions of one address differ.
    """
    digest = hmac.new(key, f"{tenant}\x1f{subject_id}".encode(), hashlib.sha256).hexdigest()
    return ERASED + digest
