"""Keeping the rollups (models.py) in step with the raw FrameResults.

Two ways in, one definition (tests prove they agree):
- `do_refresh_session` / `do_refresh_and_notify`: after each bulk insert of readings (debounce.py's
  `do_update_rollups`, on capture's frames_stored). Per session, under a row lock, the touched (ad, second)
  keys are recomputed *from the raw rows in the database* (so a re-delivered batch, whose rows were
  skipped by ON CONFLICT DO NOTHING, changes nothing), and the
  difference between the session's old and new contribution is added to the SecondCell sums. A session
  whose attributes changed (completed, failed...) moves its whole contribution to its new cells the same way.
- `do_rebuild_rollups()`: set-based SQL from the raw frames, for a first install, a repair, or the benchmark.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date

import numpy as np
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet

from research_portal.analytics.definitions import (
    ATTENTION_THRESHOLD,
    CELL_STATS,
    EXPRESSIVENESS_SOURCE,
    MEASURES,
    NULLABLE_MEASURES,
    QUALITY_LEVELS,
    SMILE_THRESHOLD,
    cell_value_columns,
    count_column,
)
from research_portal.analytics.live import notify_rollups_changed
from research_portal.analytics.models import (
    BaselineRollup,
    ParticipantAdSummary,
    SecondCell,
    SecondRollup,
    SessionRollup,
)
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.readings import READING_LABELS
from research_portal.studies.models import Ad

logger = logging.getLogger(__name__)

COMPLETED = ParticipantSession.State.COMPLETED
SUM_COLUMNS = [f"sum_{m}" for m in MEASURES]
# Rows per multi-row INSERT: below SQLite's and Postgres' bound-parameter limits.
INSERT_CHUNK = 250


def _levels_sql() -> str:
    """The quality levels as a derived table (portable: Postgres and SQLite)."""
    return " UNION ALL ".join(
        f"SELECT {index} AS level, CAST({threshold!r} AS DOUBLE PRECISION) AS min_quality"
        for index, threshold in enumerate(QUALITY_LEVELS)
    )


# A frame whose reading counts at a level: a face was found, it has its readings, and at level k > 0 its
# quality is at least threshold k.
USABLE_FRAME = (
    "f.face_found AND f.happy IS NOT NULL AND f.smile IS NOT NULL "
    "AND (q.level = 0 OR f.quality >= q.min_quality)"
)
# An analysed frame that attends: a face was found and it is turned to the screen, or has no pose (Haar, or
# stored before poses were: a frontal-face detector found it; docs/analytics.md, "Attention").
ATTENDING_FRAME = "f.face_found AND f.attending IS NOT FALSE"


def _frame_sums_select(group_by_session: bool, baseline: bool) -> str:
    """SELECT of per-(participant, second, level, model) frame counts and sums; {where} is filled in by the
    caller.

    Every analysed frame (no error) counts at every level towards n_analysed and, when it attends, towards
    n_attending; the readings' counts and sums take only the level's USABLE_FRAMEs."""
    frames = FrameResult._meta.db_table

    def total(measure: str) -> str:
        # An emotion the rows' model does not have stays NULL (no reading), never 0.
        summed = f"SUM(f.{measure}) FILTER (WHERE {USABLE_FRAME})"
        return summed if measure in READING_LABELS else f"COALESCE({summed}, 0.0)"

    keys = ["f.session_id"] if group_by_session else []
    keys += [] if baseline else ["f.ad_id", "f.media_time_ms / 1000"]
    keys += ["q.level", "f.model_version"]
    key_sql = ", ".join(keys)
    return (
        f"SELECT {key_sql}, COUNT(*) FILTER (WHERE {USABLE_FRAME}), "
        f"COUNT(f.valence) FILTER (WHERE {USABLE_FRAME}), "
        f"COUNT(*), COUNT(*) FILTER (WHERE {ATTENDING_FRAME}), "
        f"{', '.join(total(m) for m in MEASURES)} "
        f"FROM {frames} f CROSS JOIN ({_levels_sql()}) q "
        f"WHERE f.error = '' AND f.ad_id IS {'' if baseline else 'NOT '}NULL {{where}} "
        f"GROUP BY {key_sql}"
    )


# ---- per-session contributions (numpy) ---------------------------------------------------------------------


@dataclass(frozen=True)
class SessionAttributes:
    """The filter dimensions a session's rows are filed under in SecondCell and ParticipantAdSummary."""

    country: str
    device_type: str
    completed: bool
    day: date


def attributes_of(session: dict) -> SessionAttributes:
    return SessionAttributes(
        country=session["country"],
        device_type=session["device_type"],
        completed=session["state"] == COMPLETED,
        # The session's start date in UTC, as the SQL rebuild computes it.
        day=session["created_at"].astimezone(UTC).date(),
    )


SECOND_KEY_FIELDS = ["ad_id", "second", "level", "model_version"]
BASELINE_KEY_FIELDS = ["level", "model_version"]
COUNT_FIELDS = ["n_frames", "n_valence", "n_analysed", "n_attending"]
MEASURE_COUNT_INDEX = np.array([1 if m in NULLABLE_MEASURES else 0 for m in MEASURES])
N_FRAMES, N_ANALYSED, N_ATTENDING = (COUNT_FIELDS.index(f) for f in ("n_frames", "n_analysed", "n_attending"))


@dataclass
class SessionRows:
    """A session's SecondRollup and BaselineRollup rows as arrays."""

    keys: list[tuple]  # (ad_id, second, level, model_version)
    counts: np.ndarray  # [rows, len(COUNT_FIELDS)]: n_frames, n_valence, n_analysed, n_attending
    sums: np.ndarray  # [rows, len(MEASURES)]
    baseline: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]  # (level, model) -> (counts, sums)

    @classmethod
    def load(cls, session_id: int) -> SessionRows:
        second_rows = SecondRollup.objects.filter(session_id=session_id).values_list(
            *SECOND_KEY_FIELDS, *COUNT_FIELDS, *SUM_COLUMNS
        )
        baseline_rows = BaselineRollup.objects.filter(session_id=session_id).values_list(
            *BASELINE_KEY_FIELDS, *COUNT_FIELDS, *SUM_COLUMNS
        )
        return cls.from_rows(list(second_rows), list(baseline_rows))

    @classmethod
    def from_rows(cls, second_rows: list[tuple], baseline_rows: list[tuple]) -> SessionRows:
        """From (ad_id, second, level, model_version, *COUNT_FIELDS, *sums) and
        (level, model_version, *COUNT_FIELDS, *sums) rows; second rows sorted by their key."""
        second_rows = sorted(second_rows, key=lambda row: tuple(row[:4]))
        width = len(COUNT_FIELDS)
        numbers = np.array([row[4:] for row in second_rows], dtype=float).reshape(-1, width + len(MEASURES))
        return cls(
            keys=[tuple(row[:4]) for row in second_rows],
            counts=numbers[:, :width],
            sums=numbers[:, width:],
            baseline={
                tuple(row[:2]): (
                    np.array(row[2 : 2 + width], dtype=float),
                    np.array(row[2 + width :], dtype=float),
                )
                for row in baseline_rows
            },
        )

    def second_rows(self) -> list[tuple]:
        """The rows from_rows() takes."""
        return [
            (*key, *counts, *sums)
            for key, counts, sums in zip(self.keys, self.counts.tolist(), self.sums.tolist(), strict=True)
        ]

    def baseline_rows(self) -> list[tuple]:
        return [(*key, *counts.tolist(), *sums.tolist()) for key, (counts, sums) in self.baseline.items()]

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """Per row and measure: the participant's mean in that second, and that mean minus their baseline
        mean (NaN where the measure or the baseline has no frame)."""
        counts = self.counts[:, MEASURE_COUNT_INDEX]
        with np.errstate(divide="ignore", invalid="ignore"):
            means = np.where(counts > 0, self.sums / counts, np.nan)
            base = np.full_like(means, np.nan)
            for row, (_ad, _second, level, model) in enumerate(self.keys):
                found = self.baseline.get((level, model))
                if found is not None:
                    base_counts = found[0][MEASURE_COUNT_INDEX]
                    base[row] = np.where(base_counts > 0, found[1] / base_counts, np.nan)
        return means, means - base

    def attention(self) -> np.ndarray:
        """Per row: the participant's attention share in that second (NaN without an analysed frame)."""
        analysed = self.counts[:, N_ANALYSED]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(analysed > 0, self.counts[:, N_ATTENDING] / analysed, np.nan)

    def inattentive(self) -> np.ndarray:
        """Per row: the participant's attention in that second is below ATTENTION_THRESHOLD (the same
        comparison, in counts, as the rebuild's SQL)."""
        analysed = self.counts[:, N_ANALYSED]
        return (analysed > 0) & (self.counts[:, N_ATTENDING] < ATTENTION_THRESHOLD * analysed)


def cell_contributions(rows: SessionRows, attributes: SessionAttributes) -> dict[tuple, np.ndarray]:
    """What one session adds to SecondCell: cell key -> the values of definitions.cell_value_columns()
    (participants with a usable reading, CELL_STATS per measure, then attention's)."""
    if not rows.keys:
        return {}
    means, corrected = rows.means()
    has_mean, has_corrected = np.isfinite(means), np.isfinite(corrected)
    means, corrected = np.nan_to_num(means), np.nan_to_num(corrected)
    per_stat = {
        "n": has_mean.astype(float),
        "s": means,
        "q": means * means,
        "nb": has_corrected.astype(float),
        "sb": corrected,
        "qb": corrected * corrected,
    }
    # [rows, measures, stats] -> [rows, measures * stats], the order of definitions.cell_columns().
    stacked = np.stack([per_stat[stat] for stat in CELL_STATS], axis=2).reshape(len(rows.keys), -1)
    attention = rows.attention()
    has_attention = np.isfinite(attention)
    attention = np.nan_to_num(attention)
    values = np.hstack(
        [
            (rows.counts[:, [N_FRAMES]] > 0).astype(float),
            stacked,
            np.stack([has_attention.astype(float), attention, attention * attention], axis=1),
        ]
    )
    a = attributes
    return {
        (ad, level, model, second, a.country, a.device_type, a.completed, a.day): values[index]
        for index, (ad, second, level, model) in enumerate(rows.keys)
    }


def participant_summaries(
    session_id: int, rows: SessionRows, attributes: SessionAttributes
) -> list[ParticipantAdSummary]:
    """One ParticipantAdSummary per (ad, level, model) of the session (mirrors the rebuild's SQL)."""
    if not rows.keys:
        return []
    means, corrected = rows.means()
    attention, inattentive = rows.attention(), rows.inattentive()
    valence, smile = MEASURES.index("valence"), MEASURES.index("smile")
    neutral = MEASURES.index(EXPRESSIVENESS_SOURCE)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, (ad, _second, level, model) in enumerate(rows.keys):
        groups[(ad, level, model)].append(index)

    def nan_stat(function, values: np.ndarray) -> float | None:
        finite = values[np.isfinite(values)]
        return float(function(finite)) if finite.size else None

    summaries = []
    for (ad, level, model), indices in groups.items():
        # Each group's rows are in second order (SessionRows keeps them sorted by key).
        seconds = np.array([rows.keys[index][1] for index in indices])
        lost = seconds[inattentive[indices]]
        peak_smile = nan_stat(np.max, means[indices, smile])
        summaries.append(
            ParticipantAdSummary(
                session_id=session_id,
                ad_id=ad,
                level=level,
                model_version=model,
                country=attributes.country,
                device_type=attributes.device_type,
                completed=attributes.completed,
                day=attributes.day,
                n_seconds=int((rows.counts[indices, N_FRAMES] > 0).sum()),
                n_frames=int(rows.counts[indices, N_FRAMES].sum()),
                mean_valence=nan_stat(np.mean, means[indices, valence]),
                mean_valence_bc=nan_stat(np.mean, corrected[indices, valence]),
                peak_smile=peak_smile,
                peak_smile_bc=nan_stat(np.max, corrected[indices, smile]),
                smiled=peak_smile is not None and peak_smile >= SMILE_THRESHOLD,
                mean_expressiveness=nan_stat(np.mean, 1.0 - means[indices, neutral]),
                mean_expressiveness_bc=nan_stat(np.mean, -corrected[indices, neutral]),
                mean_attention=nan_stat(np.mean, attention[indices]),
                retained_seconds=int(lost.min() if lost.size else seconds.max() + 1),
            )
        )
    return summaries


def cell_difference(
    before: dict[tuple, np.ndarray], after: dict[tuple, np.ndarray]
) -> dict[tuple, np.ndarray]:
    """after - before, per cell key, for the cells that changed (one array operation, not one per cell)."""
    keys = list(before.keys() | after.keys())
    if not keys:
        return {}
    width = len(next(iter(before.values() or after.values())))
    zeros = np.zeros(width)
    difference = np.array([after.get(key, zeros) for key in keys]) - np.array(
        [before.get(key, zeros) for key in keys]
    )
    changed = np.flatnonzero(np.any(difference != 0.0, axis=1))
    return {keys[index]: difference[index] for index in changed}


def apply_cell_delta(delta: dict[tuple, np.ndarray]) -> None:
    """Add `delta` to SecondCell rows, creating them as needed (one upsert per chunk, keys sorted so that
    concurrent workers lock shared cells in the same order)."""
    if not delta:
        return
    table = SecondCell._meta.db_table
    keys = ["ad_id", "level", "model_version", "second", "country", "device_type", "completed", "day"]
    values = cell_value_columns()
    is_count = np.array([column == "participants" or column.startswith("n") for column in values])
    # Counts first, then sums: each row's numbers are two .tolist() calls, not one conversion per value.
    values = [column for column, count in zip(values, is_count, strict=True) if count] + [
        column for column, count in zip(values, is_count, strict=True) if not count
    ]
    columns = keys + values
    row_sql = "(" + ", ".join(["%s"] * len(columns)) + ")"
    updates = ", ".join(f"{column} = {table}.{column} + excluded.{column}" for column in values)
    items = sorted(delta.items(), key=lambda item: tuple(str(part) for part in item[0]))
    vectors = np.array([vector for _key, vector in items], dtype=float)
    counts = np.rint(vectors[:, is_count]).astype(np.int64).tolist()
    sums = vectors[:, ~is_count].tolist()
    with connection.cursor() as cursor:
        for start in range(0, len(items), INSERT_CHUNK):
            chunk = items[start : start + INSERT_CHUNK]
            params: list = []
            for index, ((ad, level, model, second, country, device, completed, day), _vector) in enumerate(
                chunk, start
            ):
                params += [ad, level, model, second, country, device, completed, day.isoformat()]
                params += counts[index] + sums[index]
            cursor.execute(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row_sql] * len(chunk))} "
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}",
                params,
            )


# ---- incremental maintenance ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshResult:
    study_id: int
    ad_ids: frozenset[int]
    changed: bool


def _recompute_rows(
    session_id: int, old: SessionRows, keys: set[tuple[int | None, int]] | None
) -> SessionRows:
    """Replace the session's SecondRollup rows for `keys` (all when None) and, when the baseline is among
    them, its BaselineRollup rows, by sums computed from the raw frames; return the session's rows after it
    (`old`, the rows before, with the recomputed ones swapped in).

    Plain SQL, two statements per table (DELETE, then INSERT ... SELECT ... RETURNING): the ORM's filter and
    bulk_create of the same rows cost the analysing process most of a refresh's CPU (docs/analytics.md)."""
    ad_keys = None if keys is None else sorted({key for key in keys if key[0] is not None})
    baseline_touched = keys is None or any(ad is None for ad, _second in keys)
    second_rows = old.second_rows()
    baseline_rows = old.baseline_rows()
    with connection.cursor() as cursor:
        if ad_keys is None or ad_keys:
            fresh = _replace_second_rows(cursor, session_id, ad_keys)
            if ad_keys is None:
                second_rows = fresh
            else:
                touched = set(ad_keys)
                second_rows = [row for row in second_rows if (row[0], row[1]) not in touched] + fresh
        if baseline_touched:
            baseline_rows = _replace_rows(
                cursor,
                BaselineRollup,
                BASELINE_KEY_FIELDS,
                session_id,
                _frame_sums_select(False, True).format(where="AND f.session_id = %s"),
                [session_id],
            )
    return SessionRows.from_rows(second_rows, baseline_rows)


def _replace_second_rows(cursor, session_id: int, ad_keys: list[tuple[int, int]] | None) -> list[tuple]:
    where = "AND f.session_id = %s"
    params: list = [session_id]
    matches = ""
    match_params: list = []
    if ad_keys is not None:
        clauses = []
        for ad, second in ad_keys:
            clauses.append("(f.ad_id = %s AND f.media_time_ms >= %s AND f.media_time_ms < %s)")
            params += [ad, second * 1000, (second + 1) * 1000]
            match_params += [ad, second]
        where += " AND (" + " OR ".join(clauses) + ")"
        matches = " AND (" + " OR ".join(["(ad_id = %s AND second = %s)"] * len(ad_keys)) + ")"
    return _replace_rows(
        cursor,
        SecondRollup,
        SECOND_KEY_FIELDS,
        session_id,
        _frame_sums_select(False, False).format(where=where),
        params,
        matches,
        match_params,
    )


def _replace_rows(
    cursor,
    model,
    key_fields: list[str],
    session_id: int,
    sums_sql: str,
    sums_params: list,
    matches: str = "",
    match_params: list | None = None,
) -> list[tuple]:
    """DELETE the session's rows of `model` (those `matches` selects, or all), INSERT the rows of `sums_sql`
    (a _frame_sums_select) instead, and return them: key fields, counts, sums."""
    table = model._meta.db_table
    columns = [*key_fields, *COUNT_FIELDS, *SUM_COLUMNS]
    cursor.execute(f"DELETE FROM {table} WHERE session_id = %s{matches}", [session_id, *(match_params or [])])
    cursor.execute(
        f"INSERT INTO {table} (session_id, {', '.join(columns)}) SELECT %s, sums.* FROM ({sums_sql}) sums "
        f"RETURNING {', '.join(columns)}",
        [session_id, *sums_params],
    )
    return [tuple(row) for row in cursor.fetchall()]


def _same_rows(old: SessionRows, new: SessionRows) -> bool:
    """True when nothing changed (NaN, an emotion the model lacks, equals NaN)."""
    if old.keys != new.keys or old.baseline.keys() != new.baseline.keys():
        return False
    same = np.array_equal(old.counts, new.counts) and np.array_equal(old.sums, new.sums, equal_nan=True)
    return same and all(
        np.array_equal(old.baseline[key][0], new.baseline[key][0])
        and np.array_equal(old.baseline[key][1], new.baseline[key][1], equal_nan=True)
        for key in old.baseline
    )


@transaction.atomic
def do_refresh_session(
    session_id: int, keys: set[tuple[int | None, int]] | None = None
) -> RefreshResult | None:
    """Bring one session's rollups up to date: recompute `keys` ((ad_id or None for the baseline, second);
    None = everything) from raw frames, re-file the session under its current attributes, and add the
    change of its contribution to SecondCell. Idempotent; returns None if the session no longer exists."""
    session = (
        ParticipantSession.objects.filter(pk=session_id, is_preview=False)  # previews never reach the rollups
        .values("study_id", "country", "device_type", "state", "created_at")
        .first()
    )
    if session is None:
        return None
    attributes = attributes_of(session)
    SessionRollup.objects.bulk_create(
        [SessionRollup(session_id=session_id, study_id=session["study_id"], **attributes.__dict__)],
        ignore_conflicts=True,
    )
    # The row lock serialises the workers of one session: each recomputes after the other's rows committed.
    state = SessionRollup.objects.select_for_update().get(pk=session_id)
    old_attributes = SessionAttributes(state.country, state.device_type, state.completed, state.day)
    old = SessionRows.load(session_id)
    new = _recompute_rows(session_id, old, None if state.stale else keys)
    rows_changed = not _same_rows(old, new)
    attributes_changed = attributes != old_attributes
    if not rows_changed and not attributes_changed and not state.stale:
        return RefreshResult(session["study_id"], frozenset(), changed=False)

    delta = cell_difference(cell_contributions(old, old_attributes), cell_contributions(new, attributes))
    apply_cell_delta(delta)

    ParticipantAdSummary.objects.filter(session_id=session_id).delete()
    ParticipantAdSummary.objects.bulk_create(participant_summaries(session_id, new, attributes))
    SessionRollup.objects.filter(pk=session_id).update(stale=False, **attributes.__dict__)
    return RefreshResult(session["study_id"], frozenset(key[0] for key in delta), changed=True)


def do_refresh_and_notify(session_id: int, keys: set[tuple[int | None, int]]) -> bool:
    """Refresh `keys` of one session and tell live dashboards; False (session marked stale) on failure."""
    try:
        result = do_refresh_session(session_id, keys)
    except Exception:
        logger.exception("analytics rollups of session %s failed; marked stale", session_id)
        do_mark_stale([session_id])
        return False
    if result is not None and result.changed:
        notify_rollups_changed(result.study_id, result.ad_ids)
    return True


def do_mark_stale(session_ids: list[int]) -> None:
    try:
        SessionRollup.objects.filter(pk__in=session_ids).update(stale=True)
    except Exception:
        logger.exception("could not mark sessions %s stale", session_ids)


def do_forget_session(session_id: int) -> None:
    """Take a session that is being deleted out of SecondCell (its own rows go with the cascade)."""
    state = SessionRollup.objects.select_for_update().filter(pk=session_id).first()
    if state is None:
        return
    old = SessionRows.load(session_id)
    attributes = SessionAttributes(state.country, state.device_type, state.completed, state.day)
    apply_cell_delta({key: -value for key, value in cell_contributions(old, attributes).items()})


def stale_rollups() -> QuerySet[SessionRollup]:
    """Sessions whose rollups are filed under outdated attributes, or were marked stale."""
    return SessionRollup.objects.filter(
        Q(stale=True)
        | ~Q(country=F("session__country"))
        | ~Q(device_type=F("session__device_type"))
        | Q(completed=True) & ~Q(session__state=COMPLETED)
        | Q(completed=False, session__state=COMPLETED)
    )


def stale_session_ids(study_id: int) -> list[int]:
    """The stale_rollups() sessions of one study."""
    return list(stale_rollups().filter(study_id=study_id).values_list("session_id", flat=True))


def do_reconcile_study(study_id: int) -> list[int]:
    """Re-file every session of a study whose attributes changed since its rollups were written (a safety net
    for the post_save signal); returns the refreshed session ids."""
    refreshed = []
    ad_ids: set[int] = set()
    for session_id in stale_session_ids(study_id):
        result = do_refresh_session(session_id, set())
        if result is not None and result.changed:
            refreshed.append(session_id)
            ad_ids |= result.ad_ids
    if refreshed:
        notify_rollups_changed(study_id, frozenset(ad_ids))
    return refreshed


def do_reconcile_due_studies() -> int:
    """The periodic reconcile (dashboards only read): re-file the stale sessions of every study that has any,
    found with one query over all studies. Returns the sessions refreshed."""
    due = stale_rollups().values_list("study_id", flat=True).distinct().order_by()
    return sum(len(do_reconcile_study(study_id)) for study_id in list(due))


# ---- set-based rebuild ------------------------------------------------------------------------------------


def _rollup_tables() -> list[str]:
    return [
        model._meta.db_table
        for model in (SecondCell, ParticipantAdSummary, SecondRollup, BaselineRollup, SessionRollup)
    ]


@transaction.atomic
def do_rebuild_rollups(study_ids: list[int] | None = None) -> dict[str, int]:
    """Recompute every rollup row (of the given studies, else all) from raw frames with set-based SQL.
    Incremental writers wait on the table locks meanwhile. Returns the row counts written per table."""
    sessions = ParticipantSession._meta.db_table
    ads = Ad._meta.db_table
    session_rollups, second_rollups, baselines = (
        SessionRollup._meta.db_table,
        SecondRollup._meta.db_table,
        BaselineRollup._meta.db_table,
    )
    cells, summaries = SecondCell._meta.db_table, ParticipantAdSummary._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"LOCK TABLE {', '.join(_rollup_tables())} IN EXCLUSIVE MODE")
        if study_ids is None:
            # TRUNCATE (transactional in Postgres) leaves no dead index entries for the inserts to step over.
            truncate = "TRUNCATE" if connection.vendor == "postgresql" else "DELETE FROM"
            for table in _rollup_tables():
                cursor.execute(f"{truncate} {table}")
            study_filter, study_params = "", []
        else:
            placeholders = ", ".join(["%s"] * len(study_ids))
            in_studies = f"SELECT id FROM {sessions} WHERE study_id IN ({placeholders})"
            cursor.execute(
                f"DELETE FROM {cells} WHERE ad_id IN (SELECT id FROM {ads} WHERE study_id IN "
                f"({placeholders}))",
                study_ids,
            )
            for table in (summaries, second_rollups, baselines, session_rollups):
                cursor.execute(f"DELETE FROM {table} WHERE session_id IN ({in_studies})", study_ids)
            study_filter, study_params = f"AND f.session_id IN ({in_studies})", list(study_ids)
        counts = {}
        cursor.execute(
            f"INSERT INTO {session_rollups} "
            "(session_id, study_id, country, device_type, completed, day, stale, updated_at) "
            f"SELECT s.id, s.study_id, s.country, s.device_type, s.state = %s, date(s.created_at), %s, "
            f"CURRENT_TIMESTAMP FROM {sessions} s "
            + "WHERE NOT s.is_preview"  # an admin's preview sessions never reach the rollups
            + ("" if study_ids is None else f" AND s.study_id IN ({placeholders})"),
            [COMPLETED, False, *study_params],
        )
        counts[session_rollups] = cursor.rowcount
        value_columns = ", ".join(COUNT_FIELDS + SUM_COLUMNS)
        cursor.execute(
            f"INSERT INTO {second_rollups} (session_id, {', '.join(SECOND_KEY_FIELDS)}, {value_columns}) "
            + _frame_sums_select(True, False).format(where=study_filter)
            + " ORDER BY 1, 2, 3, 4, 5",  # in unique-index order: appends instead of random B-tree inserts
            study_params,
        )
        counts[second_rollups] = cursor.rowcount
        cursor.execute(
            f"INSERT INTO {baselines} (session_id, {', '.join(BASELINE_KEY_FIELDS)}, {value_columns}) "
            + _frame_sums_select(True, True).format(where=study_filter),
            study_params,
        )
        counts[baselines] = cursor.rowcount
        join = (
            f"FROM {second_rollups} a JOIN {session_rollups} r ON r.session_id = a.session_id "
            f"LEFT JOIN {baselines} b ON b.session_id = a.session_id AND b.level = a.level "
            "AND b.model_version = a.model_version "
        )
        if study_ids is not None:
            join += f"WHERE r.study_id IN ({', '.join(['%s'] * len(study_ids))}) "
        aggregates = []
        for measure in MEASURES:
            count = count_column(measure)
            mean = f"(a.sum_{measure} / NULLIF(a.{count}, 0))"
            corrected = f"({mean} - b.sum_{measure} / NULLIF(b.{count}, 0))"
            aggregates += [
                f"COUNT({mean})",
                f"COALESCE(SUM({mean}), 0.0)",
                f"COALESCE(SUM({mean} * {mean}), 0.0)",
                f"COUNT({corrected})",
                f"COALESCE(SUM({corrected}), 0.0)",
                f"COALESCE(SUM({corrected} * {corrected}), 0.0)",
            ]
        attention = "(CAST(a.n_attending AS DOUBLE PRECISION) / NULLIF(a.n_analysed, 0))"
        aggregates += [
            f"COUNT({attention})",
            f"COALESCE(SUM({attention}), 0.0)",
            f"COALESCE(SUM({attention} * {attention}), 0.0)",
        ]
        cell_keys = (
            "a.ad_id, a.level, a.model_version, a.second, r.country, r.device_type, r.completed, r.day"
        )
        cursor.execute(
            f"INSERT INTO {cells} (ad_id, level, model_version, second, country, device_type, completed, "
            f"day, {', '.join(cell_value_columns())}) "
            f"SELECT {cell_keys}, COUNT(*) FILTER (WHERE a.n_frames > 0), {', '.join(aggregates)} {join} "
            f"GROUP BY {cell_keys}",
            list(study_ids or []),
        )
        counts[cells] = cursor.rowcount
        valence = "(a.sum_valence / NULLIF(a.n_valence, 0))"
        smile = "(a.sum_smile / NULLIF(a.n_frames, 0))"
        neutral = f"(a.sum_{EXPRESSIVENESS_SOURCE} / NULLIF(a.n_frames, 0))"
        base_neutral = f"(b.sum_{EXPRESSIVENESS_SOURCE} / NULLIF(b.n_frames, 0))"
        summary_keys = (
            "a.session_id, a.ad_id, a.level, a.model_version, r.country, r.device_type, r.completed, r.day"
        )
        cursor.execute(
            f"INSERT INTO {summaries} (session_id, ad_id, level, model_version, country, device_type, "
            "completed, day, n_seconds, n_frames, mean_valence, mean_valence_bc, peak_smile, peak_smile_bc, "
            "smiled, mean_expressiveness, mean_expressiveness_bc, mean_attention, retained_seconds) "
            f"SELECT {summary_keys}, COUNT(*) FILTER (WHERE a.n_frames > 0), SUM(a.n_frames), "
            f"AVG({valence}), "
            f"AVG({valence} - b.sum_valence / NULLIF(b.n_valence, 0)), MAX({smile}), "
            f"MAX({smile} - b.sum_smile / NULLIF(b.n_frames, 0)), "
            f"CASE WHEN MAX({smile}) >= %s THEN 1 = 1 ELSE 1 = 0 END, "
            f"AVG(1.0 - {neutral}), AVG({base_neutral} - {neutral}), AVG({attention}), "
            # The first inattentive second (same comparison as SessionRows.inattentive), else the one after
            # the last analysed second.
            "COALESCE(MIN(a.second) FILTER (WHERE a.n_attending < %s * a.n_analysed), MAX(a.second) + 1) "
            f"{join} GROUP BY {summary_keys}",
            [SMILE_THRESHOLD, ATTENTION_THRESHOLD, *(study_ids or [])],
        )
        counts[summaries] = cursor.rowcount
    return counts
