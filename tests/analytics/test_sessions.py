"""The per-participant drill-down: the study's session list (figures per row from hand-made readings, one
set of queries per page whatever its size, filters, pages), a session's own page (traces, events, links to
its data), its frame export, and who may see any of it."""

from __future__ import annotations

import csv
import io
import sqlite3
from dataclasses import dataclass

import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from research_portal.analytics.exports import frame_header
from research_portal.analytics.sessions import PAGE_SIZE, frame_figures_sql
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.capture.readings import READING_LABELS
from research_portal.privacy.models import AuditLog
from research_portal.studies.models import ConsentVersion
from tests.support.readings import SEVEN_LABELS, FrameWriter, new_participant


@dataclass
class Drill:
    study: object
    ad: object
    a: ParticipantSession  # DE, completed, consent v2: 6 frames, 5 with a face, a baseline
    b: ParticipantSession  # US, failed: 5 frames, 3 with a face, no baseline
    c: ParticipantSession  # JP, started: no frame
    preview: ParticipantSession
    stranger: ParticipantSession  # a session of Acme's other study


@pytest.fixture
def drill(acme) -> Drill:
    """Hand-made readings (quality per store call; None: no face):

    A: baseline 0.1 (q 0.2) | s0: 0.5, None (q 0.6) | s1: 0.3 (q 0.8), 0.9 (q 0.9) | s2: 0.5 (quality unknown)
       -> 6 frames, 5 with a face; known qualities 0.2 0.6 0.8 0.9 -> median 0.7
    B: s0: None, None, 0.4 (q 0.3) | s1: 0.6 (q 0.5) | s2: 0.2 (q 0.4)
       -> 5 frames, 3 with a face; median of 0.3 0.4 0.5 = 0.4
    """
    consent = ConsentVersion.objects.create(study=acme.study, version=2, language="de", text="Ja.")
    a = new_participant(
        acme.study,
        "DE",
        state="completed",
        external_participant_id="panel-a",
        consent_version=consent,
        ad_sequence=[acme.ad.pk],
    )
    b = new_participant(
        acme.study,
        "US",
        state="failed",
        device="mobile",
        external_participant_id="panel-b",
        exclusion_reason="not enough usable frames: Spring ad: 3 of 20",
        ad_sequence=[acme.ad.pk],
    )
    c = new_participant(acme.study, "JP", state="started", external_participant_id="panel-c", consent_at=None)
    preview = new_participant(acme.study, "DE", is_preview=True, external_participant_id="preview")
    stranger = new_participant(acme.other_study, "DE", external_participant_id="panel-other")
    wa, wb = FrameWriter(a), FrameWriter(b)
    wa.store(None, 0, [0.1], quality=0.2)
    wa.store(acme.ad, 0, [0.5, None], quality=0.6)
    wa.store(acme.ad, 1, [0.3], quality=0.8)
    wa.store(acme.ad, 1, [0.9], quality=0.9)
    wa.store(acme.ad, 2, [0.5], quality=None)
    wb.store(acme.ad, 0, [None, None, 0.4], quality=0.3)
    wb.store(acme.ad, 1, [0.6], quality=0.5)
    wb.store(acme.ad, 2, [0.2], quality=0.4)
    FrameWriter(preview).store(acme.ad, 0, [0.5])
    for name, media_ms in (("tab_hidden", 1200), ("tab_visible", 1900), ("face_lost", None)):
        SessionEvent.objects.create(session=a, name=name, ad=acme.ad, media_time_ms=media_ms)
    return Drill(acme.study, acme.ad, a, b, c, preview, stranger)


def list_url(drill: Drill, query: str = "") -> str:
    return reverse("analytics:sessions", args=[drill.study.pk]) + (f"?{query}" if query else "")


def session_url(drill: Drill, session: ParticipantSession) -> str:
    return reverse("analytics:session", args=[drill.study.pk, session.pk])


def rows_by_panel(response) -> dict[str, dict]:
    assert response.status_code == 200
    return {row["panel_id"]: row for row in response.context["rows"]}


def test_the_list_shows_each_sessions_figures(client, analysts, drill):
    client.force_login(analysts.acme)
    response = client.get(list_url(drill))
    rows = rows_by_panel(response)
    assert set(rows) == {"panel-a", "panel-b", "panel-c"}  # no preview, no other study's session
    a, b, c = rows["panel-a"], rows["panel-b"], rows["panel-c"]
    assert (a["frames"], a["face_share"], a["has_baseline"]) == (6, pytest.approx(5 / 6), True)
    assert a["median_quality"] == pytest.approx(0.7)
    assert (a["country_label"], a["device"], a["state"], a["outcome"]) == (
        "Germany (DE)",
        "Desktop",
        "Completed",
        "validated",
    )
    assert a["consent_version"] == "v2 (de)"
    assert (b["frames"], b["face_share"], b["has_baseline"]) == (5, pytest.approx(3 / 5), False)
    assert b["median_quality"] == pytest.approx(0.4)
    assert b["outcome"] == "not enough usable frames" and b["exclusion_reason"].endswith("3 of 20")
    assert (c["frames"], c["face_share"], c["median_quality"], c["has_baseline"]) == (0, None, None, False)
    assert c["consent_version"] == "" and c["country_label"] == "Japan (JP)"
    html = response.content.decode()
    assert session_url(drill, drill.a) in html and "Germany (DE)" in html and "83 %" in html


def test_the_median_sql_runs_the_same_on_sqlite():
    """Embedded mode runs SQLite: the same statement, on hand-made rows (even and odd counts, unknown
    qualities, no quality at all)."""
    database = sqlite3.connect(":memory:")
    database.execute(
        "CREATE TABLE frames (session_id int, ad_id int, face_found bool, quality real, media_time_ms int)"
    )
    rows = [(1, None, 1, 0.2), (1, 5, 1, 0.6), (1, 5, 0, None), (1, 5, 1, 0.8), (1, 5, 1, 0.9)]
    rows += [
        (1, 5, 1, None),
        (2, 5, 0, None),
        (2, 5, 1, 0.3),
        (2, 5, 1, 0.5),
        (2, 5, 1, 0.4),
        (3, 5, 0, None),
    ]
    database.executemany("INSERT INTO frames VALUES (?, ?, ?, ?, 0)", rows)
    sql = frame_figures_sql('"frames"', 3).replace("%s", "?")
    found = {row[0]: row[1:] for row in database.execute(sql, [1, 2, 3])}
    assert found[1][:3] == (6, 5, 1) and found[1][3] == pytest.approx(0.7)
    assert found[2][:3] == (4, 3, 0) and found[2][3] == pytest.approx(0.4)
    assert found[3] == (1, 0, 0, None)


def test_a_page_costs_the_same_queries_however_many_rows(client, analysts, drill):
    client.force_login(analysts.acme)
    with CaptureQueriesContext(connection) as few:
        assert client.get(list_url(drill)).status_code == 200
    ParticipantSession.objects.bulk_create(
        ParticipantSession(study=drill.study, country="DE", external_participant_id=f"bulk-{index}")
        for index in range(PAGE_SIZE + 7)
    )
    for session in ParticipantSession.objects.filter(external_participant_id__startswith="bulk-")[:20]:
        FrameWriter(session).store(drill.ad, 0, [0.4, None])
    with CaptureQueriesContext(connection) as many:
        first = client.get(list_url(drill))
    assert len(first.context["rows"]) == PAGE_SIZE and len(many) == len(few)
    assert first.context["count"] == PAGE_SIZE + 10 and first.context["next_query"] == "page=2"
    second = client.get(list_url(drill, "page=2"))
    assert len(second.context["rows"]) == 10 and second.context["next_query"] is None
    shown = {row["session"].pk for row in first.context["rows"] + second.context["rows"]}
    assert len(shown) == PAGE_SIZE + 10  # every session once, across the pages


FILTERED = [
    ("country=DE", {"panel-a"}),
    ("country=us&country=JP", {"panel-b", "panel-c"}),
    ("state=failed", {"panel-b"}),
    ("state=started,completed&device=desktop", {"panel-a", "panel-c"}),
    ("device=mobile", {"panel-b"}),
    ("to=2000-01-01", set()),
]
REFUSED = [
    ("state=lost", "States are"),
    ("page=0", "page must be"),
    ("page=x", "page must be"),
    ("page=1&page=2", "once"),
    ("page=9", "no page 9"),
    ("country=Deutschland", "two-letter codes"),
    ("from=2026-05-01&to=2026-04-01", "ends before it starts"),
]


def test_the_list_filters_like_the_overview_and_refuses_what_it_does_not_offer(client, analysts, drill):
    client.force_login(analysts.acme)
    for query, panels in FILTERED:
        assert set(rows_by_panel(client.get(list_url(drill, query)))) == panels, query
    for query, message in REFUSED:
        response = client.get(list_url(drill, query))
        assert response.status_code == 400 and message in response.content.decode(), query


def test_the_overview_links_to_the_list(client, analysts, drill):
    client.force_login(analysts.acme)
    overview = client.get(reverse("analytics:study", args=[drill.study.pk]))
    assert list_url(drill) in overview.content.decode()


def test_a_session_page_shows_its_traces_events_and_data_links(client, analysts, drill):
    client.force_login(analysts.acme)
    response = client.get(session_url(drill, drill.a))
    assert response.status_code == 200
    context = response.context
    assert context["row"]["frames"] == 6 and context["row"]["median_quality"] == pytest.approx(0.7)
    (trace,) = context["traces"]
    assert trace["ad"] == drill.ad and (trace["frames"], trace["faces"]) == (5, 4)
    figure = context["figures"][trace["figure_id"]]
    lines = {item["name"]: item for item in figure["data"]}
    assert lines["Smile"]["x"] == [0.5, 1.5, 2.5]
    assert lines["Smile"]["y"] == pytest.approx([0.5, 0.6, 0.5])
    assert lines["Valence"]["y"] == pytest.approx([0.0, 0.2, 0.0])
    assert lines["Frames with a face"]["y"] == [1, 2, 1]
    assert lines["Frames without a face"]["y"] == [1, 0, 0]
    baseline = context["baseline"]
    assert (baseline["frames"], baseline["faces"]) == (1, 1)
    assert baseline["smile"] == pytest.approx(0.1) and baseline["valence"] == pytest.approx(-0.8)
    assert [event["code"] for event in context["events"]] == ["tab_hidden", "tab_visible", "face_lost"]
    assert context["events"][0]["media_time_s"] == 1.2 and context["events"][0]["ad"] == "Spring ad"
    html = response.content.decode()
    assert "Tab hidden" in html and "Face lost" in html and 'id="session-figures"' in html
    assert reverse("analytics:session-export", args=[drill.study.pk, drill.a.pk]) in html
    assert reverse("analytics:session-export-parquet", args=[drill.study.pk, drill.a.pk]) in html
    # an analyst changes nothing: the deletion form is an admin's
    assert reverse("studies:delete-participant", args=[drill.study.pk]) not in html


def test_an_admin_gets_the_deletion_form_of_the_existing_data_rights_action(client, alice, drill):
    client.force_login(alice)
    html = client.get(session_url(drill, drill.a)).content.decode()
    action = reverse("studies:delete-participant", args=[drill.study.pk])
    assert f'action="{action}"' in html and 'name="panel_id" value="panel-a"' in html
    response = client.post(action, {"panel_id": "panel-a"})
    assert response.status_code == 302
    assert not ParticipantSession.objects.filter(pk=drill.a.pk).exists()
    assert client.get(session_url(drill, drill.a)).status_code == 404


def test_a_session_without_readings_or_ads_has_a_page(client, analysts, drill):
    client.force_login(analysts.acme)
    response = client.get(session_url(drill, drill.c))
    assert response.status_code == 200
    assert response.context["traces"] == [] and response.context["events"] == []
    assert "has not watched an ad yet" in response.content.decode()


def test_get_never_writes(client, analysts, drill):
    client.force_login(analysts.acme)
    for url in (list_url(drill), list_url(drill, "page=1&state=failed"), session_url(drill, drill.a)):
        with CaptureQueriesContext(connection) as queries:
            assert client.get(url).status_code == 200
        writes = [
            q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
        ]
        # the signed-in session's own row aside (Django may refresh it), nothing is written
        assert not [sql for sql in writes if "django_session" not in sql], url


def session_export(client, drill: Drill, session, file_format: str):
    name = "session-export-parquet" if file_format == "parquet" else "session-export"
    return client.get(reverse(f"analytics:{name}", args=[drill.study.pk, session.pk]))


def test_the_session_export_has_its_frames_as_csv_and_parquet(client, analysts, drill):
    client.force_login(analysts.acme)
    response = session_export(client, drill, drill.a, "csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert f'filename="session-{drill.a.pk}-frames.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["seq"] for row in rows] == ["0", "1", "2", "3", "4", "5"]
    assert {row["session_id"] for row in rows} == {str(drill.a.pk)}
    assert [row["phase"] for row in rows] == ["baseline"] + ["ad"] * 5
    assert rows[0]["ad_title"] == "" and rows[1]["ad_title"] == "Spring ad"
    assert [row["second"] for row in rows] == ["0", "0", "0", "1", "1", "2"]
    assert rows[2]["face_found"] == "0" and rows[2]["smile"] == "" and rows[4]["smile"] == "0.9"
    assert list(rows[0]) == frame_header(READING_LABELS)

    parquet = session_export(client, drill, drill.a, "parquet")
    assert parquet.status_code == 200 and parquet["Content-Type"] == "application/vnd.apache.parquet"
    assert f'filename="session-{drill.a.pk}-frames.parquet"' in parquet["Content-Disposition"]
    file = pq.ParquetFile(io.BytesIO(b"".join(parquet.streaming_content)))
    table = file.read()
    assert table.column_names == list(rows[0])
    assert table.column("seq").to_pylist() == [0, 1, 2, 3, 4, 5]
    assert table.column("smile").to_pylist()[2] is None and table.column("ad_id").to_pylist()[0] is None
    metadata = file.metadata.metadata
    assert metadata[b"export"] == b"session-frames" and metadata[b"session_id"] == str(drill.a.pk).encode()
    assert metadata[b"model_versions"] == b'["test-model-1"]'
    exported = AuditLog.objects.filter(action=AuditLog.Action.EXPORT, detail__export="session-frames")
    assert exported.count() == 2 and exported.first().detail["session"] == drill.a.pk


def test_the_session_export_follows_its_models_labels(client, analysts, drill):
    seven = new_participant(drill.study, "DE", external_participant_id="panel-7")
    FrameWriter(seven).store(drill.ad, 0, [0.4, None], model="labels-7-test", labels=SEVEN_LABELS)
    client.force_login(analysts.acme)
    text = b"".join(session_export(client, drill, seven, "csv").streaming_content).decode()
    header = next(csv.reader(io.StringIO(text)))
    assert header == frame_header(SEVEN_LABELS) and "contempt" not in header
    table = pq.read_table(
        io.BytesIO(b"".join(session_export(client, drill, seven, "parquet").streaming_content))
    )
    assert (
        "contempt" not in table.column_names
        and table.column("model_version").to_pylist() == ["labels-7-test"] * 2
    )
    assert FrameResult.objects.filter(session=seven).count() == 2


def test_only_the_organisations_people_see_the_drill_down(client, analysts, drill):
    urls = [
        list_url(drill),
        session_url(drill, drill.a),
        reverse("analytics:session-export", args=[drill.study.pk, drill.a.pk]),
        reverse("analytics:session-export-parquet", args=[drill.study.pk, drill.a.pk]),
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(f"{settings.LOGIN_URL}?next=")
    client.force_login(analysts.other)  # Charlie, admin of Rival Insights
    for url in urls:
        assert client.get(url).status_code == 404, url
    assert not AuditLog.objects.filter(action=AuditLog.Action.EXPORT).exists()
    client.force_login(analysts.acme)
    for session in (drill.preview, drill.stranger):  # a preview; another study's session under this study
        assert client.get(session_url(drill, session)).status_code == 404
        assert session_export(client, drill, session, "csv").status_code == 404
    assert client.get(reverse("analytics:session", args=[drill.study.pk, 999_999])).status_code == 404
    client.force_login(analysts.admin)  # staff see every organisation
    assert client.get(session_url(drill, drill.a)).status_code == 200
