"""Signed links: a token proves exactly its claim, with any configured key, until it expires."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.link_tokens import LinkClaim, LinkSigner, LinkTokenError, parse_keys

OLD = b"o" * 32
NEW = b"n" * 32
DAY = 86_400


def signer(keys: dict[str, bytes] | None = None, signing: str = "k2") -> LinkSigner:
    return LinkSigner(keys or {"k1": OLD, "k2": NEW}, signing, validity_seconds=90 * DAY)


claims = st.builds(
    LinkClaim,
    tenant=st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True),
    subject_id=st.text(min_size=1, max_size=256),
    topic=st.sampled_from(["marketing", "marketing.newsletter", "*"]),
    channel=st.sampled_from(["email", "sms", "*"]),
    issued_at=st.integers(min_value=0, max_value=2**40),
)


@given(claims)
def test_a_signed_claim_verifies_to_itself(claim: LinkClaim) -> None:
    token = signer().sign(claim)
    assert signer().verify(token, now=claim.issued_at) == claim
    assert "/" not in token
    assert "?" not in token
    assert "#" not in token


@given(claims, st.data())
def test_any_changed_character_is_refused(claim: LinkClaim, data: st.DataObject) -> None:
    token = signer().sign(claim)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from("AbZ09_-.x"))
    tampered = token[:index] + replacement + token[index + 1 :]
    if tampered == token:
        return
    with pytest.raises(LinkTokenError):
        signer().verify(tampered, now=claim.issued_at)


def test_rotation_old_links_verify_new_links_use_the_new_key() -> None:
    claim = LinkClaim("default", "user-1", "marketing", "email", 1_000)
    old_token = signer(signing="k1").sign(claim)
    assert old_token.split(".")[1] == "k1"
    assert signer(signing="k2").verify(old_token, now=1_000) == claim
    assert signer(signing="k2").sign(claim).split(".")[1] == "k2"
    retired = signer({"k2": NEW}, "k2")
    with pytest.raises(LinkTokenError) as caught:
        retired.verify(old_token, now=1_000)
    assert caught.value.kind == "unknown_key"


def test_a_key_id_pointing_at_another_key_is_a_bad_signature() -> None:
    claim = LinkClaim("default", "user-1", "marketing", "email", 1_000)
    token = signer(signing="k1").sign(claim)
    swapped = token.replace(".k1.", ".k2.", 1)
    with pytest.raises(LinkTokenError) as caught:
        signer().verify(swapped, now=1_000)
    assert caught.value.kind == "bad_signature"


def test_expiry_is_inclusive_of_the_validity() -> None:
    claim = LinkClaim("default", "user-1", "marketing", "email", 1_000)
    token = signer().sign(claim)
    assert signer().verify(token, now=1_000 + 90 * DAY) == claim
    with pytest.raises(LinkTokenError) as caught:
        signer().verify(token, now=1_001 + 90 * DAY)
    assert caught.value.kind == "expired"


@pytest.mark.parametrize("token", ["", "v1", "v2.k1.e30.e30", "v1.k1.!!.e30", "a.b.c.d.e"])
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(LinkTokenError) as caught:
        signer().verify(token, now=0)
    assert caught.value.kind in {"malformed", "unknown_key", "bad_signature"}


def test_keys_are_parsed_and_never_shown() -> None:
    keys = parse_keys(f"k1:{OLD.decode()}, k2:{NEW.decode()}")
    assert keys == {"k1": OLD, "k2": NEW}
    assert OLD.decode() not in repr(signer(keys))
    with pytest.raises(ValueError, match="duplicate") as caught:
        parse_keys(f"k1:{OLD.decode()},k1:{NEW.decode()}")
    assert OLD.decode() not in str(caught.value)
    with pytest.raises(ValueError, match="shorter"):
        LinkSigner({"k": b"short"}, "k", validity_seconds=1)
    with pytest.raises(ValueError, match="not among"):
        LinkSigner({"k": OLD}, "other", validity_seconds=1)
