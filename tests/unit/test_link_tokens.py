"""Signed links: a token proves exactly its claim, with any configured key, until it expires."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.domain.link_tokens import (
    LinkClaim,
    LinkSigner,
    LinkTokenError,
    parse_keys,
    parse_link_keys,
)

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


# Purposes, token ids, the future, retired keys and the parsing rule of OPTOUT_LINK_KEYS.


def legacy_token(key_id: str, secret: bytes, fields: list[object]) -> str:
    """A token as links were made before purposes and ids: a five-field claim."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signed = f"v1.{key_id}.{b64(json.dumps(fields, separators=(',', ':')).encode())}"
    return f"{signed}.{b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())}"


def test_a_claim_carries_its_purpose_and_a_fresh_token_id() -> None:
    first = LinkClaim("default", "user-1", "marketing", "email", 1_000)
    second = LinkClaim("default", "user-1", "marketing", "email", 1_000)
    assert first.purpose == "unsubscribe"
    assert first.token_id != second.token_id
    prefs = LinkClaim("default", "user-1", "*", "*", 1_000, purpose="preferences")
    assert signer().verify(signer().sign(prefs), now=1_000) == prefs


def test_preference_links_have_their_own_shorter_validity() -> None:
    short = LinkSigner(
        {"k2": NEW}, "k2", validity_seconds=90 * DAY, preferences_validity_seconds=DAY
    )
    prefs = short.sign(LinkClaim("default", "u", "*", "*", 1_000, purpose="preferences"))
    unsub = short.sign(LinkClaim("default", "u", "marketing", "email", 1_000))
    assert short.verify(prefs, now=1_000 + DAY).purpose == "preferences"
    with pytest.raises(LinkTokenError) as caught:
        short.verify(prefs, now=1_001 + DAY)
    assert (caught.value.kind, caught.value.validity_seconds) == ("expired", DAY)
    assert short.verify(unsub, now=1_001 + DAY).purpose == "unsubscribe"


def test_links_issued_more_than_five_minutes_ahead_are_refused() -> None:
    token = signer().sign(LinkClaim("default", "u", "marketing", "email", 10_000))
    assert signer().verify(token, now=10_000 - 300).issued_at == 10_000
    with pytest.raises(LinkTokenError) as caught:
        signer().verify(token, now=10_000 - 301)
    assert caught.value.kind == "not_yet_valid"


def test_links_made_before_purposes_are_unsubscribe_links_named_by_their_mac() -> None:
    token = legacy_token("k1", OLD, ["default", "u", "marketing", "email", 1_000])
    claim = signer().verify(token, now=1_000)
    assert (claim.purpose, claim.topic, claim.channel) == ("unsubscribe", "marketing", "email")
    assert claim.token_id == "m-" + token.rsplit(".", 1)[1][:32]
    assert signer().token_id_of(token) == claim.token_id
    # A forged purpose in a seven-field claim is malformed, not a preference link.
    bad = legacy_token("k1", OLD, ["default", "u", "*", "*", 1_000, "admin", "abc"])
    with pytest.raises(LinkTokenError) as caught:
        signer().verify(bad, now=1_000)
    assert caught.value.kind == "malformed"


def test_a_key_past_its_not_after_date_verifies_only_links_signed_before_it() -> None:
    keys = parse_link_keys(f"k1:{OLD.decode()}:1970-01-02,k2:{NEW.decode()}")
    last = 2 * DAY - 1  # 1970-01-02T23:59:59Z
    assert keys.not_after == {"k1": last}
    retiring = LinkSigner(keys.secrets, "k1", validity_seconds=90 * DAY, not_after=keys.not_after)
    before = retiring.sign(LinkClaim("default", "u", "marketing", "email", last))
    assert retiring.verify(before, now=last + DAY).issued_at == last
    with pytest.raises(ValueError, match="not-after"):
        retiring.sign(LinkClaim("default", "u", "marketing", "email", last + 1))
    after = legacy_token("k1", OLD, ["default", "u", "marketing", "email", last + 1])
    with pytest.raises(LinkTokenError) as caught:
        retiring.verify(after, now=last + 1)
    assert caught.value.kind == "retired_key"
    assert retiring.signing_key_retired(last + 1)
    assert not retiring.signing_key_retired(last)


@pytest.mark.parametrize(
    ("spec", "secret", "not_after"),
    [
        ("k:" + "s" * 32, b"s" * 32, None),
        ("k:" + "s" * 32 + ":2027-01-31", b"s" * 32, 1_801_439_999),
        # Not a date in the last field: the colons belong to the secret, as before.
        ("k:" + "a:b:" + "s" * 32, b"a:b:" + b"s" * 32, None),
        ("k:" + "s" * 32 + ":tomorrow", ("s" * 32 + ":tomorrow").encode(), None),
    ],
)
def test_the_parsing_rule_of_link_keys(spec: str, secret: bytes, not_after: int | None) -> None:
    keys = parse_link_keys(spec)
    assert keys.secrets == {"k": secret}
    assert keys.not_after.get("k") == not_after


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("k:a:" + "s" * 32 + ":2027-01-31", "ambiguous"),
        ("k:" + "s" * 32 + ":2027-02-30", "is not a date"),
        ("k:" + "s" * 31, "shorter than 32 bytes"),
        ("k:" + "s" * 31 + ":2027-01-31", "shorter than 32 bytes"),
        ("k::2027-01-31", "expected KEY_ID:SECRET"),
    ],
)
def test_an_unclear_link_key_entry_is_refused_in_one_line(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        parse_link_keys(spec)
    message = str(caught.value)
    assert "\n" not in message
    assert "entry 1 (k)" in message
    assert "s" * 31 not in message
