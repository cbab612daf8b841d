"""pytest plugin: Debian's Chromium driven by Playwright (never Playwright's own browser
download), a page per test at a phone's or a computer's size, screenshots under tests/output/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT_DIR = Path(__file__).parent / "output"
PHONE = {"width": 390, "height": 844}           # a common phone, in CSS pixels
DESKTOP = {"width": 1280, "height": 900}
PAGE_TIMEOUT_MS = 15_000                          # every wait of a page is bounded by this


@pytest.fixture(scope="session")
async def chromium():
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def browser_page(chromium):
    """browser_page(viewport) → a fresh page (its own cookies) in French."""
    contexts = []

    async def make(viewport: dict = DESKTOP, **options):
        context = await chromium.new_context(viewport=viewport, locale="fr-FR", **options)
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        contexts.append(context)
        return await context.new_page()
    yield make
    for context in contexts:
        await context.close()


async def screenshot(page, name: str) -> Path:
    """The page as the user sees it, kept for the reviewer (tests/output/, git-ignored)."""
    OUTPUT_DIR.mkdir(exist_ok=True)
    path = OUTPUT_DIR / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
