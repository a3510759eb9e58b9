"""The load generator's own Django access: migrate, make a study with ready-to-capture sessions, read the
run's FrameResults back. Everything here is synchronous and runs outside the event loop."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlparse

LOAD_ORGANIZATION = "Load test"


def ensure_database(database_url: str) -> str:
    """Create the database named in `database_url` when it does not exist yet; return its name."""
    import psycopg2
    from psycopg2 import sql

    parsed = urlparse(database_url)
    name = unquote(parsed.path.lstrip("/")) or "postgres"
    connection = psycopg2.connect(
        dbname="postgres",
        user=unquote(parsed.username or "") or None,
        password=unquote(parsed.password or "") or None,
        host=parsed.hostname or None,
        port=parsed.port or None,
        connect_timeout=5,
    )
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        connection.close()
    return name


def setup_django(database_url: str, redis_url: str) -> None:
    """Configure Django in this process for the run's database (the same settings module as the server)."""
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "research_portal.settings")
    import django

    django.setup()


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


@dataclass(frozen=True)
class LoadStudy:
    study_id: int
    ad_id: int
    session_ids: list[int]
    tokens: list[str]
    fps: int


def create_load_study(
    participants: int, seconds: float, fps: float, label: str, store_frames: bool = False
) -> LoadStudy:
    """A live study with one ad long enough for the run, and `participants` sessions ready to capture
    (consented through the domain functions, camera check passed), as the socket requires. `store_frames`:
    the study opts in to keeping its frames (the workers write them under their PORTAL_MEDIA_ROOT)."""
    from django.db import transaction
    from django.utils import timezone

    from research_portal.accounts.models import Organization
    from research_portal.capture.models import ParticipantSession
    from research_portal.capture.participation import do_record_consent, do_start_session
    from research_portal.studies.models import Ad, Study

    organization, _ = Organization.objects.get_or_create(name=LOAD_ORGANIZATION)
    with transaction.atomic():
        study = Study.objects.create(
            organization=organization,
            name=f"Load {label}",
            status=Study.Status.LIVE,
            capture_fps=max(1, round(fps)),
            baseline_seconds=0,
            store_frames=store_frames,
        )
        # The socket only needs the ad's id and duration; the video file itself is never read here.
        ad = Ad.objects.create(
            study=study,
            title="Load ad",
            video="ads/load-test.webm",
            duration_ms=int((seconds + 3600) * 1000),
        )
        session_ids, tokens = [], []
        for index in range(participants):
            session = do_start_session(study, f"load-{index}", "DE", "en", "desktop")
            do_record_consent(session)
            session.checks_passed_at = timezone.now()
            session.save(update_fields=["checks_passed_at"])
            session_ids.append(session.pk)
            tokens.append(session.token)
        assert all(s.state == ParticipantSession.State.CONSENTED for s in study.sessions.all())
    return LoadStudy(study.pk, ad.pk, session_ids, tokens, study.capture_fps)


def delete_load_study(study_id: int, attempts: int = 4) -> bool:
    """Delete the run's study and its rows; False (data kept, a warning printed) when it keeps failing.

    Workers may still be refreshing the sessions' analytics rollups (debounced tasks) while we delete, which
    Postgres can resolve as a deadlock: wait and try again."""
    from django.db import OperationalError

    from research_portal.capture.models import ParticipantSession
    from research_portal.studies.models import Study

    for attempt in range(attempts):
        try:
            # Sessions first: they protect the consent versions the study owns.
            ParticipantSession.objects.filter(study_id=study_id).delete()
            Study.objects.filter(pk=study_id).delete()
            return True
        except OperationalError as error:
            print(
                f"  could not delete load study {study_id} (attempt {attempt + 1}): {error}".splitlines()[0]
            )
            time.sleep(2.0 * (attempt + 1))
    return False


def stored_count(session_ids: list[int]) -> int:
    from research_portal.capture.models import FrameResult

    return FrameResult.objects.filter(session_id__in=session_ids).count()


def frame_stats(session_ids: list[int], window: tuple[float, float]) -> dict:
    """What Postgres holds for the run: rows, duplicates, stored rate in the window, latency percentiles
    (stored_at - captured_at) of the frames captured in the window. `window` is epoch seconds."""
    from django.db import connection

    from research_portal.capture.models import FrameResult

    table = connection.ops.quote_name(FrameResult._meta.db_table)
    start = datetime.fromtimestamp(window[0], tz=UTC)
    end = datetime.fromtimestamp(window[1], tz=UTC)
    latency = "EXTRACT(EPOCH FROM (stored_at - captured_at)) * 1000"
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT COUNT(*), COUNT(*) - COUNT(DISTINCT (session_id, seq)), "
            f"COALESCE(AVG(CASE WHEN face_found THEN 1.0 ELSE 0.0 END), 0), "
            f"MIN(stored_at), MAX(stored_at) FROM {table} WHERE session_id = ANY(%s)",
            [session_ids],
        )
        total, duplicates, face_ratio, first_stored, last_stored = cursor.fetchone()
        cursor.execute(
            f"SELECT COUNT(*) FROM {table} WHERE session_id = ANY(%s) AND stored_at >= %s AND stored_at < %s",
            [session_ids, start, end],
        )
        stored_in_window = cursor.fetchone()[0]
        cursor.execute(
            f"SELECT COUNT(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY {latency}), "
            f"MAX({latency}) FROM {table} "
            f"WHERE session_id = ANY(%s) AND captured_at >= %s AND captured_at < %s",
            [session_ids, start, end],
        )
        count, percentiles, latency_max = cursor.fetchone()
    percentiles = percentiles or [None, None, None]
    span = max(1e-9, window[1] - window[0])
    return {
        "stored": total,
        "duplicates": duplicates,
        "face_found_ratio": round(float(face_ratio), 4),
        "stored_in_window": stored_in_window,
        "stored_per_s": round(stored_in_window / span, 2),
        "latency_stored_ms": {
            "n": count,
            "p50": _round(percentiles[0]),
            "p95": _round(percentiles[1]),
            "p99": _round(percentiles[2]),
            "max": _round(latency_max),
        },
        "last_stored_at": last_stored.timestamp() if last_stored else None,
        "first_stored_at": first_stored.timestamp() if first_stored else None,
    }


def _round(value) -> float | None:
    return None if value is None else round(float(value), 1)
