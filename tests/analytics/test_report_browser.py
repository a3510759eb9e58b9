"""End to end: an analyst on the ad dashboard in headless Debian Chromium (a real daphne on Postgres and
Redis) clicks "Report (PDF)" and gets the file a stakeholder will read. Its pages are read back with pypdf
(text) and drawn with PDFium, Chromium's own PDF engine (pypdfium2): the charts must hold their lines and
coloured 95% bands, not blank boxes. A filter changed on the page changes the report's link and its PDF.
The pages go to test-artifacts/ as PNGs."""

from __future__ import annotations

import io

import numpy as np
import pypdf
import pypdfium2
import pytest
from django.db import connections

from tests.analytics.test_dashboard_browser import ARTIFACTS, signed_in_page
from tests.analytics.test_report import pdf_pages, seed

pytestmark = pytest.mark.e2e

# On white, at the figures' alpha 0.2: the smile band (figures.MEASURE_COLORS "#E69F00") and the valence band
# ("#0072B2"); the shading of significant seconds (figures.SIGNIFICANT_FILL, alpha 0.22 of #FFB300).
SMILE_LINE, SMILE_BAND = (230, 159, 0), (250, 236, 204)
VALENCE_LINE, VALENCE_BAND = (0, 114, 178), (204, 227, 240)
GERMANY_LINE, UNITED_STATES_LINE = (31, 119, 180), (214, 39, 40)  # figures.COUNTRY_COLORS 0 and 1
SIGNIFICANT_SHADE = (255, 238, 199)


def download_report(page) -> tuple[str, bytes]:
    with page.expect_download(timeout=30_000) as download_info:
        page.click("#report-pdf")
    download = download_info.value
    assert download.failure() is None
    with open(download.path(), "rb") as file:
        return download.suggested_filename, file.read()


def rendered_pages(pdf: bytes, name: str) -> list[np.ndarray]:
    """Each page drawn by PDFium at 144 dpi as RGB pixels, also saved as test-artifacts/NAME-N.png."""
    document = pypdfium2.PdfDocument(pdf)
    images = []
    for index in range(len(document)):
        image = document[index].render(scale=2).to_pil().convert("RGB")
        image.save(ARTIFACTS / f"{name}-{index + 1}.png")
        images.append(np.asarray(image))
    return images


def pixels_like(image: np.ndarray, color: tuple[int, int, int], tolerance: int = 6) -> int:
    return int((np.abs(image.astype(int) - np.array(color)).max(axis=2) <= tolerance).sum())


def test_the_report_button_downloads_the_dashboard_as_a_pdf(
    acme, analysts, asgi_server, analyst_browser, client
):
    ARTIFACTS.mkdir(exist_ok=True)
    seed(acme.study, acme.ad)
    page = signed_in_page(analyst_browser, client, analysts.acme, asgi_server)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{asgi_server}/analytics/ads/{acme.ad.pk}/")
    page.wait_for_selector("#fig-trace .main-svg", timeout=20_000)
    button = page.locator("#report-pdf")
    assert button.inner_text() == "Report (PDF)"
    assert button.get_attribute("href") == f"/analytics/ads/{acme.ad.pk}/report.pdf"

    filename, pdf = download_report(page)
    assert filename == f"ad-{acme.ad.pk}-report.pdf"
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) >= 3 and reader.metadata.title == "Spring ad: ad report"
    for pdf_page in reader.pages:  # A4 portrait
        assert float(pdf_page.mediabox.width) == pytest.approx(595.4, abs=1)
        assert float(pdf_page.mediabox.height) == pytest.approx(841.7, abs=1)
    texts = pdf_pages(pdf)
    assert texts[0].startswith("Spring ad") and "Participants (n) 12" in texts[0]
    # The numbers the page shows: the scorecard's n and the first key moment, as the dashboard lists them.
    assert page.locator("#scorecard-n").inner_text() == "12" and "n = 12" in texts[0]
    first_reason = page.locator("#moments tr.why td").first.inner_text()
    assert " ".join(first_reason.split()) in texts[0]
    traces_index = next(i for i, text in enumerate(texts) if "Traces: mean per second" in text)
    countries_index = next(i for i, text in enumerate(texts) if "Country comparison: Smile" in text)
    assert page.locator("#comparison-note").inner_text().split(" Seconds where")[0] in texts[countries_index]

    images = rendered_pages(pdf, "ad-report-page")
    for image in images:  # every page drawn, none blank
        assert (image.min(axis=2) < 200).sum() > 2_000
    traces = images[traces_index]
    # The smile and valence lines with their bands, and the grey n bars (figures.N_COLOR #9aa5b1).
    assert pixels_like(traces, SMILE_LINE, 30) > 300 and pixels_like(traces, SMILE_BAND) > 3_000
    assert pixels_like(traces, VALENCE_LINE, 30) > 300 and pixels_like(traces, VALENCE_BAND) > 3_000
    assert pixels_like(traces, (154, 165, 177)) > 20_000
    countries = images[countries_index]
    assert (
        pixels_like(countries, GERMANY_LINE, 30) > 300
        and pixels_like(countries, UNITED_STATES_LINE, 30) > 300
    )
    assert pixels_like(countries, SIGNIFICANT_SHADE, 4) > 5_000  # second 1 shaded: DE and US differ

    # The baseline switch recomputes the page and re-points the button; the PDF follows.
    rendered = int(page.evaluate("document.getElementById('dashboard').dataset.rendered"))
    page.check("input[name=baseline]")
    page.wait_for_function(f"Number(document.getElementById('dashboard').dataset.rendered) > {rendered}")
    href = button.get_attribute("href")
    assert href.startswith(f"/analytics/ads/{acme.ad.pk}/report.pdf?") and "baseline=1" in href
    _filename, corrected = download_report(page)
    corrected_texts = pdf_pages(corrected)
    assert "baseline-corrected: each participant's own baseline is subtracted" in corrected_texts[0]
    assert any("Score minus baseline" in text for text in corrected_texts)
    assert "not baseline-corrected" not in corrected_texts[0]
    rendered_pages(corrected, "ad-report-baseline-page")
    assert errors == []
    connections.close_all()  # opened under Playwright's greenlet context, which pytest-django cannot see
