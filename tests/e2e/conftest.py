"""Browser fixtures: Debian's chromium driven by Playwright, with a fake webcam of a real face."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.resources import shared_dir
from tests.support.services import require_file


@pytest.fixture(scope="session")
def fake_camera() -> Path:
    return require_file(shared_dir() / "media" / "liveportrait_d3_640x480_15fps_8s.mjpeg", "fake webcam")


@pytest.fixture(scope="session")
def dark_camera(fake_camera: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same face filmed in a dark room: an MJPEG (concatenated JPEGs) at 8% brightness."""
    capture = cv2.VideoCapture(str(fake_camera))
    frames = []
    while len(frames) < 60:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.imencode(".jpg", (frame * 0.08).astype(np.uint8))[1].tobytes())
    capture.release()
    path = tmp_path_factory.mktemp("camera") / "dark-room.mjpeg"
    path.write_bytes(b"".join(frames))
    return path


@pytest.fixture
def launch_browser(chromium_path: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], object]]:
    """Launches Debian's chromium with a given file as the fake webcam; closes everything afterwards."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps its own event loop in this thread; the test's ORM queries are still plain
    # blocking calls, so Django's async-safety guard does not apply here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        launched = []

        def launch(camera_file: Path) -> object:
            args = [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={camera_file}",
            ]
            launched.append(playwright.chromium.launch(executable_path=chromium_path, args=args))
            return launched[-1]

        yield launch
        for browser in launched:
            browser.close()


@pytest.fixture
def browser(launch_browser: Callable[[Path], object], fake_camera: Path) -> object:
    return launch_browser(fake_camera)


def screenshot(page, folder: Path | None, name: str) -> None:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=folder / f"{name}.png", full_page=True)


def walk_through_study(
    page,
    link: str,
    artifacts: Path | None = None,
    end_url_glob: str = "",
    resend_after_ms: int | None = None,
    close_at_end: bool = False,
) -> None:
    """A participant's whole journey by keyboard: consent, camera check, baseline and ads, end page.
    `resend_after_ms`: the resend delay the page must have taken from the server's `hello` while viewing.
    `close_at_end`: the participant closes the tab as soon as the end page opens (nothing polls /outcome)."""
    page.goto(link)
    page.wait_for_selector("#accept")
    screenshot(page, artifacts, "1-consent")
    page.focus("#accept")
    page.keyboard.press("Enter")
    page.wait_for_selector("#start-check")
    page.focus("#start-check")
    page.keyboard.press("Enter")
    page.wait_for_function("document.body.dataset.checkProblems !== undefined", timeout=15_000)
    screenshot(page, artifacts, "2-check")
    page.wait_for_url("**/watch/", timeout=30_000)
    page.focus("#start")
    page.keyboard.press("Enter")
    page.wait_for_selector("#baseline:not([hidden])", timeout=10_000)
    screenshot(page, artifacts, "3-baseline")
    page.wait_for_selector("#ad:not([hidden])", timeout=20_000)
    page.wait_for_function("Number(document.body.dataset.framesSent) >= 30", timeout=20_000)
    if resend_after_ms is not None:
        assert page.evaluate("document.body.dataset.resendAfterMs") == str(resend_after_ms)
    screenshot(page, artifacts, "4-ad")
    page.wait_for_url("**/end/", timeout=60_000)
    if close_at_end:
        page.close()
        return
    if end_url_glob:
        screenshot(page, artifacts, "5-end")
        page.wait_for_url(end_url_glob, timeout=60_000)
    else:
        # Without a panel redirect the end page reloads itself once the session is validated.
        page.wait_for_selector("#outcome", state="attached", timeout=60_000)
        screenshot(page, artifacts, "5-end")
