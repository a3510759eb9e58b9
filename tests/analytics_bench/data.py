"""Synthetic data for the dashboard benchmark: one study, one 30 s ad (or `ads` of them, each watched by its
own share of the participants: for the scorecard, whose norm is every ad of the organisation), and enough
participants to give the ad(s) N FrameResults (10 million by default), generated inside Postgres with
INSERT ... SELECT generate_series.

The readings have structure an analyst would look for: a smile peak around a joke (seconds 8-12) whose size
differs by country, a surprise at the reveal (second 20), per-participant offsets and per-frame noise, faces
lost now and then, heads turned away now and then (more often in the calm end, after 25 s), quality spread
over the filter levels, a 5 s baseline screen per participant.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from inference.training.export import VALENCE_WEIGHTS
from research_portal.accounts.models import Organization
from research_portal.analytics.rollups import do_rebuild_rollups
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.readings import READING_LABELS
from research_portal.studies.models import Ad, Study

COUNTRIES = ["US", "GB", "DE", "FR", "ES", "BR", "JP"]
# How strongly each country smiles at the joke (the differences the dashboard should find).
JOKE_SMILE = {"US": 0.45, "GB": 0.35, "DE": 0.25, "FR": 0.3, "ES": 0.4, "BR": 0.5, "JP": 0.15}
BENCH_MODEL = "bench-model-1"
FRAME_COLUMNS = [
    "session_id",
    "ad_id",
    "seq",
    "media_time_ms",
    "captured_at",
    "face_found",
    "face_x",
    "face_y",
    "face_w",
    "face_h",
    "face_score",
    *READING_LABELS,  # in this order in the SELECT below
    "smile",
    "valence",
    "quality",
    "face_yaw",
    "face_pitch",
    "attending",
    "error",
    "model_version",
    "stored_at",
]


@dataclass
class BenchData:
    study: Study
    ad: Ad  # the first of `ads`
    ads: list[Ad]
    sessions: int
    ad_frames: int
    baseline_frames: int
    timings_s: dict[str, float] = field(default_factory=dict)


def check_frame_columns() -> None:
    """The INSERT below names every FrameResult column; fail clearly if the model has changed."""
    columns = [f.column for f in FrameResult._meta.concrete_fields if f.column != "id"]
    missing = sorted(set(columns) - set(FRAME_COLUMNS))
    if missing:
        raise RuntimeError(f"FrameResult has columns the benchmark generator does not fill: {missing}")


def _frames_sql(baseline: bool) -> str:
    """One row per (session, frame): session s.*, frame index g; seq continues after the baseline."""
    frames = FrameResult._meta.db_table
    weights = " + ".join(f"{weight} * {name}" for name, weight in VALENCE_WEIGHTS.items())
    joke = " ".join(f"WHEN '{country}' THEN {amp}" for country, amp in JOKE_SMILE.items())
    if baseline:
        time_ms, ad_id, seq = "g * 200", "NULL", "g"
        smile_signal, surprise_signal, turned_away_share = "0.0", "0.0", "0.03"
    else:
        time_ms, ad_id, seq = "g * 200", "%(ad_id)s", "g + %(baseline_frames)s"
        # A joke at 8-12 s (Gaussian bump), a reveal at 20 s (surprise), a calm end.
        smile_signal = f"(CASE s.country {joke} ELSE 0.3 END) * exp(-power((g * 0.2 - 10.0) / 1.6, 2))"
        surprise_signal = "0.35 * exp(-power((g * 0.2 - 20.5) / 0.8, 2))"
        turned_away_share = "(CASE WHEN g * 0.2 >= 25.0 THEN 0.15 ELSE 0.03 END)"
    return f"""
        INSERT INTO {frames} ({", ".join(FRAME_COLUMNS)})
        SELECT session_id, ad_id, seq, media_time_ms, captured_at, face_found,
               CASE WHEN face_found THEN 96 END, CASE WHEN face_found THEN 56 END,
               CASE WHEN face_found THEN 128 END, CASE WHEN face_found THEN 128 END,
               CASE WHEN face_found THEN 0.9 END,
               CASE WHEN face_found THEN angry END, CASE WHEN face_found THEN disgust END,
               CASE WHEN face_found THEN fear END, CASE WHEN face_found THEN happy END,
               CASE WHEN face_found THEN sad END, CASE WHEN face_found THEN surprise END,
               CASE WHEN face_found THEN neutral END, CASE WHEN face_found THEN contempt END,
               CASE WHEN face_found THEN happy END,
               CASE WHEN face_found THEN {weights} END,
               CASE WHEN face_found THEN quality END,
               CASE WHEN face_found THEN yaw END, CASE WHEN face_found THEN pitch END,
               CASE WHEN face_found THEN NOT turned_away END, '', %(model)s, %(now)s
        FROM (
            SELECT session_id, ad_id, seq, media_time_ms, captured_at, face_found, quality, happy, surprise,
                   turned_away, CASE WHEN turned_away THEN 45.0 ELSE yaw END AS yaw, pitch,
                   rest * 0.6 AS neutral, rest * 0.1 AS sad, rest * 0.08 AS angry, rest * 0.07 AS fear,
                   rest * 0.1 AS disgust, rest * 0.05 AS contempt
            FROM (
                SELECT session_id, ad_id, seq, media_time_ms, captured_at, face_found, quality, happy,
                       surprise, turned_away, yaw, pitch, greatest(1.0 - happy - surprise, 0.0) AS rest
                FROM (
                    SELECT s.id AS session_id, {ad_id}::bigint AS ad_id, {seq} AS seq,
                           {time_ms} AS media_time_ms,
                           s.created_at + make_interval(secs => g * 0.2) AS captured_at,
                           random() > 0.03 AS face_found,
                           least(1.0, 0.25 + 0.75 * sqrt(random())) AS quality,
                           least(0.95, greatest(0.01, 0.06 + s.smile_offset + {smile_signal} * s.smile_gain
                                 + (random() - 0.5) * 0.12)) AS happy,
                           least(0.6, greatest(0.0, 0.03 + {surprise_signal} + (random() - 0.5) * 0.04))
                               AS surprise,
                           random() < {turned_away_share} AS turned_away,
                           (random() - 0.5) * 30.0 AS yaw, (random() - 0.5) * 10.0 - 3.0 AS pitch
                    FROM (
                        SELECT p.id, p.country, p.created_at, random() * 0.12 AS smile_offset,
                               0.5 + random() AS smile_gain
                        FROM {ParticipantSession._meta.db_table} p
                        WHERE p.study_id = %(study_id)s AND p.id BETWEEN %(first)s AND %(last)s
                    ) s CROSS JOIN generate_series(0, %(frames)s - 1) g
                ) raw
            ) split
        ) final
    """


@contextmanager
def frame_indexes_deferred(log=print) -> Iterator[None]:
    """Bulk-load idiom: drop FrameResult's foreign keys, unique constraint and secondary indexes, load, then
    recreate exactly the same definitions (one sorted build each instead of 12 million index insertions and
    foreign-key trigger calls). The schema the benchmark reads is the production schema."""
    table = FrameResult._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype IN ('f', 'u')",
            [table],
        )
        constraints = cursor.fetchall()
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
            "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
            [table, table],
        )
        indexes = cursor.fetchall()
        for name, _kind, _definition in constraints:
            cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for name, _definition in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
    try:
        yield
    finally:
        started = time.perf_counter()
        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '512MB'")
            for _name, definition in indexes:
                cursor.execute(definition)
            # Unique constraints first: the foreign keys are validated afterwards in one pass each.
            for name, _kind, definition in sorted(constraints, key=lambda c: c[1] != "u"):
                cursor.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            cursor.execute("RESET maintenance_work_mem")
        log(f"  frame indexes and constraints rebuilt in {time.perf_counter() - started:.1f} s")


def do_generate_bench_data(
    ad_frames: int = 10_000_000,
    duration_s: int = 30,
    fps: int = 5,
    baseline_s: int = 5,
    seed: float = 0.42,
    chunks: int = 8,
    workers: int = 2,
    ads: int = 1,
    log=print,
) -> BenchData:
    """Create the benchmark study and its frames (Postgres only), then build the rollups set-wise."""
    if connection.vendor != "postgresql":
        raise RuntimeError("The benchmark generator needs Postgres (generate_series, random()).")
    check_frame_columns()
    timings: dict[str, float] = {}
    frames_per_session = duration_s * fps
    baseline_frames = baseline_s * fps
    session_count = math.ceil(ad_frames / frames_per_session)
    started = time.perf_counter()
    with transaction.atomic():
        organization, _ = Organization.objects.get_or_create(name="Benchmark Org")
        study = Study.objects.create(
            organization=organization,
            name="Benchmark study",
            status=Study.Status.LIVE,
            allowed_countries=COUNTRIES,
        )
        ad_list = []
        for index in range(ads):
            title = "Benchmark ad (30 s)" if index == 0 else f"Benchmark ad {index + 1} (30 s)"
            one = Ad(study=study, title=title, duration_ms=duration_s * 1000, position=index)
            one.video.name = "ads/benchmark-ad.webm"  # no file: the benchmark measures server time, not video
            one.save()
            ad_list.append(one)
        ad = ad_list[0]
        with connection.cursor() as cursor:
            cursor.execute("SELECT setseed(%s)", [seed])
        # The ORM fills every column of the session model (others add fields); created_at is spread below.
        states = _session_states(session_count)
        ParticipantSession.objects.bulk_create(
            [
                ParticipantSession(
                    study=study,
                    country=country,
                    device_type=device,
                    state=state,
                    ad_sequence=[ad.pk],
                    external_participant_id=f"bench-{index}",
                    consent_at=timezone.now(),
                    checks_passed_at=timezone.now() if state != "started" else None,
                    viewing_ended_at=timezone.now() if state in ("completed", "failed") else None,
                    exclusion_reason=reason,
                )
                for index, (country, device, state, reason) in enumerate(states)
            ],
            batch_size=5000,
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {ParticipantSession._meta.db_table} SET created_at = %s - make_interval(secs => "
                "floor(random() * 14 * 86400)) WHERE study_id = %s",
                [timezone.now(), study.pk],
            )
    timings["sessions"] = time.perf_counter() - started
    log(f"  {session_count} sessions in {timings['sessions']:.1f} s")

    ids = list(ParticipantSession.objects.filter(study=study).order_by("pk").values_list("pk", flat=True))
    chunks = max(chunks, ads)  # chunk i's sessions watch ad_list[i * ads // chunks]
    bounds = [ids[int(len(ids) * i / chunks)] for i in range(chunks)] + [ids[-1] + 1]
    for index in range(chunks):
        watched = ad_list[index * ads // chunks]
        if watched is not ad:
            ParticipantSession.objects.filter(pk__gte=bounds[index], pk__lt=bounds[index + 1]).update(
                ad_sequence=[watched.pk]
            )
    started = time.perf_counter()
    done = []

    def load_chunk(index: int) -> None:
        params = {
            "ad_id": ad_list[index * ads // chunks].pk,
            "study_id": study.pk,
            "first": bounds[index],
            "last": bounds[index + 1] - 1,
            "model": BENCH_MODEL,
            "now": timezone.now(),
            "baseline_frames": baseline_frames,
        }
        try:
            with connection.cursor() as cursor:  # this thread's own connection
                cursor.execute("SET synchronous_commit = off")  # the benchmark's own database
                cursor.execute("SELECT setseed(%s)", [seed / (index + 2)])
                cursor.execute(_frames_sql(True), {**params, "frames": baseline_frames})
                cursor.execute(_frames_sql(False), {**params, "frames": frames_per_session})
        finally:
            connection.close()
        done.append(index)
        log(f"  frames: {len(done)}/{chunks} chunks after {time.perf_counter() - started:.0f} s")

    with frame_indexes_deferred(log), ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(load_chunk, range(chunks)))  # one chunk per core at a time; list() re-raises errors
    timings["frames"] = time.perf_counter() - started

    started = time.perf_counter()
    with connection.cursor() as cursor:
        for model in (FrameResult, ParticipantSession):  # fresh statistics, or the planner guesses
            cursor.execute(f"ANALYZE {model._meta.db_table}")
        cursor.execute("SET work_mem = '256MB'")
        counts = do_rebuild_rollups()  # the benchmark database holds this study only: full rebuild
        cursor.execute("RESET work_mem")
        for table in counts:
            cursor.execute(f"VACUUM ANALYZE {table}")
    timings["rollups"] = time.perf_counter() - started
    log(f"  rollups {counts} in {timings['rollups']:.1f} s")
    return BenchData(
        study=study,
        ad=ad,
        ads=ad_list,
        sessions=session_count,
        ad_frames=session_count * frames_per_session,
        baseline_frames=session_count * baseline_frames,
        timings_s=timings,
    )


def _session_states(count: int) -> list[tuple[str, str, str, str]]:
    """Deterministic mix: 7 countries, 60/30/10 desktop/mobile/tablet, 72% validated, 13% failed, 5% over
    quota, 10% still viewing."""
    out = []
    for index in range(count):
        country = COUNTRIES[(index * 7919) % len(COUNTRIES)]
        device = ("desktop",) * 6 + ("mobile",) * 3 + ("tablet",)
        roll = (index * 104729) % 100
        if roll < 72:
            state, reason = "completed", ""
        elif roll < 85:
            state, reason = "failed", "not enough usable frames: Benchmark ad (30 s): too few faces"
        elif roll < 90:
            state, reason = "over_quota", "quota of validated completes reached"
        else:
            state, reason = "viewing", ""
        out.append((country, device[(index * 31) % 10], state, reason))
    return out
