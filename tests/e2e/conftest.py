"""Browser fixtures: Debian's chromium driven by Playwright, with a fake webcam of a real face."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.resources import shared_dir
from tests.conftest import require_file


@pytest.fixture(scope="session")
def fake_camera() -> Path:
    return require_file(shared_dir() / "media" / "liveportrait_d3_640x480_15fps_8s.mjpeg", "fake webcam")


@pytest.fixture
def browser(chromium_path: str, fake_camera: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps its own event loop in this thread; the test's ORM queries are still plain
    # blocking calls, so Django's async-safety guard does not apply here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={fake_camera}",
    ]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path, args=args)
        yield launched
        launched.close()
