"""Readings follow the model's labels end to end: a FER2013 model (7 labels) and a FER+ model (8 labels, with
contempt), each served by a real Celery worker process on real Redis and Postgres, through the rollups to the
dashboard, its legend and the CSV exports. Model versions never mix in one trace."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
from django.urls import reverse

from inference.training.export import valence_weights
from research_portal.analytics.dashboard import build_ad_dashboard
from research_portal.analytics.definitions import MEASURE_LABELS
from research_portal.analytics.services import parse_filters
from research_portal.capture.models import FrameResult, ParticipantSession
from research_portal.capture.queueing import enqueue_frames
from research_portal.capture.wire import Frame
from tests.model_files import FER2013_LABELS, FERPLUS_LABELS, build_contract_model
from tests.support.polling import eventually
from tests.support.services import service_env, start_celery_worker

SEVEN, EIGHT = "labels-7-test", "labels-8-test"


def label_model(path: Path, labels: list[str], version: str) -> Path:
    """Brightness decides: brighter crops read happier; valence weights of the product's convention."""
    weights = [3.0 if label == "happy" else (-1.0 if label == "sad" else 0.0) for label in labels]
    biases = [0.1 * index for index in range(len(labels))]
    weights_json = json.dumps(valence_weights(tuple(labels)))
    return build_contract_model(
        path, labels, weights, biases, version=version, extra_props={"valence_weights": weights_json}
    )


def store_with_worker(model: Path, session: ParticipantSession, ad_id: int, jpegs: list[bytes], env, log):
    """Run a real worker serving `model`, queue one batch of the session's frames, wait until stored."""
    worker = start_celery_worker(
        {**env, "PORTAL_MODEL_PATH": str(model), "ANALYTICS_ROLLUP_INTERVAL_S": "0"}, log
    )
    try:
        now_ms = time.time() * 1000
        enqueue_frames(
            [Frame(i, ad_id, i * 400, now_ms + i, jpeg).queued(session.pk) for i, jpeg in enumerate(jpegs)]
        )
        stored = eventually(
            FrameResult.objects.filter(session=session).count,
            until=lambda count: count >= len(jpegs),
            timeout_s=60,
            interval_s=0.25,
        )
        assert stored == len(jpegs), worker.log()[-3000:]
    finally:
        worker.stop()


@pytest.fixture
def two_models_stored(postgres, redis_url, tmp_path, acme, face_jpegs, deployment_mode):
    """Participant DE read by the 7-label model, participant US by the 8-label model, one ad."""
    deployment_mode.production(redis_url)
    env = service_env(postgres, redis_url)
    seven = label_model(tmp_path / "seven.onnx", FER2013_LABELS, SEVEN)
    eight = label_model(tmp_path / "eight.onnx", FERPLUS_LABELS, EIGHT)
    de = ParticipantSession.objects.create(study=acme.study, state="viewing", country="DE")
    us = ParticipantSession.objects.create(study=acme.study, state="viewing", country="US")
    store_with_worker(seven, de, acme.ad.pk, face_jpegs[:6], env, tmp_path / "worker-7.log")
    store_with_worker(eight, us, acme.ad.pk, face_jpegs[:6], env, tmp_path / "worker-8.log")
    return acme, de, us


def test_each_label_lands_in_its_column_and_a_missing_label_stays_null(two_models_stored):
    _acme, de, us = two_models_stored
    for session, version, labels in ((de, SEVEN, FER2013_LABELS), (us, EIGHT, FERPLUS_LABELS)):
        rows = [row for row in FrameResult.objects.filter(session=session) if row.face_found]
        assert rows and all(row.model_version == version for row in rows)
        for row in rows:
            values = {label: getattr(row, label) for label in labels}
            assert all(value is not None for value in values.values())
            assert abs(sum(values.values()) - 1.0) < 1e-5
            assert row.smile == row.happy and row.valence is not None
            if "contempt" not in labels:
                assert row.contempt is None


def dashboard(ad, model: str) -> dict:
    return build_ad_dashboard(ad, parse_filters({"model": model, "measure": "contempt"}))


def trace_names(payload: dict) -> set[str]:
    return {trace["name"] for trace in payload["figures"]["trace"]["data"]}


def test_the_dashboard_shows_the_labels_of_the_chosen_model_only(two_models_stored):
    acme, _de, _us = two_models_stored
    seven, eight = dashboard(acme.ad, SEVEN), dashboard(acme.ad, EIGHT)
    assert set(seven["options"]["model_versions"]) == {SEVEN, EIGHT}
    # happy is smile (smile = p(happy)): the dashboard shows it once, as Smile
    emotions = [label for label in FER2013_LABELS if label != "happy"]
    # and the measures derived from them can be compared too (both label sets read neutral)
    derived = ["expressiveness", "attention"]
    assert [m for m, _label in seven["options"]["measures"]] == ["smile", "valence", *emotions, *derived]
    assert [m for m, _label in eight["options"]["measures"]] == [
        "smile",
        "valence",
        *[label for label in emotions + ["contempt"] if label in FERPLUS_LABELS],
        *derived,
    ]
    assert MEASURE_LABELS["contempt"] in trace_names(eight)
    assert MEASURE_LABELS["contempt"] not in trace_names(seven)
    # contempt was asked for: the 7-label model cannot read it, so its page compares smiles instead
    assert seven["filters"]["measure"] == "smile" and eight["filters"]["measure"] == "contempt"
    # never mixed: each model's trace holds its own participant only
    assert seven["totals"]["participants"] == 1 and eight["totals"]["participants"] == 1
    assert [row["country"] for row in seven["summary"]] == ["All", "DE"]
    assert [row["country"] for row in eight["summary"]] == ["All", "US"]


def read_csv(client, ad, kind: str, query: str = "") -> tuple[list[str], list[dict]]:
    response = client.get(reverse("analytics:ad-export", args=[ad.pk, kind]) + query)
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()
    reader = csv.DictReader(io.StringIO(text))
    return list(reader.fieldnames or []), list(reader)


def test_exports_carry_the_labels_of_the_exported_model(two_models_stored, client, analysts):
    acme, _de, _us = two_models_stored
    client.force_login(analysts.acme)
    header, rows = read_csv(client, acme.ad, "frames", f"?model={SEVEN}")
    assert "contempt" not in header and set(FER2013_LABELS) <= set(header)
    assert rows and {row["model_version"] for row in rows} == {SEVEN}
    header, rows = read_csv(client, acme.ad, "frames", f"?model={EIGHT}")
    assert "contempt" in header and {row["model_version"] for row in rows} == {EIGHT}
    assert all(row["contempt"] != "" for row in rows if row["face_found"] == "1")
    # both models: the union of their labels, empty where a model has no such label
    header, rows = read_csv(client, acme.ad, "frames")
    assert "contempt" in header
    assert all(row["contempt"] == "" for row in rows if row["model_version"] == SEVEN)

    header, rows = read_csv(client, acme.ad, "seconds", f"?model={SEVEN}")
    assert "contempt" not in header and "contempt_minus_baseline" not in header
    header, rows = read_csv(client, acme.ad, "seconds")
    assert all(row["contempt"] == "" for row in rows if row["model_version"] == SEVEN)
    assert any(row["contempt"] != "" for row in rows if row["model_version"] == EIGHT)

    _header, rows = read_csv(client, acme.ad, "traces", f"?model={SEVEN}")
    derived = {"expressiveness", "attention"}
    assert {row["measure"] for row in rows} == {"smile", "valence", *FER2013_LABELS, *derived}
    _header, rows = read_csv(client, acme.ad, "traces", f"?model={EIGHT}")
    assert "contempt" in {row["measure"] for row in rows}
    assert {row["model_version"] for row in rows} == {EIGHT}
