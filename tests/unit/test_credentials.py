"""`OPTOUT_API_TOKENS` entries: scopes, tenants, the parsing rule, and what a token may do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.entrypoints.http.errors import ApiError
from service.entrypoints.http.security import ApiToken, parse_tokens

SECRET = "s" * 20


def one(spec: str) -> ApiToken:
    [token] = parse_tokens(spec)
    return token


def test_an_entry_without_tenants_acts_for_default_only() -> None:
    token = one(f"crm:{SECRET}:read+write")
    assert token.scopes == {"check", "write"}
    assert token.tenants == frozenset({"default"})
    assert token.tenant_for(None) == "default"
    assert token.tenant_for("default") == "default"
    with pytest.raises(ApiError) as refused:
        token.tenant_for("acme")
    assert (refused.value.status, refused.value.error) == (403, "tenant_forbidden")


def test_tenants_are_named_or_all() -> None:
    several = one(f"crm:{SECRET}:write+history:acme+beta")
    assert several.tenants == frozenset({"acme", "beta"})
    assert several.tenant_for("beta") == "beta"
    with pytest.raises(ApiError) as required:
        several.tenant_for(None)
    assert (required.value.status, required.value.error) == (422, "tenant_required")
    every = one(f"ops:{SECRET}:admin:*")
    assert every.tenants is None
    assert every.tenant_for("anyone") == "anyone"
    with pytest.raises(ApiError):
        every.tenant_for(None)


def test_admin_holds_every_scope_and_read_is_check() -> None:
    admin = one(f"ops:{SECRET}:admin")
    assert all(admin.holds(s) for s in ("check", "read", "history", "write", "identity"))
    reader = one(f"r:{SECRET}:read")
    assert reader.holds("check")
    assert not reader.holds("history")
    with pytest.raises(ApiError) as refused:
        reader.require("history")
    assert (refused.value.status, refused.value.error) == (403, "scope_forbidden")


def test_a_token_may_contain_colons() -> None:
    assert one("a:xx:yyyyyyyyyyyyyyyy:check").secret == b"xx:yyyyyyyyyyyyyyyy"
    four = one("a:xx:yyyyyyyyyyyyyyyy:check:acme")
    assert (four.secret, four.tenants) == (b"xx:yyyyyyyyyyyyyyyy", frozenset({"acme"}))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (f"crm:{SECRET}:read:write", "ambiguous"),
        (f"crm:{SECRET}:check:Acme", "expected NAME:TOKEN:SCOPES"),
        (f"crm:{SECRET}:root", "expected NAME:TOKEN:SCOPES"),
        (f"optout-pages:{SECRET}:check", "kept for the service's own channels"),
        (f"import-bot:{SECRET}:write", "kept for the service's own channels"),
    ],
)
def test_unclear_entries_are_refused_in_one_line_without_the_token(spec: str, says: str) -> None:
    with pytest.raises(ValueError, match="OPTOUT_API_TOKENS entry 1") as error:
        parse_tokens(spec)
    assert says in str(error.value)
    assert SECRET not in str(error.value)
    assert "\n" not in str(error.value)


_SCOPE = st.sampled_from(["check", "read", "history", "write", "identity", "admin"])
_TENANT = st.from_regex(r"[a-z0-9_-]{1,12}", fullmatch=True)
_SECRET = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=","),
    min_size=16,
    max_size=40,
)


@given(
    secret=_SECRET,
    scopes=st.lists(_SCOPE, min_size=1, max_size=4),
    tenants=st.lists(_TENANT, min_size=1, max_size=3),
)
def test_an_entry_reads_back_as_written_or_is_refused(
    secret: str, scopes: list[str], tenants: list[str]
) -> None:
    """Whatever the token holds, an entry with its tenants named either reads back exactly
    or is refused as ambiguous: never read as another token, scope or tenant."""
    spec = f"n:{secret}:{'+'.join(scopes)}:{'+'.join(tenants)}"
    problems: list[str] = []
    try:
        token = one(spec)
    except ValueError as error:
        problems.append(str(error))
    if problems:
        assert "ambiguous" in problems[0]
        return
    assert token.secret == secret.encode()
    assert token.tenants == frozenset(tenants)
    assert token.scopes == {"check" if s == "read" else s for s in scopes}
