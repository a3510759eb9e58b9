"""The ad's report (analytics/report.py) as a stakeholder reads it: a PDF of the dashboard's own numbers for
the dashboard's filters, downloaded through the view (access, 400s, audit), read back with pypdf (pages,
text, metadata) and PDFium (where the text lies on the page)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import UTC, datetime

import pypdf
import pypdfium2
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from inference.resources import REPO_ROOT
from research_portal.analytics.dashboard import build_ad_dashboard
from research_portal.analytics.report import (
    PAGE_H,
    PAGE_W,
    Column,
    Pages,
    Row,
    build_ad_report,
    fixed,
    load_report_data,
    percent,
    wrap,
)
from research_portal.analytics.services import parse_filters
from research_portal.capture.storage import store_results
from research_portal.countries import country_label
from research_portal.privacy.models import AuditLog
from research_portal.studies.models import Ad
from tests.support.readings import MODEL, T0, FrameWriter, new_participant

ARTIFACTS = REPO_ROOT / "test-artifacts"
# Smile per second of a 4 s ad: Germany's audience smiles in second 1, the United States' hardly.
SHAPES = {"DE": [0.2, 0.8, 0.25, 0.2], "US": [0.2, 0.3, 0.25, 0.2]}
SCORECARD_LABELS = (
    "Mean valence",
    "Mean peak smile",
    "Share who smiled",
    "Mean expressiveness",
    "Mean attention",
)


def seed(study, ad, shapes: dict[str, list[float]] = SHAPES, per_country: int = 6) -> None:
    """`per_country` validated participants per country, each with baseline frames and three readings per
    second of `shapes` (spread a little across participants)."""
    for country, shape in shapes.items():
        for index in range(per_country):
            done = {"checks_passed_at": T0, "viewing_ended_at": T0}
            writer = FrameWriter(new_participant(study, country, state="completed", **done))
            rows = writer.frames(None, 0, [0.1, 0.12, 0.1])
            jitter = (index - (per_country - 1) / 2) * 0.03
            for second, level in enumerate(shape):
                rows += writer.frames(
                    ad, second, [level + jitter - 0.02, level + jitter, level + jitter + 0.02]
                )
            store_results(rows)


def report_url(ad, query: str = "") -> str:
    return reverse("analytics:ad-report", args=[ad.pk]) + (f"?{query}" if query else "")


def pdf_pages(pdf: bytes) -> list[str]:
    """Each page's text, whitespace (line breaks of wrapped text included) as single spaces."""
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    return [" ".join(page.extract_text().split()) for page in reader.pages]


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_an_analyst_downloads_the_report_with_the_dashboards_numbers(client, analysts, acme):
    seed(acme.study, acme.ad)
    client.force_login(analysts.acme)
    response = client.get(report_url(acme.ad))
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    assert response["Content-Disposition"] == f'attachment; filename="ad-{acme.ad.pk}-report.pdf"'
    pdf = response.content
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ad-report.pdf").write_bytes(pdf)
    entry = AuditLog.objects.get(action=AuditLog.Action.EXPORT, detail__export="report")
    assert entry.actor == analysts.acme and entry.study == acme.study
    assert entry.detail["format"] == "pdf" and entry.detail["ad"] == acme.ad.pk

    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert (
        reader.metadata.title == "Spring ad: ad report"
        and reader.metadata.subject == f"Model version {MODEL}"
    )
    created = reader.metadata.creation_date.astimezone(UTC)
    assert abs((datetime.now(UTC) - created).total_seconds()) < 120
    pages = pdf_pages(pdf)
    total = len(pages)
    assert total >= 3  # the summary page, the traces, the countries
    for number, text in enumerate(pages, start=1):  # the footer
        assert f"Spring ad · model version {MODEL}" in text and f"Page {number} of {total}" in text

    # The dashboard's payload for the same filters: the PDF must say what the page says.
    payload = build_ad_dashboard(acme.ad, parse_filters({}))
    first = pages[0]
    assert first.startswith("Spring ad Spring campaign · Acme Research")
    assert f"model version {MODEL}" in first and "UTC" in first
    assert "Participants (n) 12" in first and payload["totals"]["participants"] == 12
    assert f"Frames analysed {payload['totals']['frames']}" in first and "Ad length 4.0 s" in first
    assert "Countries all" in first and "not baseline-corrected (raw scores)" in first
    scorecard = payload["scorecard"]
    assert f"validated participants with a reading: n = {scorecard['n']}" in first and scorecard["n"] == 12
    for label in SCORECARD_LABELS:
        assert label in first
    valence = scorecard["figures"][0]
    assert f"Mean valence {fixed(valence['value'])} too few ads" in first  # no other ad in Acme's norm
    assert one_line(scorecard["norm"]["description"]) in first
    moments = payload["moments"]
    assert moments and moments[0]["second"] == 1 and moments[0]["kind"] == "peak"
    for moment in moments:
        assert one_line(moment["reason"]) in first and moment["time"] in first
    assert one_line(payload["moment_rule"]) in first

    traces = next(text for text in pages if "Traces: mean per second" in text)
    assert "How to read this report" in traces and "95% confidence interval" in traces
    assert "Smile and Valence per second" in traces and "Time in ad (s)" in traces
    assert "Score minus baseline" not in traces
    charts = " ".join(pages[1:])
    assert "Attention and retention" in charts and "Retained" in charts and "Expressiveness" in charts
    assert "The other emotions the model reads" in charts and "Anger" in charts and "Contempt" in charts

    countries = next(text for text in pages if "Country comparison: Smile" in text)
    comparison = payload["comparison"]
    assert comparison["countries"] == ["DE", "US"] and comparison["significant_seconds"] == [1]
    assert (
        f"Welch t-test of Smile per second, Germany (DE) vs United States (US): 1 of "
        f"{comparison['tested_seconds']} testable seconds differ ({comparison['correction_label']})."
    ) in countries
    assert "Difference Germany (DE) − United States (US) per second" in countries
    assert "Summary by country" in countries
    for row in payload["summary"]:  # All, DE, US: participants and mean valence with its CI
        label = "All" if row["country"] == "All" else country_label(row["country"])
        valence = f"{fixed(row['mean_valence'])} [{fixed(row['valence_low'])}, {fixed(row['valence_high'])}]"
        assert f"{label} {row['participants']} {valence}" in countries
        assert percent(row["smiled_share"]) in countries


def test_the_filters_shape_the_report(client, analysts, acme):
    seed(acme.study, acme.ad)
    client.force_login(analysts.acme)
    germany = pdf_pages(client.get(report_url(acme.ad, "country=DE&quality=0.5&completed=1")).content)
    assert "Countries Germany (DE)" in germany[0] and "Participants (n) 6" in germany[0]
    assert "Min. face quality ≥ 0.5" in germany[0] and "Validated completes only yes" in germany[0]
    countries = next(text for text in germany if "Country comparison" in text)
    assert "No country comparison: it needs participants from at least two countries" in countries
    assert "Welch" not in countries and "United States" not in countries

    corrected = pdf_pages(
        client.get(report_url(acme.ad, "baseline=1&measure=valence&correction=holm")).content
    )
    assert "baseline-corrected: each participant's own baseline is subtracted" in corrected[0]
    assert "Compared measure Valence" in corrected[0] and "Holm FWER p < 0.05" in corrected[0]
    traces = next(text for text in corrected if "Traces: mean per second" in text)
    assert "(minus each participant's baseline)" in traces and "Score minus baseline" in traces
    countries = next(text for text in corrected if "Country comparison: Valence" in text)
    assert "Welch t-test of Valence per second" in countries and "Valence minus baseline" in countries
    assert "(Holm FWER p < 0.05)" in countries


def test_only_the_organisations_signed_in_analysts_get_it_and_bad_filters_are_refused(client, analysts, acme):
    url = report_url(acme.ad)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(f"{settings.LOGIN_URL}?next=")
    client.force_login(analysts.other)  # Charlie, of Rival Insights
    assert client.get(url).status_code == 404
    client.force_login(analysts.acme)
    refused = client.get(report_url(acme.ad, "compare=DE&compare=DE"))
    assert refused.status_code == 400 and refused["Content-Type"].startswith("text/plain")
    assert "Compare two different countries" in refused.content.decode()
    assert client.get(report_url(acme.ad, "quality=%00")).status_code == 400
    assert not AuditLog.objects.filter(action=AuditLog.Action.EXPORT).exists()  # nothing was exported


def test_an_ad_without_readings_gives_a_pdf_that_says_so(client, analysts, acme):
    client.force_login(analysts.acme)
    response = client.get(report_url(acme.ad))
    assert response.status_code == 200
    pages = pdf_pages(response.content)
    assert "No readings yet: no participant's frames of this ad have been analysed." in pages[0]
    assert "Participants (n) 0" in pages[0] and "No second stands out." in pages[0]
    assert "How to read this report" in " ".join(pages)
    assert pages[-1].endswith(f"Page {len(pages)} of {len(pages)}")
    seed(acme.study, acme.ad)
    filtered = pdf_pages(client.get(report_url(acme.ad, "country=JP")).content)
    assert "No readings for these filters" in filtered[0]


def text_boxes(pdf: bytes) -> list[tuple[int, str, tuple[float, float, float, float]]]:
    """Every character PDFium finds, with its page and box (left, bottom, right, top) in points."""
    document = pypdfium2.PdfDocument(pdf)
    boxes = []
    for index in range(len(document)):
        text = document[index].get_textpage()
        for char in range(text.count_chars()):
            glyph = text.get_text_range(char, 1)
            if glyph.strip():
                boxes.append((index, glyph, text.get_charbox(char)))
    return boxes


def test_long_titles_and_many_countries_stay_on_the_page(client, analysts, acme):
    """A 200-character title, twelve countries: every character inside the page's margins, the summary
    table whole (one row per country), the legend naming each."""
    title = ("The very long spring campaign ad with a $5 offer, " * 4)[:200]
    ad = Ad.objects.create(study=acme.study, title=title, video="ads/x.webm", duration_ms=4000)
    codes = ["DE", "US", "JP", "FR", "GB", "IT", "ES", "NL", "BR", "MX", "KR", "BO"]
    shapes = {code: [0.2, 0.3 + 0.04 * index, 0.25, 0.2] for index, code in enumerate(codes)}
    seed(acme.study, ad, shapes, per_country=2)
    client.force_login(analysts.acme)
    pdf = client.get(report_url(ad)).content
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ad-report-long-title-12-countries.pdf").write_bytes(pdf)
    margin = 0.3 * 72
    for page, glyph, (left, bottom, right, top) in text_boxes(pdf):
        assert margin <= left and right <= PAGE_W * 72 - margin, (page, glyph, left, right)
        assert margin <= bottom and top <= PAGE_H * 72 - margin, (page, glyph, bottom, top)
    pages = pdf_pages(pdf)
    assert one_line(title) in pages[0]  # wrapped over lines, every word there
    assert "$5 offer" in pages[0]  # no TeX made of the dollar signs
    assert pages[0].endswith(f"Page 1 of {len(pages)}") and "…" in pages[0]  # the footer's title is cut
    summary = " ".join(pages[2:])
    for code in codes:
        assert summary.count(country_label(code)) >= 2  # in the chart's legend and in the table


def test_tables_continue_on_the_next_page_and_text_wraps():
    pages = Pages(footer="footer")
    pages.new_page()
    pages.table([Column("Second", 1.0), Column("Note", 5.0)], [Row([str(i), f"row {i}"]) for i in range(150)])
    pdf = pages.finish({"Title": "t"})
    texts = pdf_pages(pdf)
    assert len(texts) >= 3 and all("Page" in text for text in texts)
    assert "(continued)" in texts[1] and texts[1].count("Second Note") == 1  # the header again
    assert "row 0" in texts[0] and "row 149" in texts[-1]
    lines = wrap("a " * 300 + "x" * 400, 2.0, 9)
    assert len(lines) > 5 and "".join(lines).replace(" ", "") == "a" * 300 + "x" * 400


def test_numbers_round_as_the_dashboard_rounds_them():
    """JavaScript's toFixed rounds halves away from zero; Python's format would show 6.2 where the page
    shows 6.3."""
    assert fixed(0.0625) == "0.063" and fixed(-0.0625) == "-0.063" and percent(0.0625) == "6.3 %"
    assert fixed(None) == "—" and fixed(float("nan")) == "—" and fixed(-0.0) == "0.000"
    assert fixed(0.1234, 1) == "0.1"


def test_a_read_only_home_does_not_break_matplotlib(tmp_path):
    """The container's user has no writable home: the report keeps matplotlib's font cache in a private
    folder of the temporary directory instead of warning and rebuilding it in every process."""
    home = tmp_path / "home-is-a-file"
    home.write_text("")  # nothing can be made inside it, not even by root
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MPL", "XDG_"))}
    env |= {"HOME": str(home), "TMPDIR": str(temp), "DJANGO_SETTINGS_MODULE": "research_portal.settings"}
    script = (
        "import django, os; django.setup(); from research_portal.analytics import report; "
        "pages = report.Pages(footer='f'); pages.new_page(); pages.text('hello'); "
        "assert pages.finish({}).startswith(b'%PDF'); print(os.environ['MPLCONFIGDIR'])"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    folder = temp / f"facecode-matplotlib-{os.getuid()}"
    assert run.stdout.strip() == str(folder) and "temporary cache directory" not in run.stderr
    assert list(folder.glob("fontlist-*.json"))  # the cache, kept for the next process
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_build_ad_report_is_the_bytes_the_view_sends(acme):
    seed(acme.study, acme.ad, per_country=3)
    pdf = build_ad_report(acme.ad, parse_filters({"country": ["US"]}))
    assert pypdf.PdfReader(io.BytesIO(pdf)).pages and "Countries United States (US)" in pdf_pages(pdf)[0]


def test_the_report_reads_the_rollups_once_as_the_dashboard_does(acme):
    """The PDF is drawn from the dashboard's own readings (dashboard.load_ad_readings), not a second read."""
    seed(acme.study, acme.ad, per_country=3)
    filters = parse_filters({"baseline": ["1"]})
    with CaptureQueriesContext(connection) as dashboard:
        payload = build_ad_dashboard(acme.ad, filters)
    with CaptureQueriesContext(connection) as report:
        data = load_report_data(acme.ad, filters)
    assert len(report.captured_queries) == len(dashboard.captured_queries)
    assert {**data.payload, "generated_at": None} == {**payload, "generated_at": None}
