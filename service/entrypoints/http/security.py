"""Bearer-token authentication of the HTTP API, as a FastAPI security dependency.

Tokens come from ``OPTOUT_API_TOKENS`` as ``NAME:TOKEN:SCOPES`` entries separated by commas
(scopes ``read``, ``write`` or ``read+write``). The presented token is compared with every
configured one in constant time (``hmac.compare_digest``, no early exit), so response times
reveal neither a prefix nor which entry matched. Logs carry the token's name, never the token.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, SecurityScopes

from service.entrypoints.http.errors import ApiError

log = structlog.get_logger(__name__)

Scope = str
SCOPES: dict[str, frozenset[Scope]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"write"}),
    "read+write": frozenset({"read", "write"}),
    "write+read": frozenset({"read", "write"}),
}
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True, slots=True)
class ApiToken:
    name: str
    secret: bytes
    scopes: frozenset[Scope]

    def __repr__(self) -> str:
        # Never let the secret reach a log line or a traceback through repr().
        return f"ApiToken(name={self.name!r}, scopes={sorted(self.scopes)!r})"


def parse_tokens(spec: str) -> list[ApiToken]:
    """Parse ``OPTOUT_API_TOKENS``; errors name the entry, never its token."""
    tokens: list[ApiToken] = []
    for index, item in enumerate(part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, rest = item.partition(":")
        secret, _, scopes = rest.rpartition(":")
        where = f"OPTOUT_API_TOKENS entry {index + 1} ({name or 'unnamed'})"
        if not name or not secret:
            raise ValueError(f"{where}: expected NAME:TOKEN:SCOPES")
        if scopes not in SCOPES:
            raise ValueError(f"{where}: scopes must be read, write or read+write")
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ValueError(f"{where}: token shorter than {MIN_TOKEN_LENGTH} characters")
        if any(t.name == name for t in tokens):
            raise ValueError(f"{where}: duplicate name")
        tokens.append(ApiToken(name, secret.encode(), SCOPES[scopes]))
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
        if scope not in token.scopes:
            log.info("api_auth_denied", reason="scope", token=token.name, route=route)
            raise ApiError(
                403,
                "forbidden",
                f"the token lacks the {scope!r} scope",
                headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
            )
    structlog.contextvars.bind_contextvars(api_token=token.name)
    return token


def requires(scope: Scope) -> Any:
    """A route or router dependency: a valid bearer token with ``scope``."""
    return Security(authorized, scopes=[scope])
