"""Readable contrast (WCAG AA, 4.5:1) for every text on the participant pages, and every control reachable by
keyboard, measured in Chromium on a phone-sized screen."""

from __future__ import annotations

import pytest
from django.utils import timezone

from research_portal.capture.models import ParticipantSession

pytestmark = pytest.mark.e2e

# For each visible element with its own text: its colour against the first opaque background behind it.
CONTRAST_SCRIPT = """() => {
  const rgb = (value) => (value.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  };
  const background = (element) => {
    for (let node = element; node; node = node.parentElement) {
      const color = rgb(getComputedStyle(node).backgroundColor);
      if (color.length === 3 || (color.length === 4 && color[3] === 1)) return color.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const results = [];
  for (const element of document.querySelectorAll("body *")) {
    const ownText = [...element.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const box = element.getBoundingClientRect();
    const style = getComputedStyle(element);
    if (!ownText || box.width === 0 || box.height === 0 || style.visibility === "hidden") continue;
    const [l1, l2] = [luminance(rgb(style.color).slice(0, 3)), luminance(background(element))];
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    results.push({ text: element.textContent.trim().slice(0, 40), ratio: Math.round(ratio * 100) / 100 });
  }
  return results;
}"""


def pages(asgi_server: str, acme) -> dict[str, str]:
    consenting = ParticipantSession.objects.create(study=acme.study, language="en")
    checking = ParticipantSession.objects.create(study=acme.study, state="consented")
    watching = ParticipantSession.objects.create(
        study=acme.study, state="consented", checks_passed_at=timezone.now(), ad_sequence=[acme.ad.pk]
    )
    ended = ParticipantSession.objects.create(study=acme.study, state="completed")
    return {
        "consent": f"{asgi_server}/p/{consenting.token}/consent/",
        "check": f"{asgi_server}/p/{checking.token}/check/",
        "watch": f"{asgi_server}/p/{watching.token}/watch/",
        "end": f"{asgi_server}/p/{ended.token}/end/",
        "refused": f"{asgi_server}/s/{acme.study.public_id}/?pid=x&c=FR",
    }


def test_participant_pages_have_readable_contrast_and_keyboard_controls(acme, asgi_server, browser):
    page = browser.new_page(viewport={"width": 390, "height": 844})
    for name, url in pages(asgi_server, acme).items():
        page.goto(url)
        texts = page.evaluate(CONTRAST_SCRIPT)
        assert texts, f"{name}: no text measured"
        low = [text for text in texts if text["ratio"] < 4.5]
        assert not low, f"{name}: text below 4.5:1 contrast: {low}"
        controls = page.evaluate(
            "() => [...document.querySelectorAll('button, a[href], input, select, textarea')]"
            ".filter((e) => e.getBoundingClientRect().width > 0)"
            ".map((e) => ({id: e.id || e.textContent.trim(), tabIndex: e.tabIndex}))"
        )
        assert all(control["tabIndex"] >= 0 for control in controls), f"{name}: {controls}"
        # Tabbing from the top reaches every visible control.
        reached = set()
        for _ in range(len(controls) + 2):
            page.keyboard.press("Tab")
            reached.add(
                page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")
            )
        assert {control["id"] for control in controls} <= reached, f"{name}: not reachable by Tab"
