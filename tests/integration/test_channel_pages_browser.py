"""The pages in a real browser (Debian's chromium through Playwright): what a person sees,
whether it is accessible (axe-core, no serious or critical violation), whether it works
without script under its Content-Security-Policy, and how fast a press of the button
becomes the sender's "no".

Screenshots land in ``test-artifacts/channels/`` (ignored by git), desktop and phone-sized.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize

from service.client import OptoutClient
from service.domain.link_tokens import LinkClaim
from service.settings import Settings
from tests.support.browser import chromium, screenshot, serious_violations
from tests.support.channels import (
    Running,
    channel_settings,
    http_client,
    link_path,
    published,
    running,
)

pytestmark = pytest.mark.integration

PHONE: ViewportSize = {"width": 390, "height": 844}


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Running]:
    async with running(channel_settings(settings)) as found:
        yield found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as found:
        yield found


async def context(browser: Browser, **options: object) -> BrowserContext:
    return await browser.new_context(java_script_enabled=False, **options)  # type: ignore[arg-type]


async def check_accessibility(browser: Browser, url: str, name: str) -> None:
    """axe needs script (and must get past the CSP): a separate context allows both."""
    audit = await browser.new_context(bypass_csp=True, viewport=PHONE)
    try:
        page = await audit.new_page()
        await page.goto(url)
        await screenshot(page, f"{name}-phone")
        assert await serious_violations(page) == [], name
    finally:
        await audit.close()


def watch_console(page: Page) -> list[str]:
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))
    return messages


async def test_unsubscribe_page_button_and_confirmation(service: Running, browser: Browser) -> None:
    subject = "browser-person"
    url = service.base_url + link_path(
        LinkClaim("default", subject, "marketing.newsletter", "email", int(time.time()))
    )
    ctx = await context(browser)
    async with await OptoutClient.connect(service.settings) as sdk:
        page = await ctx.new_page()
        console = watch_console(page)
        # One command first, so the measured one finds producer and consumer warm.
        warm = link_path(LinkClaim("default", "warm-up", "marketing", "email", int(time.time())))
        async with http_client(service.base_url) as http:
            await http.post(warm, content=b"List-Unsubscribe=One-Click")
        before = await published(service.settings)
        await page.goto(url)
        assert await page.locator("h1").inner_text() == "Stop these messages?"
        assert "Newsletter" in await page.locator("#what").inner_text()
        assert "Email" in await page.locator("#what").inner_text()
        await screenshot(page, "unsubscribe")
        await check_accessibility(browser, url, "unsubscribe")
        assert await published(service.settings) == before  # viewing changed nothing
        assert (await sdk.is_allowed(subject, "marketing.newsletter", "email")).allowed

        pressed = time.perf_counter()
        await page.get_by_role("button", name="Unsubscribe").click()
        clicked = time.perf_counter()
        while (await sdk.is_allowed(subject, "marketing.newsletter", "email")).allowed:
            assert time.perf_counter() - pressed < 5
            await asyncio.sleep(0.001)
        flipped = time.perf_counter() - pressed
        await page.wait_for_selector("#effective")
        print(
            f"\nbutton press to the SDK saying no: {flipped * 1000:.1f} ms"
            f" (the click returned after {(clicked - pressed) * 1000:.1f} ms)"
        )
        assert await page.locator("h1").inner_text() == "You are unsubscribed"
        await screenshot(page, "unsubscribed")
        await check_accessibility(browser, url, "already-unsubscribed")
        await page.goto(url)  # the link again: says so, and offers nothing to press
        assert await page.locator("h1").inner_text() == "You are already unsubscribed"
        assert await page.get_by_role("button").count() == 0
        assert not [m for m in console if "Content Security Policy" in m]
    await ctx.close()


async def test_invalid_link_page(service: Running, browser: Browser) -> None:
    url = service.base_url + link_path(
        LinkClaim("default", "x", "marketing", "email", int(time.time()) - 100 * 86_400)
    )
    ctx = await context(browser)
    page = await ctx.new_page()
    answer = await page.goto(url)
    assert answer is not None
    assert answer.status == 400
    assert "expired" in await page.locator("#why").inner_text()
    await screenshot(page, "invalid")
    await check_accessibility(browser, url, "invalid")
    await ctx.close()


async def test_preference_page_toggles_and_gpc(service: Running, browser: Browser) -> None:
    subject = "browser-prefs"
    token_path = link_path(LinkClaim("default", subject, "marketing", "email", int(time.time())))
    url = service.base_url + token_path.replace("/u/", "/p/")
    ctx = await context(browser, extra_http_headers={"Sec-GPC": "1"})
    async with await OptoutClient.connect(service.settings, local_cache=False) as sdk:
        page = await ctx.new_page()
        await page.goto(url)
        assert "Global Privacy Control" in await page.locator(".notice").first.inner_text()
        locked = page.get_by_label("Receive Security alerts by Email")
        assert await locked.is_disabled()
        assert await locked.is_checked()
        promo_sms = page.get_by_label("Receive Promotions and offers by Text messages (SMS)")
        assert await promo_sms.is_checked()
        await screenshot(page, "preferences")
        await promo_sms.uncheck()
        await page.get_by_role("button", name="Save my choices").click()
        await page.wait_for_selector("text=Your choices are saved")
        assert not await page.get_by_label(
            "Receive Promotions and offers by Text messages (SMS)"
        ).is_checked()
        assert not (await sdk.is_allowed(subject, "marketing.promotions", "sms")).allowed
        assert (await sdk.is_allowed(subject, "marketing.promotions", "email")).allowed
        assert not (await sdk.is_allowed(subject, "data.sale", "*")).allowed
        await screenshot(page, "preferences-saved")
    await check_accessibility(browser, url, "preferences")
    await ctx.close()
