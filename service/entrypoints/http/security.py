"""Bearer-token authentication of the HTTP API: who the caller is, what it may do, for whom.

Tokens come from ``OPTOUT_API_TOKENS``, entries separated by commas, each
``NAME:TOKEN:SCOPES[:TENANTS]``:

- ``SCOPES``, joined by ``+``: ``check`` (decisions; ``read`` is an alias), ``history`` (the
  proof-of-consent export), ``write`` (preference commands and links), ``identity`` (link,
  unlink, merge, erase), ``admin`` (everything, the operator functions included).
- ``TENANTS``, joined by ``+``: the tenants the token acts for, ``*`` for every tenant. An
  entry without them acts for ``default`` only, so single-tenant deployments keep working.

Parsing: ``NAME`` runs to the first ``:``; the scopes and tenants are read from the right, so a
token may itself contain ``:``. An entry whose last field reads both as scopes and as tenants
(``crm:abc:read:write``: token ``abc`` for tenant ``write``, or token ``abc:read``?) is refused
as ambiguous; naming the tenants explicitly resolves it.

The presented token is compared with every configured one in constant time
(``hmac.compare_digest``, no early exit), so response times reveal neither a prefix nor which
entry matched. Logs carry the token's name, never the token.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from service.entrypoints.http.errors import ApiError

log = structlog.get_logger(__name__)

Scope = str
SCOPE_NAMES: frozenset[Scope] = frozenset({"check", "history", "write", "identity", "admin"})
SCOPE_ALIASES: dict[str, Scope] = {"read": "check"}
ALL_TENANTS = "*"
DEFAULT_TENANT = "default"
MIN_TOKEN_LENGTH = 16
_TENANT = re.compile(r"^[a-z0-9_-]{1,64}$")
# A token's name is the actor of what it writes: it may not pass for one of the service's
# own channels (imports are `import:<file>`).
RESERVED_NAMES = frozenset({"optout-pages", "sms-inbound", "optout-republish", "kafka"})


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A configured credential: its name (the actor of what it writes), scopes and tenants.

    ``tenants`` is ``None`` for a token of every tenant (``*``).
    """

    name: str
    secret: bytes
    scopes: frozenset[Scope]
    tenants: frozenset[str] | None = frozenset({DEFAULT_TENANT})

    def __repr__(self) -> str:
        # Never let the secret reach a log line or a traceback through repr().
        tenants = "*" if self.tenants is None else sorted(self.tenants)
        return f"ApiToken(name={self.name!r}, scopes={sorted(self.scopes)!r}, tenants={tenants!r})"

    def holds(self, scope: Scope) -> bool:
        return "admin" in self.scopes or SCOPE_ALIASES.get(scope, scope) in self.scopes

    def acts_for(self, tenant: str) -> bool:
        return self.tenants is None or tenant in self.tenants

    def require(self, scope: Scope, *, route: str | None = None) -> None:
        """403 ``scope_forbidden`` unless the token holds ``scope``."""
        if self.holds(scope):
            return
        log.info("api_auth_denied", reason="scope", token=self.name, route=route, scope=scope)
        raise ApiError(
            403,
            "scope_forbidden",
            f"the token lacks the {scope!r} scope",
            headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        )

    def tenant_for(self, requested: str | None, *, field: str = "tenant") -> str:
        """The tenant a request acts for: the one it names, if the token holds it; or the
        token's only tenant when it names none. 403 ``tenant_forbidden`` / 422
        ``tenant_required`` otherwise. The refusal does not say which tenants exist."""
        if requested is None:
            if self.tenants is not None and len(self.tenants) == 1:
                return next(iter(self.tenants))
            raise ApiError(
                422,
                "tenant_required",
                "the token acts for several tenants: name the tenant",
                field,
            )
        if not self.acts_for(requested):
            log.info("api_auth_denied", reason="tenant", token=self.name)
            raise ApiError(403, "tenant_forbidden", "the token does not act for this tenant", field)
        return requested


def _scopes(text: str) -> frozenset[Scope] | None:
    names = [SCOPE_ALIASES.get(part, part) for part in text.split("+")]
    if not names or not all(name in SCOPE_NAMES for name in names):
        return None
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class _Reading:
    secret: str
    scopes: frozenset[Scope]
    tenants: frozenset[str] | None


def _with_tenants(rest: str) -> _Reading | None:
    """``TOKEN:SCOPES:TENANTS``, if ``rest`` reads so."""
    head, _, last = rest.rpartition(":")
    secret, _, middle = head.rpartition(":")
    scopes = _scopes(middle)
    if not secret or scopes is None:
        return None
    if last == ALL_TENANTS:
        return _Reading(secret, scopes, None)
    names = last.split("+")
    if not all(_TENANT.match(name) for name in names):
        return None
    return _Reading(secret, scopes, frozenset(names))


def _without_tenants(rest: str) -> _Reading | None:
    """``TOKEN:SCOPES``, if ``rest`` reads so: the token acts for ``default``."""
    secret, _, last = rest.rpartition(":")
    scopes = _scopes(last)
    if not secret or scopes is None:
        return None
    return _Reading(secret, scopes, frozenset({DEFAULT_TENANT}))


def parse_entry(item: str, where: str) -> ApiToken:
    """One ``NAME:TOKEN:SCOPES[:TENANTS]`` entry; errors name the entry, never its token."""
    name, _, rest = item.partition(":")
    four, three = _with_tenants(rest), _without_tenants(rest)
    if not name or (four is None and three is None):
        raise ValueError(
            f"{where}: expected NAME:TOKEN:SCOPES[:TENANTS], scopes of"
            f" {', '.join(sorted(SCOPE_NAMES | set(SCOPE_ALIASES)))} joined by '+',"
            " tenants of [a-z0-9_-] joined by '+', or '*'"
        )
    if four is not None and three is not None:
        raise ValueError(
            f"{where}: ambiguous: its last field reads as scopes and as tenants;"
            " write NAME:TOKEN:SCOPES:TENANTS with the tenants named"
        )
    reading = four or three
    assert reading is not None
    if len(reading.secret) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{where}: token shorter than {MIN_TOKEN_LENGTH} characters")
    if name in RESERVED_NAMES or name.startswith("import"):
        raise ValueError(f"{where}: the name {name!r} is kept for the service's own channels")
    return ApiToken(name, reading.secret.encode(), reading.scopes, reading.tenants)


def parse_tokens(spec: str) -> list[ApiToken]:
    """Parse ``OPTOUT_API_TOKENS``; errors name the entry, never its token."""
    tokens: list[ApiToken] = []
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        where = f"OPTOUT_API_TOKENS entry {index + 1} ({item.partition(':')[0] or 'unnamed'})"
        token = parse_entry(item, where)
        if any(t.name == token.name for t in tokens):
            raise ValueError(f"{where}: duplicate name")
        tokens.append(token)
    return tokens


class Authenticator:
    def __init__(self, tokens: list[ApiToken]) -> None:
        self._tokens = tuple(tokens)

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        return f"Authenticator({list(self._tokens)!r})"

    def authenticate(self, authorization: str | None) -> ApiToken | None:
        """The token an ``Authorization`` header value presents, if it is a configured one."""
        if authorization is None:
            return None
        kind, _, presented = authorization.partition(" ")
        if kind.lower() != "bearer" or not presented.strip():
            return None
        return self.verify(presented.strip())

    def verify(self, presented: str) -> ApiToken | None:
        # Starlette decodes headers as latin-1: encoding back gives the bytes as sent.
        candidate = presented.encode("latin-1")
        found: ApiToken | None = None
        for token in self._tokens:
            if hmac.compare_digest(candidate, token.secret):
                found = token
        return found


# Declares the scheme in the OpenAPI document; the checks are ours (auto_error=False), so
# the 401 and 403 answers carry the API's error body and RFC 6750 challenges.
bearer_scheme = HTTPBearer(
    scheme_name="bearer",
    description="A token of `OPTOUT_API_TOKENS` with the scope the operation lists.",
    auto_error=False,
)


async def authorized(
    request: Request,
    required: SecurityScopes,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> ApiToken:
    """The caller's token, holding every scope the operation requires; 401 or 403 otherwise.

    The token's name is bound to the rest of the request's log lines. Each request runs in
    its own task, with its own copy of the context, so the binding ends with the request;
    a plain dependency instead of a ``yield`` one spares FastAPI an exit stack per request.
    """
    route = getattr(request.scope.get("route"), "name", None)
    authenticator: Authenticator = request.app.state.authenticator
    token = None if credentials is None else authenticator.verify(credentials.credentials)
    if token is None:
        presented = "authorization" in request.headers
        log.info(
            "api_auth_denied",
            reason="invalid token" if presented else "missing token",
            route=route,
        )
        challenge = 'Bearer realm="optout"'
        if presented:
            challenge += ', error="invalid_token"'
        raise ApiError(
            401,
            "unauthorized",
            "a valid bearer token is required",
            headers={"WWW-Authenticate": challenge},
        )
    for scope in required.scopes:
        token.require(scope, route=route)
    structlog.contextvars.bind_contextvars(api_token=token.name)
    request.state.api_token = token
    return token


def requires(scope: Scope | None = None) -> Any:
    """A route or router dependency: a valid bearer token, holding ``scope`` if given."""
    return Security(authorized, scopes=[] if scope is None else [scope])


async def _caller(request: Request) -> ApiToken:
    token: Any = getattr(request.state, "api_token", None)
    if not isinstance(token, ApiToken):  # a route without `requires`: a wiring error
        raise ApiError(401, "unauthorized", "a valid bearer token is required")
    return token


Caller = Annotated[ApiToken, Depends(_caller)]
"""The authenticated token of a route guarded by ``requires`` (declared after it)."""
