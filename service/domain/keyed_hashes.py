"""Keyed fingerprints of commands: nothing stored can be recomputed from a guessed identifier.

A fingerprint of a command's content (the processed log's `content_hash`) and an imported
row's command id (`import-…`) are hashes over the subject id and fields that survive an
erasure in the same rows (an SMS STOP has no ip, a fixed source and a fixed reason). Plain
SHA-256 of them would give an erased phone number back to a brute force over E.164 in
seconds. Both are therefore HMAC-SHA256 under keys derived from the service's identifier key
(``OPTOUT_IDENTIFIER_KEY``), one per purpose, so the one secret never serves two uses.

The keyed form is HMAC over the plain SHA-256 hex digest. Rows written before keying (or
before the key was set) hold that plain digest; erasure turns them into the keyed form
without the command itself (``ErasureRekeying``), and a redelivery still finds them equal.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

MIN_KEY_BYTES = 32
"""The shortest identifier key accepted: 256 bits, HMAC-SHA256's own strength."""

SEALED_PREFIX = "k1:"
"""A keyed content hash: `k1:` and 64 hex digits (version 1: HMAC-SHA256)."""

PLAIN_IMPORT_PREFIX = "import-"
KEYED_IMPORT_PREFIX = "import-k1-"
_PLAIN_IMPORT_ID = re.compile(r"import-[0-9a-f]{64}", re.ASCII)


def derived_key(root: bytes, purpose: str) -> bytes:
    """A key for one purpose, from the service's identifier key (HMAC as the KDF)."""
    return hmac.digest(root, b"optout/" + purpose.encode("ascii"), "sha256")


@dataclass(frozen=True, slots=True)
class ContentSeal:
    """The stored form of a content hash: keyed, so it names no one without the key."""

    key: bytes

    @classmethod
    def from_root(cls, root: bytes) -> ContentSeal:
        return cls(derived_key(root, "content-hash/v1"))

    def __call__(self, digest: str) -> str:
        return SEALED_PREFIX + hmac.digest(self.key, digest.encode("ascii"), "sha256").hex()


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


@dataclass(frozen=True, slots=True)
class ImportIds:
    """Imported rows' command ids: `import-k1-` and HMAC of the row's content hash."""

    key: bytes

    @classmethod
    def from_root(cls, root: bytes) -> ImportIds:
        return cls(derived_key(root, "import-command-id/v1"))

    def __call__(self, digest: str) -> str:
        return KEYED_IMPORT_PREFIX + hmac.digest(self.key, digest.encode("ascii"), "sha256").hex()


def is_plain_import_id(command_id: str) -> bool:
    """An import id of before keying: `import-` and the plain SHA-256 of the row."""
    return _PLAIN_IMPORT_ID.fullmatch(command_id) is not None


@dataclass(frozen=True, slots=True)
class ErasureRekeying:
    """What an erasure does to the unkeyed hashes of before: each becomes its keyed form.

    A content hash of the old form becomes exactly what ``ContentSeal`` gives the same
    command today, so a redelivered command is still a `duplicate`; an import id of the old
    form becomes the id a re-run of the same row gives today.
    """

    seal: ContentSeal
    import_ids: ImportIds

    @classmethod
    def from_root(cls, root: bytes) -> ErasureRekeying:
        return cls(ContentSeal.from_root(root), ImportIds.from_root(root))

    def content_hash(self, stored: str) -> str:
        """The keyed form of a stored content hash (a keyed one comes back unchanged)."""
        return stored if is_sealed(stored) else self.seal(stored)

    def command_id(self, command_id: str) -> str:
        """The keyed form of an import id of before keying; any other id is unchanged."""
        if not is_plain_import_id(command_id):
            return command_id
        return self.import_ids(command_id[len(PLAIN_IMPORT_PREFIX) :])
