"""Parquet exports beside every CSV: the same columns and rows, typed (ints, floats with NULLs, timestamps,
dates, booleans, strings), the model version in a column and in the file's key-value metadata with the
filters, written in row groups; following the exported model's labels (a 7-label and an 8-label version)."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.urls import reverse

from research_portal.analytics.exports import (
    EXPORT_KINDS,
    EXPORTERS,
    csv_export,
    frame_export,
    parquet_chunks,
)
from research_portal.analytics.services import parse_filters
from research_portal.capture.readings import READING_LABELS
from tests.support.readings import MODEL, SEVEN_LABELS, FrameWriter, new_participant

SEVEN, EIGHT = "labels-7-test", "labels-8-test"


def get_csv(client, ad, kind: str, query: str = "") -> tuple[list[str], list[list[str]]]:
    response = client.get(reverse("analytics:ad-export", args=[ad.pk, kind]) + query)
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    return rows[0], rows[1:]


def get_parquet(client, ad, kind: str, query: str = "") -> pq.ParquetFile:
    response = client.get(reverse("analytics:ad-export-parquet", args=[ad.pk, kind]) + query)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/vnd.apache.parquet"
    assert f'filename="ad-{ad.pk}-{kind}.parquet"' in response["Content-Disposition"]
    return pq.ParquetFile(io.BytesIO(b"".join(response.streaming_content)))


def as_csv_text(value) -> str:
    """A typed Parquet value as the CSV writes it (the hand fixture has no text that needs quoting)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def same_cell(parquet_value, csv_text: str, column_type: pa.DataType) -> bool:
    if pa.types.is_floating(column_type) and parquet_value is not None and csv_text:
        return float(csv_text) == pytest.approx(parquet_value, rel=1e-7)  # CSV: 8 significant digits
    return as_csv_text(parquet_value) == csv_text


@pytest.fixture
def signed_in(client, analysts):
    client.force_login(analysts.acme)
    return client


def test_parquet_has_the_csv_rows_and_columns_typed(signed_in, hand_fixture):
    for kind in EXPORT_KINDS:
        check_parquet_against_csv(signed_in, hand_fixture, kind, "?compare=DE&compare=US")


def check_parquet_against_csv(signed_in, hand_fixture, kind: str, query: str) -> None:
    header, csv_rows = get_csv(signed_in, hand_fixture.ad, kind, query)
    file = get_parquet(signed_in, hand_fixture.ad, kind, query)
    table = file.read()
    assert table.column_names == header
    assert table.num_rows == len(csv_rows) > 0
    types = {field.name: field.type for field in table.schema}
    for parquet_row, csv_row in zip(table.to_pylist(), csv_rows, strict=True):
        for name, csv_text in zip(header, csv_row, strict=True):
            assert same_cell(parquet_row[name], csv_text, types[name]), (
                kind,
                name,
                parquet_row[name],
                csv_text,
            )
    assert types["study_id"] == pa.int64() and types["ad_title"] == pa.string()
    assert types["model_version"] == pa.string()
    assert set(table.column("model_version").to_pylist()) == {MODEL}
    metadata = file.metadata.metadata
    assert metadata[b"model_versions"] == json.dumps([MODEL]).encode()
    assert metadata[b"export"] == kind.encode() and metadata[b"ad_id"] == str(hand_fixture.ad.pk).encode()
    assert json.loads(metadata[b"filters"])["compare"] == ["DE", "US"]


def test_the_types_of_each_export(signed_in, hand_fixture):
    frames = get_parquet(signed_in, hand_fixture.ad, "frames").read()
    assert frames.schema.field("captured_at").type == pa.timestamp("us", tz="UTC")
    assert frames.schema.field("face_found").type == pa.bool_()
    assert frames.schema.field("seq").type == pa.int64() and frames.schema.field("smile").type == pa.float64()
    no_face = [row for row in frames.to_pylist() if not row["face_found"]]
    assert len(no_face) == 2 and all(row["smile"] is None and row["face_x"] is None for row in no_face)
    baseline = [row for row in frames.to_pylist() if row["phase"] == "baseline"]
    assert all(row["ad_id"] is None and row["ad_title"] is None for row in baseline)
    assert frames.to_pylist()[0]["captured_at"].utcoffset().total_seconds() == 0

    seconds = get_parquet(signed_in, hand_fixture.ad, "seconds").read()
    assert seconds.schema.field("completed").type == pa.bool_()
    assert seconds.schema.field("session_day").type == pa.date32()
    assert seconds.schema.field("quality_min").type == pa.float64()
    us_first = next(row for row in seconds.to_pylist() if row["country"] == "US" and row["second"] == 0)
    assert us_first["valence"] is None and us_first["n_valence_frames"] == 0  # NULL, not NaN, not 0
    assert us_first["smile_minus_baseline"] is None and us_first["smile"] == pytest.approx(0.3)

    traces = get_parquet(signed_in, hand_fixture.ad, "traces", "?country=DE&completed=1&to=2030-01-31")
    rows = traces.read().to_pylist()
    assert {row["completed_only"] for row in rows} == {True} and {row["date_to"] for row in rows} == {
        date(2030, 1, 31)
    }
    assert {row["countries_filter"] for row in rows} == {"DE"}
    assert traces.metadata.metadata[b"model_version"] == MODEL.encode()
    described = json.loads(traces.metadata.metadata[b"filter_description"])
    assert described == {
        "quality_min": 0.0,
        "completed_only": True,
        "countries_filter": "DE",
        "devices_filter": "",
        "date_from": None,
        "date_to": "2030-01-31",
    }
    empty = [
        row for row in rows if row["group"] == "all" and row["second"] == 3 and row["measure"] == "smile"
    ]
    assert empty and all(row["mean"] is None and row["n_participants"] == 0 for row in empty)


def test_parquet_is_written_in_bounded_row_groups(hand_fixture):
    table = frame_export(hand_fixture.ad, parse_filters({}))
    pieces = list(parquet_chunks(table, row_group_rows=4))
    assert len(pieces) == 4 + 1  # 15 rows in groups of 4, then the footer: the file leaves as it is written
    file = pq.ParquetFile(io.BytesIO(b"".join(pieces)))
    assert file.metadata.num_row_groups == 4 and file.metadata.num_rows == 15
    assert [file.metadata.row_group(i).num_rows for i in range(4)] == [4, 4, 4, 3]


def test_an_empty_export_is_a_valid_file_with_its_columns(hand_fixture):
    filters = parse_filters({"country": "JP"})
    file = pq.ParquetFile(
        io.BytesIO(b"".join(parquet_chunks(EXPORTERS["seconds"](hand_fixture.ad, filters))))
    )
    csv_header = next(
        csv.reader(io.StringIO("".join(csv_export(EXPORTERS["seconds"](hand_fixture.ad, filters)))))
    )
    assert file.metadata.num_rows == 0 and file.schema_arrow.names == csv_header
    assert file.metadata.metadata[b"model_versions"] == b"[]"


def test_bad_parameters_and_unknown_kinds(signed_in, hand_fixture, client, analysts):
    url = reverse("analytics:ad-export-parquet", args=[hand_fixture.ad.pk, "frames"])
    response = signed_in.get(url + "?quality=0.42")
    assert response.status_code == 400 and "Quality must be one of" in response.content.decode()
    assert (
        signed_in.get(reverse("analytics:ad-export-parquet", args=[hand_fixture.ad.pk, "x"])).status_code
        == 404
    )
    client.force_login(analysts.other)
    assert client.get(url).status_code == 404


def test_parquet_carries_raw_values_where_csv_neutralises_formulas(signed_in, hand_fixture):
    title = '=HYPERLINK("http://evil.example/","x")'
    hand_fixture.ad.title = title
    hand_fixture.ad.save(update_fields=["title"])
    _header, rows = get_csv(signed_in, hand_fixture.ad, "seconds")
    assert {row[2] for row in rows} == {"'" + title}
    table = get_parquet(signed_in, hand_fixture.ad, "seconds").read()
    assert set(table.column("ad_title").to_pylist()) == {title}


@pytest.fixture
def two_label_sets(acme):
    """Participant DE read by a 7-label model version, US by an 8-label one (with contempt), one ad."""
    de = new_participant(acme.study, "DE", state="completed")
    us = new_participant(acme.study, "US", state="completed")
    FrameWriter(de).store(acme.ad, 0, [0.4, None, 0.6], model=SEVEN, labels=SEVEN_LABELS)
    FrameWriter(us).store(acme.ad, 0, [0.2, 0.8], model=EIGHT, labels=READING_LABELS, contempt=0.05)
    return acme


def test_parquet_follows_the_exported_models_labels(signed_in, two_label_sets):
    ad = two_label_sets.ad
    seven = get_parquet(signed_in, ad, "frames", f"?model={SEVEN}")
    assert "contempt" not in seven.schema_arrow.names and set(SEVEN_LABELS) <= set(seven.schema_arrow.names)
    assert seven.metadata.metadata[b"model_version"] == SEVEN.encode()
    assert seven.metadata.metadata[b"model_versions"] == json.dumps([SEVEN]).encode()
    eight = get_parquet(signed_in, ad, "frames", f"?model={EIGHT}").read()
    assert eight.schema.field("contempt").type == pa.float64()
    assert eight.column("contempt").to_pylist() == pytest.approx([0.05, 0.05])
    both = get_parquet(signed_in, ad, "frames")
    rows = both.read().to_pylist()
    assert all(row["contempt"] is None for row in rows if row["model_version"] == SEVEN)
    assert both.metadata.metadata[b"model_version"] == b""  # no version chosen: every version's rows
    assert json.loads(both.metadata.metadata[b"model_versions"]) == sorted([SEVEN, EIGHT])

    header, _rows = get_csv(signed_in, ad, "seconds", f"?model={SEVEN}")
    seconds = get_parquet(signed_in, ad, "seconds", f"?model={SEVEN}").read()
    assert seconds.column_names == header and "contempt_minus_baseline" not in header
    seconds = get_parquet(signed_in, ad, "seconds").read().to_pylist()
    assert [row["contempt"] is None for row in seconds] == [row["model_version"] == SEVEN for row in seconds]
    traces = get_parquet(signed_in, ad, "traces", f"?model={EIGHT}").read()
    assert "contempt" in set(traces.column("measure").to_pylist())
    assert set(traces.column("model_version").to_pylist()) == {EIGHT}
    traces = get_parquet(signed_in, ad, "traces", f"?model={SEVEN}").read()
    assert "contempt" not in set(traces.column("measure").to_pylist())


async def test_parquet_streams_row_group_by_row_group_under_asgi(
    transactional_db, hand_fixture, async_client, analysts
):
    """As daphne serves it: pulled one piece at a time on the sync thread (media.streaming_body)."""
    await async_client.aforce_login(analysts.acme)
    response = await async_client.get(
        reverse("analytics:ad-export-parquet", args=[hand_fixture.ad.pk, "frames"])
    )
    assert response.status_code == 200 and response.is_async
    pieces = [piece async for piece in response.streaming_content]
    await sync_to_async(connections.close_all, thread_sensitive=True)()  # the sync thread's connection
    file = pq.ParquetFile(io.BytesIO(b"".join(pieces)))
    assert file.metadata.num_rows == 15 and len(pieces) == file.metadata.num_row_groups + 1
