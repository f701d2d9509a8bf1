"""The SMS inbound webhook: a reply of STOP (or any of its variants) opts the number out of
every topic on `sms`; START undoes that STOP (a `restore`); YES does too where a tenant
configures it; HELP answers with help. Twilio's request format. What each reply writes, in
which tenants (by the `To` number), lives in ``application/sms_replies``.

The request is authenticated by Twilio's ``X-Twilio-Signature``: base64 of HMAC-SHA1, keyed
with the account's auth token, over the full URL Twilio requested followed by every POST
parameter's name and value, sorted by name. The URL is ``OPTOUT_PUBLIC_BASE_URL`` plus the
path (behind a proxy, the address the service sees is not the one Twilio signed). Any other
signature, or none, is 403 and nothing is published.

The subject is ``phone:+E164`` (the sender's number normalised by ``phonenumbers``). The
command id and ``occurred_at`` derive from Twilio's ``MessageSid``, so a replayed request is
a `duplicate`. The answer is TwiML with one confirmation message, sent back to the person
by Twilio; an unrecognised reply gets an empty answer (no message).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import phonenumbers
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.application.sms_replies import MESSAGE_ID
from service.domain.sms_keywords import classify
from service.entrypoints.http.channels import Channels, ChannelsConfig
from service.entrypoints.http.errors import ApiError

log = structlog.get_logger(__name__)

PATH = "/v1/inbound/sms"
router = APIRouter(include_in_schema=False)


def twilio_signature(auth_token: bytes, url: str, params: list[tuple[str, str]]) -> str:
    signed = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token, signed.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _twiml(message: str | None) -> Response:
    inner = "" if message is None else f"<Message>{escape(message)}</Message>"
    body = f'<?xml version="1.0" encoding="UTF-8"?><Response>{inner}</Response>'
    return Response(body, media_type="application/xml")


def e164(number: str, region: str) -> str | None:
    try:
        parsed = phonenumbers.parse(number, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def _verified(request: Request, channels: ChannelsConfig, raw: bytes) -> list[tuple[str, str]]:
    params = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
    url = channels.public_base_url.rstrip("/") + PATH
    if request.url.query:
        url += "?" + request.url.query
    presented = request.headers.get("x-twilio-signature", "")
    if not channels.sms_auth_token or not hmac.compare_digest(
        twilio_signature(channels.sms_auth_token, url, params).encode(),
        presented.encode("utf-8", "replace"),
    ):
        log.info("sms_signature_refused", present=bool(presented))
        raise ApiError(403, "forbidden", "the request signature is not valid")
    return params


@router.post(PATH)
async def inbound_sms(request: Request, channels: Channels) -> Response:
    params = dict(_verified(request, channels, await request.body()))
    intent = classify(params.get("Body", ""))
    texts = channels.texts
    if intent is None:
        return _twiml(None)
    if intent == "help":
        return _twiml(texts["sms_help"].format(support=channels.support_contact))
    number = e164(params.get("From", ""), channels.sms_default_region)
    if number is None:
        log.info("sms_number_unusable")
        return _twiml(None)
    message_id = params.get("MessageSid", "")
    if not MESSAGE_ID.match(message_id):
        raise ApiError(400, "invalid_request", "MessageSid is missing or malformed", "MessageSid")
    answer = await channels.sms.handle(
        intent,
        sender=number,
        to=e164(params.get("To", ""), channels.sms_default_region),
        message_id=message_id,
    )
    if answer == "start_refused":
        return _twiml(texts["sms_start_refused"].format(support=channels.support_contact))
    if answer in ("stopped", "started"):
        return _twiml(texts["sms_stopped"] if answer == "stopped" else texts["sms_started"])
    return _twiml(None)
