"""A real browser for the page tests: Debian's chromium driven by Playwright (no browser
download), axe-core injected for the accessibility check, screenshots kept as artifacts.

axe-core is vendored (``tests/support/axe/axe.min.js``, version 4.11.0, MPL-2.0, its
licence beside it) so the tests run offline.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

ROOT = Path(__file__).resolve().parents[2]
AXE = Path(__file__).resolve().parent / "axe" / "axe.min.js"
ARTIFACTS = ROOT / "test-artifacts" / "channels"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    path = chromium_path()
    assert path is not None, "Debian's chromium is missing: deploy/local/stack up installs it"
    async with async_playwright() as playwright:
        # Playwright gives every launch a fresh temporary profile (user data dir).
        browser = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(target), full_page=True)
    return target


async def serious_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's violations of impact serious or critical on the page as it is now."""
    await page.add_script_tag(path=str(AXE))
    result: dict[str, Any] = await page.evaluate("async () => await axe.run(document)")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": len(v["nodes"]), "help": v["help"]}
        for v in result["violations"]
        if v.get("impact") in ("serious", "critical")
    ]
