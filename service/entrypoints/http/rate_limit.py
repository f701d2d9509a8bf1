"""The rate limits of ``/v1`` and the SMS webhook, as one app-level dependency.

- ``/v1``: per API token (``api_token``), or per client address for a call without a valid
  token (``api_ip``: guessing tokens gets slow). A ``POST /v1/commands`` whose every change
  is an opt-out is counted but never refused.
- The SMS webhook: a reply that reads as STOP is never refused (it comes from the provider's
  few addresses, like every other reply); any other reply is limited per client address
  (``sms_ip``) and per sender number (``sms_number``, the number keyed, never in clear).

The pages limit themselves (``routers/pages.py``): what they may refuse depends on the link's
claim and on what the form asks. A refusal is 429 with ``Retry-After`` and the API's error
body; nothing is read or written past it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request

from service.application.rate_limits import Rule, Throttle, Verdict
from service.domain.sms_keywords import classify
from service.entrypoints.http.channels import ChannelsConfig
from service.entrypoints.http.errors import ApiError
from service.entrypoints.http.routers.sms import PATH as SMS_PATH
from service.entrypoints.http.routers.sms import _verified as verified_sms
from service.entrypoints.http.security import Authenticator


def client_address(request: Request) -> str:
    """The client's address as the server saw it (behind a proxy: what the proxy forwarded,
    when uvicorn trusts it)."""
    return request.client.host if request.client is not None else "unknown"


def too_many(verdict: Verdict) -> ApiError:
    seconds = verdict.retry_after_seconds
    return ApiError(
        429,
        "rate_limited",
        f"too many requests; retry after {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


async def rate_limited(request: Request) -> None:
    """Every route's first dependency; routes other than ``/v1`` and the webhook pass."""
    throttle: Any = getattr(request.app.state, "throttle", None)
    if not isinstance(throttle, Throttle):
        return
    path = request.url.path
    if path == SMS_PATH:
        await _sms(request, throttle)
    elif path.startswith("/v1/"):
        await _api(request, throttle)


async def _api(request: Request, throttle: Throttle) -> None:
    authenticator: Any = getattr(request.app.state, "authenticator", None)
    token = None
    if isinstance(authenticator, Authenticator):
        token = authenticator.authenticate(request.headers.get("authorization"))
    checks: list[tuple[Rule, str]] = (
        [("api_ip", client_address(request))] if token is None else [("api_token", token.name)]
    )
    if token is not None and await _only_opt_outs(request):
        await throttle.count(checks)
        return
    verdict = await throttle.check(checks)
    if not verdict.allowed:
        raise too_many(verdict)


async def _only_opt_outs(request: Request) -> bool:
    """A command submission whose every change is an opt-out (the body is read once: the
    route reads it again from the request's cache)."""
    if request.method != "POST" or request.url.path != "/v1/commands":
        return False
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return False
    documents = body.get("commands", [body]) if isinstance(body, dict) else []
    if not isinstance(documents, list) or not documents:
        return False
    for document in documents:
        changes = document.get("changes") if isinstance(document, dict) else None
        if not isinstance(changes, list) or not changes:
            return False
        if not all(isinstance(c, dict) and c.get("action") == "opt_out" for c in changes):
            return False
    return True


async def _sms(request: Request, throttle: Throttle) -> None:
    raw = await request.body()
    params = dict(parse_qsl(raw.decode("utf-8", "replace")))
    if classify(params.get("Body", "")) == "stop":
        return
    checks: list[tuple[Rule, str]] = [("sms_ip", client_address(request))]
    sender = params.get("From", "")
    channels: Any = getattr(request.app.state, "channels", None)
    if sender and isinstance(channels, ChannelsConfig) and _signed(request, channels, raw):
        # Only a signed request counts against a number: a forger cannot use up the
        # budget of somebody else's replies.
        checks.append(("sms_number", throttle.subject("sms", sender)))
    verdict = await throttle.check(checks)
    if not verdict.allowed:
        raise too_many(verdict)


def _signed(request: Request, channels: ChannelsConfig, raw: bytes) -> bool:
    try:
        verified_sms(request, channels, raw)
    except ApiError:
        return False
    return True
