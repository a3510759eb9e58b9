"""The per-participant drill-down: a study's sessions, one page at a time, and one session's own readings.

- `session_list(study, query)`: a page of the study's sessions (previews never) with, per session, its frames
  stored, the share of them with a face, the median face quality, whether baseline frames with a face were
  stored and the consent version it agreed to. Four queries whatever the page size: the count, the page's
  sessions, the study's countries (for the filter), and one set-wise aggregate over the page's frames
  (`frame_figures`, the median by window functions that Postgres and SQLite both run).
- `session_detail(session)`: its traces (smile and valence per second of each ad it watched, and the frames
  with and without a face behind each second), its baseline and its page events (tab hidden, camera
  stopped, face lost...).

Both read raw readings (the quality checks are about what was stored), so a session whose readings were
deleted past the study's retention shows none; the dashboards' rollups keep their anonymous sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from urllib.parse import urlencode

from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Avg, Count, F, Q
from django.http import QueryDict

from research_portal.analytics.dashboard import EXCLUDED_STATES, reason_category
from research_portal.analytics.definitions import MEASURE_LABELS
from research_portal.analytics.figures import MEASURE_COLORS, TIME_AXIS, axis, base_layout, clean
from research_portal.analytics.services import DEVICE_TYPES, InvalidFilters, parse_filters
from research_portal.capture.models import FrameResult, ParticipantSession, SessionEvent
from research_portal.countries import country_label
from research_portal.studies.models import Study

PAGE_SIZE = 50
MAX_PAGE_DIGITS = 6  # a page number past a million sessions is not from the page's own links
MAX_EVENTS = 500  # events shown on a session page (the newest are the ones cut)
STATES = tuple(choice for choice, _label in ParticipantSession.State.choices)
TRACED = ("smile", "valence")


# ---- the list ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionQuery:
    """Which sessions a list page shows: the overview's filters (country, device, dates), states, a page."""

    countries: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    date_from: date | None = None
    date_to: date | None = None
    page: int = 1

    def to_query(self, page: int | None = None) -> str:
        """The query string of this selection (at `page`, or its own), for links."""
        pairs = [
            *(("country", code) for code in self.countries),
            *(("device", device) for device in self.devices),
            *(("state", state) for state in self.states),
        ]
        if self.date_from:
            pairs.append(("from", self.date_from.isoformat()))
        if self.date_to:
            pairs.append(("to", self.date_to.isoformat()))
        number = self.page if page is None else page
        if number != 1:
            pairs.append(("page", str(number)))
        return urlencode(pairs)


def parse_session_query(query: QueryDict) -> SessionQuery:
    """The list's parameters, validated like the overview's (services.parse_filters: every parameter bounded
    and printable, countries, devices, dates) plus `state` (repeatable) and `page`; InvalidFilters with a
    readable reason for anything the page's own links do not make."""
    filters = parse_filters(query)
    states = [part.strip() for raw in query.getlist("state") for part in raw.split(",") if part.strip()]
    if any(state not in STATES for state in states):
        raise InvalidFilters(f"States are {', '.join(STATES)}.")
    pages = query.getlist("page")
    if len(pages) > 1:
        raise InvalidFilters("page may be given once.")
    page_text = (pages[0] if pages else "").strip() or "1"
    if not page_text.isascii() or not page_text.isdigit() or len(page_text) > MAX_PAGE_DIGITS:
        raise InvalidFilters("page must be a page number, e.g. 2.")
    page = int(page_text)
    if page < 1:
        raise InvalidFilters("page must be a page number, e.g. 2.")
    return SessionQuery(
        countries=filters.countries,
        devices=filters.devices,
        states=tuple(sorted(set(states))),
        date_from=filters.date_from,
        date_to=filters.date_to,
        page=page,
    )


def study_sessions(study: Study, selection: SessionQuery):
    """The study's sessions the selection asks for (previews never: they are an admin's own face)."""
    sessions = ParticipantSession.objects.filter(study=study, is_preview=False)
    if selection.countries:
        sessions = sessions.filter(country__in=selection.countries)
    if selection.devices:
        sessions = sessions.filter(device_type__in=selection.devices)
    if selection.states:
        sessions = sessions.filter(state__in=selection.states)
    if selection.date_from:
        sessions = sessions.filter(created_at__date__gte=selection.date_from)
    if selection.date_to:
        sessions = sessions.filter(created_at__date__lte=selection.date_to)
    return sessions


@dataclass(frozen=True)
class FrameFigures:
    """One session's stored readings, summed up for its row."""

    frames: int = 0
    faces: int = 0
    baseline_faces: int = 0
    median_quality: float | None = None

    @property
    def face_share(self) -> float | None:
        return self.faces / self.frames if self.frames else None

    @property
    def has_baseline(self) -> bool:
        return self.baseline_faces > 0


def frame_figures_sql(table: str, sessions: int) -> str:
    """The statement behind frame_figures for `sessions` session ids (%s placeholders), over `table` (quoted):
    each frame's rank by quality within its session (unknown qualities last) and the session's count of
    known qualities pick the middle frame(s). Plain window functions, so Postgres and SQLite run it alike."""
    placeholders = ", ".join(["%s"] * sessions)
    return f"""
        SELECT session_id,
               COUNT(*),
               SUM(CASE WHEN face_found THEN 1 ELSE 0 END),
               SUM(CASE WHEN ad_id IS NULL AND face_found THEN 1 ELSE 0 END),
               AVG(CASE WHEN quality_rank IN ((qualities + 1) / 2, (qualities + 2) / 2) THEN quality END)
        FROM (
            SELECT session_id, ad_id, face_found, quality,
                   ROW_NUMBER() OVER (
                       PARTITION BY session_id ORDER BY CASE WHEN quality IS NULL THEN 1 ELSE 0 END, quality
                   ) AS quality_rank,
                   COUNT(quality) OVER (PARTITION BY session_id) AS qualities
            FROM {table}
            WHERE session_id IN ({placeholders})
        ) ranked
        GROUP BY session_id
    """


def frame_figures(session_ids: list[int]) -> dict[int, FrameFigures]:
    """Per session: frames stored, frames with a face, baseline frames with a face, and the median quality
    (of the frames whose quality is known; the mean of the two middle values for an even count, as
    percentile_cont(0.5) has it). One query for the whole page (frame_figures_sql). Sessions without frames
    are left out."""
    if not session_ids:
        return {}
    table = connection.ops.quote_name(FrameResult._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(frame_figures_sql(table, len(session_ids)), session_ids)
        return {
            session_id: FrameFigures(int(frames), int(faces or 0), int(baseline or 0), median)
            for session_id, frames, faces, baseline, median in cursor.fetchall()
        }


def outcome(session: ParticipantSession) -> str:
    """'validated' for a validated complete, the exclusion's category (as the overview's table groups it)
    for a session that ended without one, '' while it runs."""
    if session.state == ParticipantSession.State.COMPLETED:
        return "validated"
    if session.state in EXCLUDED_STATES:
        return reason_category(session.state, session.exclusion_reason)
    return ""


def session_row(session: ParticipantSession, figures: FrameFigures) -> dict:
    consent = session.consent_version
    return {
        "session": session,
        "panel_id": session.external_participant_id,
        "country": session.country,
        "country_label": country_label(session.country),
        "device": session.get_device_type_display(),
        "state": session.get_state_display(),
        "outcome": outcome(session),
        "exclusion_reason": session.exclusion_reason,
        "frames": figures.frames,
        "face_share": figures.face_share,
        "median_quality": figures.median_quality,
        "has_baseline": figures.has_baseline,
        "consent_version": f"v{consent.version} ({consent.language})" if consent else "",
    }


def session_list(study: Study, selection: SessionQuery) -> dict:
    """One page of the study's sessions (newest first) with their figures, and what the filters offer.
    InvalidFilters for a page past the last."""
    sessions = (
        study_sessions(study, selection).select_related("consent_version").order_by("-created_at", "-pk")
    )
    paginator = Paginator(sessions, PAGE_SIZE)
    if selection.page > paginator.num_pages:
        raise InvalidFilters(f"There is no page {selection.page}: the list has {paginator.num_pages}.")
    page = paginator.page(selection.page)
    on_page = list(page.object_list)
    figures = frame_figures([session.pk for session in on_page])
    countries = (
        ParticipantSession.objects.filter(study=study, is_preview=False)
        .order_by("country")
        .values_list("country", flat=True)
        .distinct()
    )
    return {
        "rows": [session_row(session, figures.get(session.pk, FrameFigures())) for session in on_page],
        "page": page,
        "count": paginator.count,
        "previous_query": selection.to_query(page.previous_page_number()) if page.has_previous() else None,
        "next_query": selection.to_query(page.next_page_number()) if page.has_next() else None,
        "selection": selection,
        "options": {
            "countries": [(code, country_label(code)) for code in countries],
            "devices": [(device, device) for device in DEVICE_TYPES],
            "states": list(ParticipantSession.State.choices),
        },
    }


# ---- one session ---------------------------------------------------------------------------------------


def session_for_study(study: Study, session_id: int) -> ParticipantSession | None:
    """The study's session of that id (None for a preview, another study's, or none)."""
    return (
        ParticipantSession.objects.select_related("consent_version", "study")
        .filter(study=study, pk=session_id, is_preview=False)
        .first()
    )


def second_readings(session: ParticipantSession) -> list[dict]:
    """Per ad (None: the baseline screen), model version and second of the session: frames, frames with a
    face, mean smile and valence. One GROUP BY over the session's frames."""
    return list(
        FrameResult.objects.filter(session=session)
        .annotate(second=F("media_time_ms") / 1000)
        .values("ad_id", "model_version", "second")
        .annotate(
            frames=Count("id"),
            faces=Count("id", filter=Q(face_found=True)),
            smile=Avg("smile"),
            valence=Avg("valence"),
        )
        .order_by("ad_id", "model_version", "second")
    )


def session_trace_figure(title: str, duration_s: float, readings: list[dict]) -> dict:
    """One ad as this participant watched it: mean smile and valence per second (one line per model version
    when the session was read by several), and the frames with and without a face behind each second."""
    versions = sorted({row["model_version"] for row in readings})
    data = []
    for version in versions:
        rows = [row for row in readings if row["model_version"] == version]
        x = [row["second"] + 0.5 for row in rows]
        for measure in TRACED:
            name = MEASURE_LABELS[measure] + (f" ({version})" if len(versions) > 1 else "")
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": name,
                    "x": x,
                    "y": clean([row[measure] if row[measure] is not None else float("nan") for row in rows]),
                    "line": {"width": 2, "color": MEASURE_COLORS[measure]},
                    "marker": {"size": 4, "color": MEASURE_COLORS[measure]},
                    "hovertemplate": f"{name}: %{{y:.3f}}<extra></extra>",
                }
            )
    seconds = sorted({row["second"] for row in readings})
    faces = {second: 0 for second in seconds}
    frames = dict(faces)
    for row in readings:
        faces[row["second"]] += row["faces"]
        frames[row["second"]] += row["frames"]
    x = [second + 0.5 for second in seconds]
    for name, values, color in (
        ("Frames with a face", [faces[s] for s in seconds], "#9aa5b1"),
        ("Frames without a face", [frames[s] - faces[s] for s in seconds], "#d55e00"),
    ):
        data.append(
            {
                "type": "bar",
                "name": name,
                "x": x,
                "y": values,
                "xaxis": "x",
                "yaxis": "y2",
                "marker": {"color": color},
                "hovertemplate": f"{name}: %{{y}}<extra></extra>",
            }
        )
    layout = base_layout(f"{title}: this participant per second", 440)
    layout.update(
        xaxis=axis(TIME_AXIS, range=[0, max(duration_s, seconds[-1] + 1 if seconds else 1)], anchor="y2"),
        yaxis=axis("Score", domain=[0.35, 1.0]),
        yaxis2=axis("Frames", domain=[0.0, 0.25], rangemode="tozero"),
        barmode="stack",
        bargap=0.1,
    )
    return {"data": data, "layout": layout}


def baseline_summary(session: ParticipantSession) -> dict:
    """The session's baseline screen: frames, frames with a face, mean smile and valence over them."""
    return FrameResult.objects.filter(session=session, ad__isnull=True).aggregate(
        frames=Count("id"),
        faces=Count("id", filter=Q(face_found=True)),
        smile=Avg("smile"),
        valence=Avg("valence"),
    )


def session_detail(session: ParticipantSession) -> dict:
    """What the session page shows: the session, its ads (in the order it saw them) with a trace figure
    each, its baseline, and its page events (the first MAX_EVENTS)."""
    readings = second_readings(session)
    ads = {ad.pk: ad for ad in session.study.ads.all()}
    sequence = session.ad_sequence if isinstance(session.ad_sequence, list) else []
    watched = list(dict.fromkeys(ad_id for ad_id in sequence if isinstance(ad_id, int) and ad_id in ads))
    watched += sorted({row["ad_id"] for row in readings if row["ad_id"] in ads} - set(watched))
    traces = []
    for ad_id in watched:
        ad, rows = ads[ad_id], [row for row in readings if row["ad_id"] == ad_id]
        traces.append(
            {
                "ad": ad,
                "figure_id": f"fig-ad-{ad.pk}",
                "frames": sum(row["frames"] for row in rows),
                "faces": sum(row["faces"] for row in rows),
                "figure": session_trace_figure(ad.title, ad.duration_ms / 1000, rows) if rows else None,
            }
        )
    events = list(session.events.select_related("ad").order_by("created_at", "id")[: MAX_EVENTS + 1])
    return {
        "row": session_row(session, frame_figures([session.pk]).get(session.pk, FrameFigures())),
        "model_versions": sorted({row["model_version"] for row in readings}),
        "traces": traces,
        "figures": {trace["figure_id"]: trace["figure"] for trace in traces if trace["figure"]},
        "baseline": baseline_summary(session),
        "events": [event_row(event) for event in events[:MAX_EVENTS]],
        "more_events": len(events) > MAX_EVENTS,
    }


def event_row(event: SessionEvent) -> dict:
    return {
        "name": event.get_name_display(),
        "code": event.name,
        "ad": event.ad.title if event.ad else "",
        "media_time_s": event.media_time_ms / 1000 if event.media_time_ms is not None else None,
        "detail": event.detail,
        "at": event.created_at,
    }
