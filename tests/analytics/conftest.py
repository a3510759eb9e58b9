"""Analytics fixtures: a browser for the dashboards, and inline rollup refreshes. The people (`analysts`)
and the hand-computed readings (`hand_fixture`) are shared: tests/conftest.py, tests/support."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def analyst_browser(chromium_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Debian's chromium via Playwright (no camera needed: analysts only look)."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's ORM calls still block as usual.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


@pytest.fixture
def inline_refresh(deployment_mode):
    """Session changes re-file rollups inline (embedded mode), not through a Celery worker."""
    deployment_mode.embedded()
