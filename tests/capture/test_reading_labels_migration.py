"""The migration that gives readings a column per label (capture 0005, analytics 0004): rows stored before it
keep their model version and values, read contempt as absent (NULL), and their rollups stay correct."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from research_portal.analytics.dashboard import ad_facets
from research_portal.analytics.rollups import do_rebuild_rollups
from research_portal.capture.models import FrameResult
from research_portal.capture.readings import READING_LABELS, ModelLabelsError, check_model_labels
from tests.model_files import FER2013_LABELS

BEFORE = [
    ("capture", "0004_preview_sessions"),
    ("analytics", "0003_organization_analyst_replaced_by_membership"),
]
# The columns before contempt: FER2013's seven labels.
SEVEN = tuple(FER2013_LABELS)


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def migrate_to_latest() -> None:
    """Every app back at its newest migration, as the other tests expect the schema."""
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.fixture
def migrated_from_seven_labels(transactional_db, acme):
    """A frame stored by a 7-label model and its rollup row, written before the migration, then migrated."""
    old = migrate(BEFORE)
    frames = old.get_model("capture", "FrameResult")
    sessions = old.get_model("capture", "ParticipantSession")
    session = sessions.objects.create(study_id=acme.study.pk, state="viewing", country="DE")
    values = dict(zip(SEVEN, (0.05, 0.05, 0.05, 0.6, 0.05, 0.05, 0.15), strict=True))
    frames.objects.create(
        session=session,
        ad_id=acme.ad.pk,
        seq=0,
        media_time_ms=500,
        captured_at=datetime(2026, 11, 1, tzinfo=UTC),
        face_found=True,
        smile=0.6,
        valence=0.5,
        quality=0.9,
        model_version="old-seven-label-model",
        **values,
    )
    migrate_to_latest()  # through capture 0005 and analytics 0004, and whatever came after them
    yield session.pk, values


def test_rows_stored_before_keep_their_model_version_and_values(migrated_from_seven_labels):
    session_id, values = migrated_from_seven_labels
    row = FrameResult.objects.get(session_id=session_id, seq=0)
    assert row.model_version == "old-seven-label-model"
    assert {label: getattr(row, label) for label in SEVEN} == pytest.approx(values)
    assert row.contempt is None


def test_their_rollups_read_the_seven_labels_and_no_contempt(migrated_from_seven_labels, acme):
    do_rebuild_rollups([acme.study.pk])
    measures = ad_facets(acme.ad).measures_of("old-seven-label-model")
    assert measures == ("smile", "valence", *SEVEN)


def test_every_label_has_a_column_and_a_label_without_one_is_refused():
    columns = {field.name for field in FrameResult._meta.get_fields()}
    assert set(READING_LABELS) <= columns
    check_model_labels(("neutral", "happy", "contempt"))
    with pytest.raises(ModelLabelsError, match="confused"):
        check_model_labels(("neutral", "happy", "confused"))
    with pytest.raises(ModelLabelsError, match="happy"):
        check_model_labels(("neutral", "sad"))
