"""Tidy CSV exports: one observation per row, one variable per column, the model version in every row.

- frames:  every FrameResult of the ad (and the baseline frames of the same participants), raw readings.
- seconds: one row per participant and second of the ad (the unit of the statistics), with the participant's
           mean per measure and the same minus their baseline mean.
- traces:  the aggregated traces: per group (all, each country), second, measure and correction
           (none / baseline): n participants, mean, sd, se and the 95% CI.
- comparison: the per-second test between the two compared countries.

The emotion columns (frames, seconds) and measures (traces) are those of the exported model version's
labels, or of any of the ad's model versions when none is chosen (`AdFacets.measures`); a model that lacks
one of them leaves its cells empty.

Each is a generator of CSV lines, so a 10-million-frame export streams in constant memory (Parquet is not
offered: pyarrow is not a dependency).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator

import numpy as np
from django.db.models import Q

from research_portal.analytics.dashboard import ALL, ad_facets, build_ad_dashboard, load_traces
from research_portal.analytics.definitions import (
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


def filter_description(filters: Filters) -> list[str]:
    return [
        str(filters.quality),
        "1" if filters.completed_only else "0",
        " ".join(filters.countries),
        " ".join(filters.devices),
        filters.date_from.isoformat() if filters.date_from else "",
        filters.date_to.isoformat() if filters.date_to else "",
    ]


FILTER_COLUMNS = [
    "quality_min",
    "completed_only",
    "countries_filter",
    "devices_filter",
    "date_from",
    "date_to",
]


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


def reading_columns(emotions: tuple[str, ...]) -> list[str]:
    """The FrameResult columns of a reading, the same in the query and in the CSV header."""
    face = ["face_x", "face_y", "face_w", "face_h", "face_score"]
    return [*face, *emotions, "smile", "valence", "quality", "error", "model_version"]


def frame_fields(emotions: tuple[str, ...]) -> list[str]:
    session = [f"session__{f}" for f in ("external_participant_id", "country", "device_type", "state")]
    frame = ["ad_id", "seq", "media_time_ms", "captured_at", "face_found"]
    return ["session_id", *session, *frame, *reading_columns(emotions)]


def frame_header(emotions: tuple[str, ...]) -> list[str]:
    ad = ["study_id", "ad_id", "ad_title", "phase"]
    session = ["session_id", "participant_id", "country", "device_type", "session_state"]
    frame = ["seq", "media_time_ms", "second", "captured_at", "face_found"]
    return [*ad, *session, *frame, *reading_columns(emotions)]


def exported_measures(ad: Ad, filters: Filters) -> tuple[str, ...]:
    """The measures of the exported model version (all of the ad's versions when none is chosen)."""
    return ad_facets(ad).measures_of_all(filters.model_version)


def frame_export(ad: Ad, filters: Filters) -> Iterator[str]:
    """Raw readings of the ad's frames and of the same participants' baseline frames. The quality filter
    keeps frames with a face at that quality (at 0, every frame, with or without a face)."""
    emotions = tuple(m for m in exported_measures(ad, filters) if m in READING_LABELS)
    fields = frame_fields(emotions)
    sessions = _sessions(ad, filters).values("id")
    frames = FrameResult.objects.filter(Q(ad=ad) | Q(ad__isnull=True), session__in=sessions)
    if filters.quality > 0:
        frames = frames.filter(face_found=True, quality__gte=filters.quality)
    if filters.model_version:
        frames = frames.filter(model_version=filters.model_version)
    values = frames.order_by("session_id", "seq").values_list(*fields).iterator(chunk_size=CHUNK_ROWS)

    def rows() -> Iterator[list]:
        for row in values:
            record = dict(zip(fields, row, strict=True))
            baseline = record["ad_id"] is None
            yield [
                ad.study_id,
                record["ad_id"] or "",
                "" if baseline else ad.title,
                "baseline" if baseline else "ad",
                record["session_id"],
                record["session__external_participant_id"],
                record["session__country"],
                record["session__device_type"],
                record["session__state"],
                record["seq"],
                record["media_time_ms"],
                record["media_time_ms"] // 1000,
                record["captured_at"].isoformat(),
                int(record["face_found"]),
                *["" if record[k] is None else record[k] for k in ("face_x", "face_y", "face_w", "face_h")],
                *[_number(record[k]) for k in ("face_score", *emotions, "smile", "valence", "quality")],
                record["error"],
                record["model_version"],
            ]

    return csv_lines(frame_header(emotions), rows())


def second_header(measures: tuple[str, ...]) -> list[str]:
    return [
        "study_id",
        "ad_id",
        "ad_title",
        "session_id",
        "participant_id",
        "country",
        "device_type",
        "completed",
        "session_day",
        "second",
        "second_start_s",
        "second_end_s",
        "quality_min",
        "n_frames",
        "n_valence_frames",
        *measures,
        *[f"{m}_baseline" for m in measures],
        *[f"{m}_minus_baseline" for m in measures],
        "model_version",
    ]


def second_export(ad: Ad, filters: Filters) -> Iterator[str]:
    """Per participant and second: mean per measure, baseline mean, and the difference (empty when the
    participant has no baseline frame at this quality level)."""
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
        *sum_columns,
    ]
    values = seconds.order_by("session_id", "second", "model_version").values_list(*fields)

    def rows() -> Iterator[list]:
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
            *sums,
        ) in values.iterator(chunk_size=CHUNK_ROWS):
            means = _means(measures, n, nv, sums)
            base = baselines.get((session_id, model), np.full(len(measures), np.nan))
            yield [
                ad.study_id,
                ad.pk,
                ad.title,
                session_id,
                participant,
                country,
                device,
                int(bool(completed)),
                day.isoformat() if day else "",
                second,
                second,
                second + 1,
                QUALITY_LEVELS[filters.level],
                n,
                nv,
                *[_number(v) for v in means],
                *[_number(v) for v in base],
                *[_number(v) for v in means - base],
                model,
            ]

    return csv_lines(second_header(measures), rows())


def _means(measures: tuple[str, ...], n_frames: int, n_valence: int, sums: list) -> np.ndarray:
    """Per measure, the mean of its frames (NaN without frames, or for an emotion the model lacks)."""
    counts = np.array([n_valence if m in NULLABLE_MEASURES else n_frames for m in measures], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, np.asarray(sums, dtype=float) / counts, np.nan)


TRACE_HEADER = [
    "study_id",
    "ad_id",
    "ad_title",
    "group",
    "second",
    "second_start_s",
    "second_end_s",
    "measure",
    "correction",
    "n_participants",
    "mean",
    "sd",
    "se",
    "ci95_low",
    "ci95_high",
    *FILTER_COLUMNS,
    "model_version",
]


def trace_export(ad: Ad, filters: Filters) -> Iterator[str]:
    """The aggregated traces, overall and per country, raw and baseline-corrected (read from the rollups)."""
    facets = ad_facets(ad)
    model_version = facets.default_model(filters.model_version)
    traces = load_traces(ad, filters, model_version)
    described = filter_description(filters)

    def rows() -> Iterator[list]:
        for group in [ALL, *traces.countries]:
            for measure in facets.measures_of(model_version):
                for correction, baseline in (("none", False), ("baseline", True)):
                    estimate = traces.estimate(measure, baseline, group)
                    for second in range(traces.seconds):
                        yield [
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
                            *[
                                _number(getattr(estimate, k)[second])
                                for k in ("mean", "sd", "se", "low", "high")
                            ],
                            *described,
                            model_version,
                        ]

    return csv_lines(TRACE_HEADER, rows())


COMPARISON_HEADER = [
    "study_id",
    "ad_id",
    "ad_title",
    "measure",
    "correction",
    "country_a",
    "country_b",
    "second",
    "n_a",
    "n_b",
    "mean_a",
    "mean_b",
    "difference",
    "ci95_low",
    "ci95_high",
    "t",
    "df",
    "p",
    "p_adjusted",
    "significant",
    *FILTER_COLUMNS,
    "baseline_corrected",
    "model_version",
]


def comparison_export(ad: Ad, filters: Filters) -> Iterator[str]:
    dashboard = build_ad_dashboard(ad, filters)
    comparison = dashboard["comparison"]
    described = filter_description(filters)

    def rows() -> Iterator[list]:
        if not comparison:
            return
        a, b = comparison["countries"]
        for row in comparison["rows"]:
            yield [
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
                    _number(row[k])
                    for k in ("mean_a", "mean_b", "difference", "low", "high", "t", "df", "p", "p_adjusted")
                ],
                int(row["significant"]),
                *described,
                "1" if filters.baseline else "0",
                dashboard["model_version"],
            ]

    return csv_lines(COMPARISON_HEADER, rows())


EXPORTERS = {
    "frames": frame_export,
    "seconds": second_export,
    "traces": trace_export,
    "comparison": comparison_export,
}
