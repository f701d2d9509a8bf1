"""Erasure's last step: the hashes written before keying become keyed, in the erased rows.

Content hashes and import ids are keyed since ``domain/keyed_hashes.py``; rows written
before (or before ``OPTOUT_IDENTIFIER_KEY`` was set) hold plain SHA-256 over the identifier
and fields that survive an erasure. Once a person is erased, those of their rows are
rewritten in the erasure's own transaction, so nothing left can be recomputed from a guess.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.application.ports import CommandUnitOfWork, RekeyedHashes
from service.domain.apply import Erasure
from service.domain.keyed_hashes import ErasureRekeying, is_plain_import_id
from service.domain.model import SubjectKey


async def rekey_erased(
    uow: CommandUnitOfWork, erasures: Sequence[Erasure], rekeying: ErasureRekeying
) -> None:
    """Find the erased persons' plain hashes (every id, before and after erasure) and
    store their keyed forms."""
    names = sorted(
        {SubjectKey(e.tenant, sid) for e in erasures for sid in (e.subject_id, e.replacement)}
    )
    found = await uow.unkeyed_of(names)
    if not found.processed and not found.import_ids:
        return
    processed = [
        (tenant, command_id, rekeying.command_id(command_id), rekeying.content_hash(digest))
        for tenant, command_id, digest in found.processed
    ]
    plain_ids = set(found.import_ids)
    plain_ids.update((t, c) for t, c, _ in found.processed if is_plain_import_id(c))
    import_ids = [(t, c, rekeying.command_id(c)) for t, c in sorted(plain_ids)]
    await uow.rekey(names, RekeyedHashes(processed, import_ids))
