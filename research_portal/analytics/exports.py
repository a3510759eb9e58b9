"""Tidy exports, as CSV and as Parquet: one observation per row, one variable per column, the model version
in every row.

- frames:  every FrameResult of the ad (and the baseline frames of the same participants), raw readings.
- seconds: one row per participant and second of the ad (the unit of the statistics), with the participant's
           mean per measure and the same minus their baseline mean.
- traces:  the aggregated traces: per group (all, each country), second, measure and correction
           (none / baseline): n participants, mean, sd, se and the 95% CI.
- comparison: the per-second test between the two compared countries.
- ad vs ad (`ad_pair_export`): the per-position test between two ads (analytics/ad_comparison.py).
- one session's frames (`session_frame_export`): the frame export's columns, for the session page.

The emotion columns (frames, seconds) and measures (traces) are those of the exported model version's
labels, or of any of the ad's model versions when none is chosen (`AdFacets.measures`); a model that lacks
one of them leaves its cells empty (NULL in Parquet).

Each export is a `Table`: typed columns and a generator of typed rows (None for a missing value), written
by `csv_lines` (every cell through `csv_cell`, so no cell can run as a spreadsheet formula) or
`parquet_chunks` (the raw typed values, one row group per ROW_GROUP_ROWS rows, the model versions and the
filters in the file's key-value metadata). Both stream: a 10-million-frame export runs in constant memory.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from django.db.models import Count, Q

from research_portal.analytics.ad_comparison import AdPairQuery, build_ad_comparison
from research_portal.analytics.dashboard import ALL, ad_facets, build_ad_dashboard, load_traces
from research_portal.analytics.definitions import (
    ATTENTION,
    EXPRESSIVENESS,
    EXPRESSIVENESS_SOURCE,
    NULLABLE_MEASURES,
    QUALITY_LEVELS,
)
from research_portal.analytics.models import BaselineRollup, SecondRollup
from research_portal.analytics.services import Filters
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.readings import READING_LABELS
from research_portal.studies.models import Ad

CHUNK_ROWS = 2000
EXPORT_KINDS = ("frames", "seconds", "traces", "comparison")
FILE_FORMATS = ("csv", "parquet")
# Rows per Parquet row group: what one export holds in memory at a time (about 10 MB of Python values for the
# frame export's 25 columns), and the unit in which the file streams out.
ROW_GROUP_ROWS = 16_384


# ---- columns and tables ----------------------------------------------------------------------------------

# The kinds of column, their Parquet types and how a CSV writes them. LEVEL is a threshold (the quality
# level), written as it is ("0.3"), where FLOAT is a measured value, written to eight significant digits.
INT, FLOAT, LEVEL, TEXT, TIME, DAY, FLAG = "int", "float", "level", "text", "time", "day", "flag"
ARROW_TYPES: dict[str, pa.DataType] = {
    INT: pa.int64(),
    FLOAT: pa.float64(),
    LEVEL: pa.float64(),
    TEXT: pa.string(),
    TIME: pa.timestamp("us", tz="UTC"),
    DAY: pa.date32(),
    FLAG: pa.bool_(),
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str


@dataclass
class Table:
    """One export: its columns, its typed rows (None, or NaN for a float, where a value is missing), and what
    a Parquet file of it says in its key-value metadata (the export, the study, ad or session, the filters).
    `model_version` is the version the export was asked for or computed with ("" for all the ad's)."""

    columns: list[Column]
    rows: Iterable[Sequence]
    model_version: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def header(self) -> list[str]:
        return [column.name for column in self.columns]


def columns_of(kind: str, names: Iterable[str]) -> list[Column]:
    return [Column(name, kind) for name in names]


# ---- CSV -------------------------------------------------------------------------------------------------

# Spreadsheets run a cell that starts with one of these as a formula (OWASP, "CSV Injection"); the fullwidth
# forms too, which some locales' spreadsheets convert.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def csv_cell(value: object) -> str:
    """One CSV cell, safe to open in a spreadsheet. The one cell function of every export.

    - Numbers (ints, floats, and the decimal text `_number` writes) are written as they are: a number cannot
      hold a formula, so -0.25 stays a number.
    - Any other value is text: quoted, with quotes doubled, and prefixed with a single quote when it starts
      with = + - @ tab or CR (OWASP), also after blanks or invisible characters that a spreadsheet may skip,
      so an ad title or panel id such as =HYPERLINK(...) is shown, never run. Quoting every text cell also
      keeps a `;` inside it from starting a new cell where spreadsheets split on `;`.
    - None is an empty cell.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if text == "" or PLAIN_NUMBER.fullmatch(text):
        return text
    if _starts_like_a_formula(text):
        text = "'" + text
    return '"' + text.replace('"', '""') + '"'


def _starts_like_a_formula(text: str) -> bool:
    if text.startswith(FORMULA_STARTS):
        return True
    for char in text:  # past blanks and invisible characters, which a spreadsheet may drop
        if not (char.isspace() or unicodedata.category(char) in ("Cc", "Cf")):
            return char in FORMULA_STARTS
    return False


def csv_lines(header: list[str], rows: Iterable[Iterable]) -> Iterator[str]:
    """The export's lines (RFC 4180, "\n" line ends), every cell through csv_cell."""
    yield ",".join(csv_cell(name) for name in header) + "\n"
    for row in rows:
        yield ",".join(csv_cell(value) for value in row) + "\n"


def _number(value: float | None) -> str:
    """Eight significant digits (beyond the readings' precision); empty for missing or undefined."""
    if value is None or not np.isfinite(value):
        return ""
    return f"{float(value):.8g}"


def _iso(value) -> str:
    return "" if value is None else value.isoformat()


# What a CSV cell holds for a typed value (csv_cell then writes it); the other kinds are written as they are.
CSV_VALUE = {FLOAT: _number, TIME: _iso, DAY: _iso}


def csv_export(table: Table) -> Iterator[str]:
    """The table as CSV lines: floats to eight significant digits, times and days in ISO 8601, flags 1/0,
    missing values empty."""
    formats = [(index, CSV_VALUE[c.kind]) for index, c in enumerate(table.columns) if c.kind in CSV_VALUE]

    def rows() -> Iterator[list]:
        for row in table.rows:
            values = list(row)
            for index, to_text in formats:
                values[index] = to_text(values[index])
            yield values

    return csv_lines(table.header, rows())


# ---- Parquet ---------------------------------------------------------------------------------------------


class _Chunks:
    """The writable file the Parquet writer writes to: keeps what was written until it is taken, so the file
    leaves in pieces (one per row group, then the footer) instead of being built whole."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        taken, self.parts = b"".join(self.parts), []
        return taken


def parquet_chunks(table: Table, row_group_rows: int = ROW_GROUP_ROWS) -> Iterator[bytes]:
    """The table as a Parquet file, in pieces: typed columns (int64, float64 with NULL where a value is
    missing or undefined, timestamps in UTC, dates, booleans, strings), one row group per `row_group_rows`
    rows, and in the key-value metadata the table's metadata, `model_version` and `model_versions` (a JSON
    list of the versions in its rows)."""
    schema = pa.schema(
        [pa.field(column.name, ARROW_TYPES[column.kind]) for column in table.columns],
        metadata={**table.metadata, "model_version": table.model_version},
    )
    version_index = table.header.index("model_version")
    versions: set[str] = set()
    sink = _Chunks()
    rows = iter(table.rows)
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        while chunk := list(islice(rows, row_group_rows)):
            values = list(zip(*chunk, strict=True))
            # from_pandas: a NaN (an undefined mean) is written as NULL, like a missing value.
            arrays = [
                pa.array(column_values, type=field_.type, from_pandas=True)
                for column_values, field_ in zip(values, schema, strict=True)
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            versions.update(values[version_index])
            yield sink.take()
        writer.add_key_value_metadata({"model_versions": json.dumps(sorted(versions))})
    yield sink.take()


def write_table(table: Table, file_format: str) -> Iterator[str] | Iterator[bytes]:
    return parquet_chunks(table) if file_format == "parquet" else csv_export(table)


# ---- filters ---------------------------------------------------------------------------------------------


FILTER_COLUMNS = [
    Column("quality_min", LEVEL),
    Column("completed_only", FLAG),
    Column("countries_filter", TEXT),
    Column("devices_filter", TEXT),
    Column("date_from", DAY),
    Column("date_to", DAY),
]


def filter_description(filters: Filters) -> list:
    """The values of FILTER_COLUMNS: the filters an aggregated export was computed with."""
    return [
        filters.quality,
        filters.completed_only,
        " ".join(filters.countries),
        " ".join(filters.devices),
        filters.date_from,
        filters.date_to,
    ]


def export_metadata(kind: str, ad: Ad, filters: Filters) -> dict[str, str]:
    """What a Parquet file of an ad's export says about itself: which export, of what, with which filters
    (as the query parameters that reproduce it, and described)."""
    described = {
        column.name: value.isoformat() if column.kind == DAY and value else value
        for column, value in zip(FILTER_COLUMNS, filter_description(filters), strict=True)
    }
    return {
        "export": kind,
        "study_id": str(ad.study_id),
        "ad_id": str(ad.pk),
        "ad_title": ad.title,
        "filters": json.dumps(filters.to_query(), sort_keys=True),
        "filter_description": json.dumps(described, sort_keys=True),
    }


def _sessions(ad: Ad, filters: Filters):
    sessions = ParticipantSession.objects.filter(study_id=ad.study_id, is_preview=False)
    if filters.countries:
        sessions = sessions.filter(country__in=filters.countries)
    if filters.devices:
        sessions = sessions.filter(device_type__in=filters.devices)
    if filters.completed_only:
        sessions = sessions.filter(state=ParticipantSession.State.COMPLETED)
    if filters.date_from:
        sessions = sessions.filter(created_at__date__gte=filters.date_from)
    if filters.date_to:
        sessions = sessions.filter(created_at__date__lte=filters.date_to)
    return sessions


# ---- frames ----------------------------------------------------------------------------------------------


def reading_columns(emotions: tuple[str, ...]) -> list[str]:
    """The FrameResult columns of a reading, the same in the query and in the export."""
    face = ["face_x", "face_y", "face_w", "face_h", "face_score"]
    pose = ["face_yaw", "face_pitch", "attending"]
    return [*face, *emotions, "smile", "valence", "quality", *pose, "error", "model_version"]


def frame_fields(emotions: tuple[str, ...]) -> list[str]:
    session = [f"session__{f}" for f in ("external_participant_id", "country", "device_type", "state")]
    frame = ["ad_id", "seq", "media_time_ms", "captured_at", "face_found"]
    return ["session_id", *session, *frame, *reading_columns(emotions)]


def frame_columns(emotions: tuple[str, ...]) -> list[Column]:
    return [
        *columns_of(INT, ["study_id", "ad_id"]),
        *columns_of(TEXT, ["ad_title", "phase"]),
        Column("session_id", INT),
        *columns_of(TEXT, ["participant_id", "country", "device_type", "session_state"]),
        *columns_of(INT, ["seq", "media_time_ms", "second"]),
        Column("captured_at", TIME),
        Column("face_found", FLAG),
        *columns_of(INT, ["face_x", "face_y", "face_w", "face_h"]),
        *columns_of(FLOAT, ["face_score", *emotions, "smile", "valence", "quality"]),
        *columns_of(FLOAT, ["face_yaw", "face_pitch"]),
        Column("attending", FLAG),
        *columns_of(TEXT, ["error", "model_version"]),
    ]


def frame_header(emotions: tuple[str, ...]) -> list[str]:
    return [column.name for column in frame_columns(emotions)]


def _frame_rows(frames, emotions: tuple[str, ...], study_id: int, titles: dict[int, str]) -> Iterator[tuple]:
    """The rows of frame_columns from a FrameResult queryset, in (session, seq) order, streamed."""
    values = frames.order_by("session_id", "seq").values_list(*frame_fields(emotions))
    for session_id, participant, country, device, state, ad_id, seq, media_ms, *frame in values.iterator(
        chunk_size=CHUNK_ROWS
    ):
        baseline = ad_id is None
        yield (
            study_id,
            ad_id,
            None if baseline else titles.get(ad_id),
            "baseline" if baseline else "ad",
            session_id,
            participant,
            country,
            device,
            state,
            seq,
            media_ms,
            media_ms // 1000,
            *frame,  # captured_at, face_found, the reading
        )


def exported_measures(ad: Ad, filters: Filters) -> tuple[str, ...]:
    """The measures of the exported model version (all of the ad's versions when none is chosen)."""
    return ad_facets(ad).measures_of_all(filters.model_version)


def frame_export(ad: Ad, filters: Filters) -> Table:
    """Raw readings of the ad's frames and of the same participants' baseline frames. The quality filter
    keeps frames with a face at that quality (at 0, every frame, with or without a face)."""
    emotions = tuple(m for m in exported_measures(ad, filters) if m in READING_LABELS)
    sessions = _sessions(ad, filters).values("id")
    frames = FrameResult.objects.filter(Q(ad=ad) | Q(ad__isnull=True), session__in=sessions)
    if filters.quality > 0:
        frames = frames.filter(face_found=True, quality__gte=filters.quality)
    if filters.model_version:
        frames = frames.filter(model_version=filters.model_version)
    return Table(
        frame_columns(emotions),
        _frame_rows(frames, emotions, ad.study_id, {ad.pk: ad.title}),
        filters.model_version,
        export_metadata("frames", ad, filters),
    )


def session_labels(session: ParticipantSession) -> tuple[str, ...]:
    """The emotion labels the session's readings have (its model versions'), in display order; every label
    when it has no reading with a face yet. One aggregate over the session's frames."""
    counts = FrameResult.objects.filter(session=session, face_found=True).aggregate(
        **{label: Count(label) for label in READING_LABELS}
    )
    present = tuple(label for label in READING_LABELS if counts[label])
    return present or READING_LABELS


def session_frame_export(session: ParticipantSession) -> Table:
    """Every stored reading of one session (each ad it watched and its baseline), with the frame export's
    columns and the labels of the session's model versions."""
    emotions = session_labels(session)
    titles = dict(session.study.ads.values_list("id", "title"))
    frames = FrameResult.objects.filter(session=session)
    rows = _frame_rows(frames, emotions, session.study_id, titles)
    metadata = {"export": "session-frames", "study_id": str(session.study_id), "session_id": str(session.pk)}
    return Table(frame_columns(emotions), rows, "", metadata)


# ---- seconds ---------------------------------------------------------------------------------------------


def second_columns(measures: tuple[str, ...]) -> list[Column]:
    return [
        *columns_of(INT, ["study_id", "ad_id"]),
        Column("ad_title", TEXT),
        Column("session_id", INT),
        *columns_of(TEXT, ["participant_id", "country", "device_type"]),
        Column("completed", FLAG),
        Column("session_day", DAY),
        *columns_of(INT, ["second", "second_start_s", "second_end_s"]),
        Column("quality_min", LEVEL),
        *columns_of(INT, ["n_frames", "n_valence_frames", "n_analysed_frames", "n_attending_frames"]),
        Column(ATTENTION, FLOAT),
        *columns_of(FLOAT, measures),
        *columns_of(FLOAT, [f"{m}_baseline" for m in measures]),
        *columns_of(FLOAT, [f"{m}_minus_baseline" for m in measures]),
        Column("model_version", TEXT),
    ]


def second_header(measures: tuple[str, ...]) -> list[str]:
    return [column.name for column in second_columns(measures)]


def second_export(ad: Ad, filters: Filters) -> Table:
    """Per participant and second: attention (attending / analysed frames, every analysed frame, face or
    not, whatever the quality level), mean per measure, baseline mean, and the difference (empty when the
    participant has no baseline frame at this quality level). A second with frames but no usable face at
    the level has attention and empty measures."""
    measures = exported_measures(ad, filters)
    sum_columns = [f"sum_{m}" for m in measures]
    seconds = SecondRollup.objects.filter(ad=ad, level=filters.level, session__in=_sessions(ad, filters))
    if filters.model_version:
        seconds = seconds.filter(model_version=filters.model_version)
    baselines: dict[tuple[int, str], np.ndarray] = {}
    for session_id, model, n_frames, n_valence, *sums in BaselineRollup.objects.filter(
        level=filters.level, session__study_id=ad.study_id
    ).values_list("session_id", "model_version", "n_frames", "n_valence", *sum_columns):
        baselines[(session_id, model)] = _means(measures, n_frames, n_valence, sums)
    fields = [
        "session_id",
        "session__external_participant_id",
        "session__analytics_rollup__country",
        "session__analytics_rollup__device_type",
        "session__analytics_rollup__completed",
        "session__analytics_rollup__day",
        "second",
        "model_version",
        "n_frames",
        "n_valence",
        "n_analysed",
        "n_attending",
        *sum_columns,
    ]
    values = seconds.order_by("session_id", "second", "model_version").values_list(*fields)
    no_baseline = np.full(len(measures), np.nan)

    def rows() -> Iterator[tuple]:
        for (
            session_id,
            participant,
            country,
            device,
            completed,
            day,
            second,
            model,
            n,
            nv,
            analysed,
            attending,
            *sums,
        ) in values.iterator(chunk_size=CHUNK_ROWS):
            means = _means(measures, n, nv, sums)
            base = baselines.get((session_id, model), no_baseline)
            yield (
                ad.study_id,
                ad.pk,
                ad.title,
                session_id,
                participant,
                country,
                device,
                bool(completed),
                day,
                second,
                second,
                second + 1,
                QUALITY_LEVELS[filters.level],
                n,
                nv,
                analysed,
                attending,
                attending / analysed if analysed else None,
                *means.tolist(),
                *base.tolist(),
                *(means - base).tolist(),
                model,
            )

    return Table(
        second_columns(measures), rows(), filters.model_version, export_metadata("seconds", ad, filters)
    )


def _means(measures: tuple[str, ...], n_frames: int, n_valence: int, sums: list) -> np.ndarray:
    """Per measure, the mean of its frames (NaN without frames, or for an emotion the model lacks)."""
    counts = np.array([n_valence if m in NULLABLE_MEASURES else n_frames for m in measures], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, np.asarray(sums, dtype=float) / counts, np.nan)


# ---- aggregated ------------------------------------------------------------------------------------------


TRACE_COLUMNS = [
    *columns_of(INT, ["study_id", "ad_id"]),
    *columns_of(TEXT, ["ad_title", "group"]),
    *columns_of(INT, ["second", "second_start_s", "second_end_s"]),
    *columns_of(TEXT, ["measure", "correction"]),
    Column("n_participants", INT),
    *columns_of(FLOAT, ["mean", "sd", "se", "ci95_low", "ci95_high"]),
    *FILTER_COLUMNS,
    Column("model_version", TEXT),
]
TRACE_HEADER = [column.name for column in TRACE_COLUMNS]


def trace_export(ad: Ad, filters: Filters) -> Table:
    """The aggregated traces, overall and per country, raw and baseline-corrected (read from the rollups)."""
    facets = ad_facets(ad)
    model_version = facets.default_model(filters.model_version)
    traces = load_traces(ad, filters, model_version)
    described = filter_description(filters)

    measures = facets.measures_of(model_version)
    # The derived traces (docs/analytics.md): expressiveness where the model reads neutral; attention, which
    # has no baseline-corrected variant.
    derived = [(EXPRESSIVENESS, True)] if EXPRESSIVENESS_SOURCE in measures else []
    traced = [*((measure, True) for measure in measures), *derived, (ATTENTION, False)]

    def rows() -> Iterator[tuple]:
        for group in [ALL, *traces.countries]:
            for measure, correctable in traced:
                for correction, baseline in (("none", False), ("baseline", True))[: 2 if correctable else 1]:
                    estimate = traces.estimate(measure, baseline, group)
                    stats = [getattr(estimate, k).tolist() for k in ("mean", "sd", "se", "low", "high")]
                    for second in range(traces.seconds):
                        yield (
                            ad.study_id,
                            ad.pk,
                            ad.title,
                            "all" if group == ALL else group,
                            second,
                            second,
                            second + 1,
                            measure,
                            correction,
                            int(estimate.n[second]),
                            *[values[second] for values in stats],
                            *described,
                            model_version,
                        )

    return Table(TRACE_COLUMNS, rows(), model_version, export_metadata("traces", ad, filters))


COMPARISON_COLUMNS = [
    *columns_of(INT, ["study_id", "ad_id"]),
    *columns_of(TEXT, ["ad_title", "measure", "correction", "country_a", "country_b"]),
    *columns_of(INT, ["second", "n_a", "n_b"]),
    *columns_of(
        FLOAT, ["mean_a", "mean_b", "difference", "ci95_low", "ci95_high", "t", "df", "p", "p_adjusted"]
    ),
    Column("significant", FLAG),
    *FILTER_COLUMNS,
    Column("baseline_corrected", FLAG),
    Column("model_version", TEXT),
]
COMPARISON_HEADER = [column.name for column in COMPARISON_COLUMNS]


def comparison_export(ad: Ad, filters: Filters) -> Table:
    dashboard = build_ad_dashboard(ad, filters)
    comparison = dashboard["comparison"]
    described = filter_description(filters)

    def rows() -> Iterator[tuple]:
        if not comparison:
            return
        a, b = comparison["countries"]
        for row in comparison["rows"]:
            yield (
                ad.study_id,
                ad.pk,
                ad.title,
                comparison["measure"],
                comparison["correction"],
                a,
                b,
                row["second"],
                row["n_a"],
                row["n_b"],
                *[
                    row[k]
                    for k in ("mean_a", "mean_b", "difference", "low", "high", "t", "df", "p", "p_adjusted")
                ],
                bool(row["significant"]),
                *described,
                filters.baseline and comparison["measure"] != ATTENTION,  # attention is compared raw
                dashboard["model_version"],
            )

    metadata = export_metadata("comparison", ad, filters)
    return Table(COMPARISON_COLUMNS, rows(), dashboard["model_version"], metadata)


AD_PAIR_COLUMNS = [
    *columns_of(INT, ["ad_a_id"]),
    *columns_of(TEXT, ["ad_a_title"]),
    *columns_of(INT, ["ad_b_id"]),
    *columns_of(TEXT, ["ad_b_title", "axis", "position_label"]),
    *columns_of(INT, ["position", "second_a", "second_b"]),
    *columns_of(TEXT, ["measure", "correction"]),
    *columns_of(INT, ["n_a", "n_b"]),
    *columns_of(
        FLOAT, ["mean_a", "mean_b", "difference", "ci95_low", "ci95_high", "t", "df", "p", "p_adjusted"]
    ),
    Column("significant", FLAG),
    *FILTER_COLUMNS,
    Column("baseline_corrected", FLAG),
    Column("model_version", TEXT),
]


def ad_pair_export(ad_a: Ad, ad_b: Ad, query: AdPairQuery) -> Table:
    """The comparison page's per-position test of two ads, one row per position (no rows when the ads share
    no model version)."""
    payload = build_ad_comparison(ad_a, ad_b, query)
    comparison = payload.get("comparison")
    model_version = payload.get("model_version", "")
    described = filter_description(query.filters)

    def rows() -> Iterator[tuple]:
        if not comparison:
            return
        for row in comparison["rows"]:
            yield (
                ad_a.pk,
                ad_a.title,
                ad_b.pk,
                ad_b.title,
                query.axis,
                row["label"],
                row["position"],
                row["second_a"],
                row["second_b"],
                comparison["measure"],
                comparison["correction"],
                row["n_a"],
                row["n_b"],
                *[
                    row[k]
                    for k in ("mean_a", "mean_b", "difference", "low", "high", "t", "df", "p", "p_adjusted")
                ],
                bool(row["significant"]),
                *described,
                comparison["baseline"],
                model_version,
            )

    metadata = {
        **export_metadata("ad-comparison", ad_a, query.filters),
        "ad_b_id": str(ad_b.pk),
        "ad_b_title": ad_b.title,
        "axis": query.axis,
    }
    return Table(AD_PAIR_COLUMNS, rows(), model_version, metadata)


EXPORTERS = {
    "frames": frame_export,
    "seconds": second_export,
    "traces": trace_export,
    "comparison": comparison_export,
}
