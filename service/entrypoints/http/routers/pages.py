"""The pages people see: the unsubscribe confirmation (``/u/{token}``) and the preference page
(``/p/{token}``), plus their one stylesheet.

- A GET of ``/u`` never changes anything: mail scanners and link previews follow links.
- A POST of ``/u`` is the button, or a mail client's RFC 8058 one-click POST (body
  ``List-Unsubscribe=One-Click``, sent without cookies or page); both publish the opt-out.
  The token in the path is the proof; the page's form also carries a CSRF tag, which the
  one-click POST, coming from no page, cannot and need not have.
- A person who is already unsubscribed is told so, and nothing is published again.
- A token that is tampered with, signed by an unknown key or expired gets a 400 page saying
  which, with the support contact, and nothing is published.
- ``Sec-GPC: 1`` on the preference page records an opt-out of ``data.sale`` (the one
  request here that publishes on a GET: the signal is the person's standing instruction,
  and only a browser sends it).
- Links have a purpose. An ``unsubscribe`` link (``/u``, the one in every mail) stops its
  own topic on its own channel, and opens the preference page read-only: there it takes
  opt-outs only (withdrawing stays as easy as giving), and the boxes of what is off cannot
  be ticked. Opting in needs a ``preferences`` link, which expires sooner. A revoked link,
  one issued in the future, or one signed by a key after its not-after date opens nothing.
- Rate limits (``application/rate_limits.py``): page views and opt-ins are limited per
  client address, per link and per subject (429 with ``Retry-After``); an opt-out is never
  refused. It is counted (so a flood alternating opt-ins and opt-outs stops at the limit),
  and the same opt-out repeated within a short window is answered without being published
  again.

Every page has a strict Content-Security-Policy (nothing but this origin's stylesheet, no
script at all, forms post only here, no framing) and works without JavaScript.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service.application.intake import PAGES_ACTOR, Accepted, IntakeRefused
from service.application.page_links import LinkRevoked, LinksNotConfigured
from service.application.rate_limits import Rule, Verdict
from service.domain.events import Outcome
from service.domain.link_tokens import LinkClaim, LinkTokenError, Purpose
from service.domain.model import WILDCARD, Decision, SubjectKey
from service.entrypoints.http.channels import STATIC, TEMPLATES, Channels, ChannelsConfig
from service.entrypoints.http.rate_limit import client_address

# The pages are one of the service's own channels: they name themselves as the actor.
AS_PAGES: dict[str, Any] = {"actor": PAGES_ACTOR, "service_channel": True}
log = structlog.get_logger(__name__)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ONE_CLICK = ("List-Unsubscribe", "One-Click")
_CSRF = "csrf"

_templates = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)

router = APIRouter(include_in_schema=False)


def _page(name: str, status: int = 200, /, **context: Any) -> HTMLResponse:
    html = _templates.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def _invalid(channels: ChannelsConfig, why: str) -> HTMLResponse:
    return _page("invalid.html", 400, t=channels.texts, why=why, support=channels.support_contact)


def _too_many(channels: ChannelsConfig, verdict: Verdict) -> HTMLResponse:
    t = channels.texts
    seconds = verdict.retry_after_seconds
    page = _page(
        "invalid.html",
        429,
        t=t,
        heading=t["too_many_heading"],
        why=t["too_many_detail"].format(seconds=seconds),
        support=channels.support_contact,
    )
    page.headers["Retry-After"] = str(seconds)
    return page


async def _claim(
    channels: ChannelsConfig, token: str, purposes: tuple[Purpose, ...]
) -> LinkClaim | HTMLResponse:
    """The link's claim when it is genuine, current, not revoked and of one of
    ``purposes``; otherwise the page that says why (nothing is changed)."""
    t = channels.texts
    try:
        claim = await channels.page_links().open(token)
    except LinksNotConfigured:
        return _invalid(channels, t["invalid_unknown_key"])
    except LinkRevoked:
        log.info("link_refused", kind="revoked")
        return _invalid(channels, t["invalid_revoked"])
    except LinkTokenError as exc:
        log.info("link_refused", kind=exc.kind)
        if exc.kind == "expired":
            days = exc.validity_seconds // 86_400
            return _invalid(channels, t["invalid_expired"].format(days=days))
        if exc.kind in ("unknown_key", "retired_key"):
            return _invalid(channels, t["invalid_unknown_key"])
        return _invalid(channels, t["invalid_tampered"])
    if claim.purpose not in purposes:
        log.info("link_refused", kind="purpose")
        return _invalid(channels, t["invalid_purpose"])
    catalog = channels.intake.catalog
    if claim.topic != WILDCARD and claim.topic not in catalog.topics:
        return _invalid(channels, t["invalid_unknown_key"])
    return claim


def _view_limits(request: Request, claim: LinkClaim | None) -> list[tuple[Rule, str]]:
    checks: list[tuple[Rule, str]] = [("page_ip", client_address(request))]
    if claim is not None:
        checks.append(("page_token", claim.token_id))
    return checks


async def _view_allowed(
    channels: ChannelsConfig, request: Request, claim: LinkClaim | None
) -> HTMLResponse | None:
    """None when a page view (or an opt-in) may go on; the 429 page otherwise."""
    if channels.throttle is None:
        return None
    verdict = await channels.throttle.check(_view_limits(request, claim))
    return None if verdict.allowed else _too_many(channels, verdict)


def _labels(channels: ChannelsConfig, claim: LinkClaim) -> dict[str, str]:
    catalog = channels.intake.catalog
    return {
        "topic": catalog.topic_label(claim.topic),
        "channel": catalog.channel_label(claim.channel),
    }


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", "replace")
    return dict(parse_qsl(body, keep_blank_values=True))


def _source(request: Request, channel: str) -> dict[str, Any]:
    source: dict[str, Any] = {"channel": channel, "app": "optout-pages"}
    if request.client is not None and request.client.host:
        source["ip"] = request.client.host[:64]
    agent = request.headers.get("user-agent")
    if agent:
        source["user_agent"] = agent[:512]
    return source


def _command(
    request: Request,
    claim: LinkClaim,
    changes: list[dict[str, str]],
    source_channel: str,
    reason: str,
) -> dict[str, Any]:
    return {
        "command_id": str(uuid.uuid4()),
        "subject_id": claim.subject_id,
        "tenant": claim.tenant,
        "occurred_at": datetime.now(UTC).isoformat(),
        "source": _source(request, source_channel),
        "changes": changes,
        "reason": reason,
    }


def _when(outcome: Outcome) -> str:
    moment = outcome.effective_at or datetime.now(UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@router.get("/static/channels.css")
async def stylesheet() -> Response:
    return FileResponse(
        STATIC / "channels.css",
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/u/{token}")
async def unsubscribe_page(token: str, request: Request, channels: Channels) -> Response:
    # Per address first: a flood of made-up links costs no lookup of the deny list.
    if (refused := await _view_allowed(channels, request, None)) is not None:
        return refused
    claim = await _claim(channels, token, ("unsubscribe",))
    if isinstance(claim, HTMLResponse):
        return claim
    if channels.throttle is not None:
        verdict = await channels.throttle.check([("page_token", claim.token_id)])
        if not verdict.allowed:
            return _too_many(channels, verdict)
    assert channels.signer is not None
    if await _already_out(channels, SubjectKey(claim.tenant, claim.subject_id), claim):
        return _page(
            "unsubscribed.html",
            200,
            state="already",
            t=channels.texts,
            token=token,
            support=channels.support_contact,
            **_labels(channels, claim),
        )
    return _page(
        "unsubscribe.html",
        t=channels.texts,
        token=token,
        csrf=channels.signer.tag(_CSRF, token),
        **_labels(channels, claim),
    )


@router.post("/u/{token}")
async def unsubscribe(token: str, request: Request, channels: Channels) -> Response:
    """Never rate-limited: an opt-out is always taken (its repeats are absorbed)."""
    claim = await _claim(channels, token, ("unsubscribe",))
    if isinstance(claim, HTMLResponse):
        return claim
    assert channels.signer is not None
    form = await _form(request)
    one_click = form.get(ONE_CLICK[0]) == ONE_CLICK[1]
    if not one_click and not channels.signer.check_tag(_CSRF, token, form.get(_CSRF, "")):
        return _invalid(channels, channels.texts["invalid_form"])
    context: dict[str, Any] = {
        "t": channels.texts,
        "token": token,
        "support": channels.support_contact,
        **_labels(channels, claim),
    }
    key = SubjectKey(claim.tenant, claim.subject_id)
    if await _already_out(channels, key, claim):
        return _page("unsubscribed.html", 200, state="already", **context)
    changes = [{"action": "opt_out", "topic": claim.topic, "channel": claim.channel}]
    if not await _first_opt_out(channels, claim, changes, "email"):
        # The same opt-out is on its way (taken moments ago): answered, not published again.
        return _page("unsubscribed.html", 200, state="pending", **context)
    command = _command(
        request,
        claim,
        changes,
        "email",
        "one-click unsubscribe" if one_click else "unsubscribe page",
    )
    try:
        [accepted] = await channels.intake.submit(
            [command], wait_seconds=channels.page_outcome_wait_seconds, **AS_PAGES
        )
    except IntakeRefused as refused:
        log.warning("unsubscribe_refused", reason=refused.error)
        await _forget_opt_outs(channels, claim)
        return _page("unsubscribed.html", 422, state="refused", **context)
    return _page("unsubscribed.html", 200, **_confirmation(accepted), **context)


async def _first_opt_out(
    channels: ChannelsConfig, claim: LinkClaim, changes: list[dict[str, str]], channel: str
) -> bool:
    """Count the opt-out against the subject (never refused) and say whether it is the
    first of its kind within the repeat window (False: absorb it)."""
    throttle = channels.throttle
    if throttle is None:
        return True
    subject = throttle.subject(claim.tenant, claim.subject_id)
    cells = [(c["topic"], c["channel"]) for c in changes]
    if not await throttle.first_opt_out(claim.tenant, claim.subject_id, cells, channel=channel):
        return False
    await throttle.count([("subject_changes", subject)], cost=len(changes))
    return True


async def _forget_opt_outs(channels: ChannelsConfig, claim: LinkClaim) -> None:
    if channels.throttle is not None:
        await channels.throttle.forget_opt_outs(claim.tenant, claim.subject_id)


def _confirmation(accepted: Accepted) -> dict[str, str]:
    outcome = accepted.outcome
    if outcome is None:
        return {"state": "pending"}
    if outcome.status in ("applied", "unchanged", "duplicate"):
        return {"state": "done", "effective_at": _when(outcome)}
    return {"state": "refused"}


async def _already_out(channels: ChannelsConfig, key: SubjectKey, claim: LinkClaim) -> bool:
    """Whether the subject's stored rules already opt out of everything the link covers."""
    catalog = channels.intake.catalog
    topics = (
        [claim.topic]
        if claim.topic != WILDCARD
        else [
            t
            for t in catalog.topics
            if not catalog.is_mandatory(t)
            and (claim.channel == WILDCARD or not catalog.is_data_use(t))
        ]
    )
    state = await channels.decisions.state(key)
    for topic in topics:
        for channel in _channels_of(channels, topic, claim.channel):
            decision = channels.decisions.decide(state, topic, channel)
            if decision.allowed or decision.basis != "rule":
                return False
    return True


def _channels_of(channels: ChannelsConfig, topic: str, channel: str) -> list[str]:
    catalog = channels.intake.catalog
    if catalog.is_data_use(topic):
        return [WILDCARD]
    return sorted(catalog.channels) if channel == WILDCARD else [channel]


def _cell_name(topic: str, channel: str) -> str:
    return f"allow:{topic}:{channel}"


def _preference_rows(
    channels: ChannelsConfig, decisions: dict[tuple[str, str], Decision]
) -> dict[str, Any]:
    catalog = channels.intake.catalog
    t = channels.texts
    message_channels = sorted(catalog.channels)
    message_rows, data_rows = [], []
    for topic in sorted(catalog.topics):
        spec = catalog.topics[topic]
        label = spec.label
        if catalog.is_data_use(topic):
            data_rows.append(
                {
                    "cell": {
                        "id": f"c-{topic}-all".replace(".", "-"),
                        "name": _cell_name(topic, WILDCARD),
                        "allowed": decisions[(topic, WILDCARD)].allowed,
                        "aria": t["data_allowed_label"].format(topic=label),
                    }
                }
            )
            continue
        mandatory = catalog.is_mandatory(topic)
        reason = (
            t["preferences_mandatory"].format(reason=spec.description)
            if spec.description
            else t["preferences_mandatory_default"]
        )
        message_rows.append(
            {
                "label": label,
                "child": "." in topic,
                "mandatory": mandatory,
                "reason": reason,
                "cells": [
                    {
                        "id": f"c-{topic}-{channel}".replace(".", "-"),
                        "name": _cell_name(topic, channel),
                        "allowed": decisions[(topic, channel)].allowed,
                        "aria": t["allowed_label"].format(
                            topic=label, channel=catalog.channel_label(channel)
                        ),
                    }
                    for channel in message_channels
                ],
            }
        )
    return {
        "channels": [{"label": catalog.channel_label(c)} for c in message_channels],
        "message_rows": message_rows,
        "data_rows": data_rows,
    }


async def _preferences_page(
    channels: ChannelsConfig,
    token: str,
    claim: LinkClaim,
    notices: list[str],
    status: int = 200,
    retry_after: int = 0,
) -> HTMLResponse:
    assert channels.signer is not None
    prefs = await channels.decisions.preferences(SubjectKey(claim.tenant, claim.subject_id))
    read_only = claim.purpose != "preferences"
    if read_only:
        notices = [*notices, channels.texts["preferences_read_only"]]
    page = _page(
        "preferences.html",
        status,
        t=channels.texts,
        token=token,
        csrf=channels.signer.tag(_CSRF, token),
        notices=notices,
        read_only=read_only,
        **_preference_rows(channels, prefs.decisions),
    )
    if retry_after:
        page.headers["Retry-After"] = str(retry_after)
    return page


async def _honour_gpc(request: Request, channels: ChannelsConfig, claim: LinkClaim) -> list[str]:
    """Record ``Sec-GPC: 1`` as an opt-out of ``data.sale``, once; the notice says so."""
    catalog = channels.intake.catalog
    if request.headers.get("sec-gpc", "").strip() != "1" or "data.sale" not in catalog.topics:
        return []
    key = SubjectKey(claim.tenant, claim.subject_id)
    decision = await channels.decisions.is_allowed(key, "data.sale", WILDCARD)
    changes = [{"action": "opt_out", "topic": "data.sale", "channel": WILDCARD}]
    if decision.allowed and await _first_opt_out(channels, claim, changes, "web"):
        command = _command(request, claim, changes, "web", "Global Privacy Control")
        try:
            await channels.intake.submit(
                [command], wait_seconds=channels.page_outcome_wait_seconds, **AS_PAGES
            )
        except IntakeRefused:
            await _forget_opt_outs(channels, claim)
            raise
    return [channels.texts["preferences_gpc"]]


_ANY_PURPOSE: tuple[Purpose, ...] = ("unsubscribe", "preferences")


@router.get("/p/{token}")
async def preferences_page(token: str, request: Request, channels: Channels) -> Response:
    claim = await _claim(channels, token, _ANY_PURPOSE)
    if isinstance(claim, HTMLResponse):
        return claim
    # The signal is an opt-out: honoured before any limit, so never turned away.
    notices = await _honour_gpc(request, channels, claim)
    if (refused := await _view_allowed(channels, request, claim)) is not None:
        return refused
    return await _preferences_page(channels, token, claim, notices)


def _wanted_changes(
    channels: ChannelsConfig,
    decisions: dict[tuple[str, str], Decision],
    form: dict[str, str],
) -> list[dict[str, str]]:
    """The changes that make the effective state what the form shows ticked."""
    catalog = channels.intake.catalog
    if form.get("stop_all") == "1":
        return [{"action": "opt_out", "topic": WILDCARD, "channel": WILDCARD}]
    changes = []
    for (topic, channel), decision in sorted(decisions.items()):
        if catalog.is_mandatory(topic):
            continue
        wanted = form.get(_cell_name(topic, channel)) == "1"
        if wanted != decision.allowed:
            action = "opt_in" if wanted else "opt_out"
            changes.append({"action": action, "topic": topic, "channel": channel})
    return changes


async def _admitted_opt_ins(
    channels: ChannelsConfig, request: Request, claim: LinkClaim, opt_ins: int
) -> tuple[str | None, int]:
    """Whether the form's opt-ins may be published: (None, 0) when they may; otherwise the
    notice that says why not and the seconds after which to retry (0: never with this
    link). Counted per address, per link and against the subject's changes."""
    t = channels.texts
    if claim.purpose != "preferences":
        return t["preferences_opt_ins_ignored"], 0
    throttle = channels.throttle
    if throttle is None:
        return None, 0
    verdict = await throttle.check(_view_limits(request, claim))
    if verdict.allowed:
        # Each opt-in books its own row and that of the opt-out that may withdraw it (which
        # is never refused): however opt-ins and opt-outs alternate, the subject's history
        # grows by at most the limit.
        subject = throttle.subject(claim.tenant, claim.subject_id)
        verdict = await throttle.check([("subject_changes", subject)], cost=2 * opt_ins)
    if verdict.allowed:
        return None, 0
    seconds = verdict.retry_after_seconds
    return t["preferences_opt_ins_limited"].format(seconds=seconds), seconds


@router.post("/p/{token}")
async def save_preferences(token: str, request: Request, channels: Channels) -> Response:
    claim = await _claim(channels, token, _ANY_PURPOSE)
    if isinstance(claim, HTMLResponse):
        return claim
    assert channels.signer is not None
    form = await _form(request)
    if not channels.signer.check_tag(_CSRF, token, form.get(_CSRF, "")):
        return _invalid(channels, channels.texts["invalid_form"])
    t = channels.texts
    notices = await _honour_gpc(request, channels, claim)
    prefs = await channels.decisions.preferences(SubjectKey(claim.tenant, claim.subject_id))
    changes = _wanted_changes(channels, prefs.decisions, form)
    if not changes and (refused := await _view_allowed(channels, request, claim)) is not None:
        return refused  # a form that changes nothing is a page view
    opt_outs = [c for c in changes if c["action"] == "opt_out"]
    opt_ins = [c for c in changes if c["action"] == "opt_in"]
    status, retry_after = 200, 0
    if opt_ins:
        refusal, retry_after = await _admitted_opt_ins(channels, request, claim, len(opt_ins))
        if refusal is None:
            # An opt-in goes out: any later opt-out of the subject must be written again.
            await _forget_opt_outs(channels, claim)
            if channels.throttle is not None and opt_outs:
                subject = channels.throttle.subject(claim.tenant, claim.subject_id)
                await channels.throttle.count([("subject_changes", subject)], cost=len(opt_outs))
        else:
            # The opt-outs of the same form are still taken: never turned away.
            changes, opt_ins, notices = opt_outs, [], [*notices, refusal]
            status = 429 if retry_after else 200
    if changes and not opt_ins and not await _first_opt_out(channels, claim, changes, "web"):
        changes = []  # the same opt-outs were taken moments ago: absorbed, not published
    if not changes:
        if status == 200 and not notices:
            notices = [t["preferences_unchanged"]]
        return await _preferences_page(channels, token, claim, notices, status, retry_after)
    # A command holds at most 100 changes; a larger catalog's page saves in several.
    commands = [
        _command(request, claim, changes[i : i + 100], "web", "preference page")
        for i in range(0, len(changes), 100)
    ]
    try:
        accepted = await channels.intake.submit(
            commands, wait_seconds=channels.page_outcome_wait_seconds, **AS_PAGES
        )
    except IntakeRefused as refused:
        log.warning("preferences_refused", reason=refused.error)
        await _forget_opt_outs(channels, claim)
        return _invalid(channels, t["refused_detail"].format(support=channels.support_contact))
    outcomes = [a.outcome for a in accepted if a.outcome is not None]
    if len(outcomes) == len(accepted) and all(o.status != "rejected" for o in outcomes):
        last = max(outcomes, key=lambda o: o.effective_at or datetime.min.replace(tzinfo=UTC))
        notice = t["preferences_saved"].format(effective_at=_when(last))
    else:
        notice = t["preferences_saved_pending"]
    return await _preferences_page(channels, token, claim, [*notices, notice], status, retry_after)
