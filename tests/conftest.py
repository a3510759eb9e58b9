"""Shared fixtures: named test data (Acme's studies, the cast of people, hand-computed readings; built by
tests/support), real face frames, and the real services (Postgres, Redis, a Celery worker process, an ASGI
server) that integration tests talk to.

Outside CI a missing service skips the tests that need it; under CI=true it fails them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from django.conf import settings
from django.core.files import File
from django.db import connection

from inference.resources import shared_dir
from research_portal import deployment
from tests.support.parallel import give_this_worker_its_own_redis
from tests.support.processes import Service, free_port
from tests.support.services import (
    reachable_redis_url,
    require_file,
    service_env,
    skip_or_fail,
    start_celery_worker,
    start_daphne,
)
from tests.support.shared_subset import build_shared_subset

give_this_worker_its_own_redis()  # before anything connects to Redis

# ---- test data -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def isolated_media_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Uploaded ad videos go to a throwaway folder, shared with the server and worker processes."""
    media_root = tmp_path_factory.mktemp("media")
    previous = settings.MEDIA_ROOT
    settings.MEDIA_ROOT = media_root
    yield media_root
    settings.MEDIA_ROOT = previous


@pytest.fixture(scope="session")
def ad_video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from research_portal.studies.demo import render_demo_ad

    path = tmp_path_factory.mktemp("videos") / "spring-ad.webm"
    render_demo_ad(path, seconds=4, fps=10, size=(320, 180))
    return path


@dataclass
class StudyFixture:
    """Named objects a test can use: Acme Research runs a live 'Spring campaign' with one ad."""

    organization: object
    study: object
    ad: object
    other_study: object
    other_ad: object


@pytest.fixture
def acme(db, ad_video_file: Path) -> StudyFixture:
    from research_portal.accounts.models import Organization
    from research_portal.studies.models import Ad, Study
    from research_portal.studies.services import probe_video_duration_ms

    duration_ms = probe_video_duration_ms(ad_video_file)
    organization = Organization.objects.create(name="Acme Research")
    study = Study.objects.create(
        organization=organization,
        name="Spring campaign",
        status=Study.Status.LIVE,
        allowed_countries=["DE", "US", "JP"],
    )
    other_study = Study.objects.create(
        organization=organization, name="Autumn campaign", status=Study.Status.LIVE
    )
    ads = []
    for target, title in ((study, "Spring ad"), (other_study, "Autumn ad")):
        ad = Ad(study=target, title=title, duration_ms=duration_ms)
        with ad_video_file.open("rb") as video:
            ad.video.save(ad_video_file.name, File(video), save=False)
        ad.save()
        ads.append(ad)
    return StudyFixture(organization, study, ads[0], other_study, ads[1])


@pytest.fixture
def cast(acme: StudyFixture):
    """The people of tests/support/people.py: Alice (Acme's admin), Bob (Acme's analyst), Charlie (admin of
    Rival Insights) and Sam (staff)."""
    from tests.support.people import cast_of

    return cast_of(acme.organization)


@pytest.fixture
def alice(cast):
    return cast.alice


@pytest.fixture
def bob(cast):
    return cast.bob


@pytest.fixture
def charlie(cast):
    return cast.charlie


@pytest.fixture
def sam(cast):
    return cast.sam


@dataclass
class Analysts:
    """The cast as the dashboards' tests name it."""

    acme: object  # Bob, analyst of Acme Research
    other: object  # Charlie, admin of Rival Insights
    admin: object  # Sam, staff


@pytest.fixture
def analysts(cast) -> Analysts:
    return Analysts(acme=cast.bob, other=cast.charlie, admin=cast.sam)


@pytest.fixture
def hand_fixture(acme):
    """Acme's readings that the tests compute by hand. Three participants, smile values per frame (valence
    = 2 * smile - 1 except where None):

    P1 (DE, completed): baseline 0.1, 0.3 (-> 0.2) | s0: 0.2, 0.4 and 0.9 at quality 0.1 | s1: 0.6
    P2 (DE, completed): baseline 0.4               | s0: 0.7                              | s1: 0.2, 0.4
    P3 (US, viewing):   baseline: no face found    | s0: 0.3, 0.3 (valence unknown)       | s1: 0.9
    """
    from tests.support.readings import FrameWriter, new_participant

    ad = acme.ad
    p1 = new_participant(acme.study, "DE", state="completed")
    p2 = new_participant(acme.study, "DE", state="completed", device="mobile")
    p3 = new_participant(acme.study, "US")
    w1, w2, w3 = FrameWriter(p1), FrameWriter(p2), FrameWriter(p3)
    w1.store(None, 0, [0.1, 0.3])
    w1.store(ad, 0, [0.2, 0.4])
    w1.store(ad, 0, [0.9], quality=0.1)
    w1.store(ad, 1, [0.6])
    w2.store(None, 0, [0.4])
    w2.store(ad, 0, [0.7])
    w2.store(ad, 1, [0.2, 0.4])
    w3.store(None, 0, [None, None])
    w3.store(ad, 0, [0.3, 0.3], valence=None)
    w3.store(ad, 1, [0.9])
    return acme


@pytest.fixture(scope="session")
def face_jpegs() -> list[bytes]:
    """Twelve 320x240 JPEG webcam-like frames of a real face (what the browser sends)."""
    video = require_file(shared_dir() / "media" / "liveportrait_d3.mp4", "face video")
    capture = cv2.VideoCapture(str(video))
    frames = []
    for index in np.linspace(0, 300, 12).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        assert ok, f"could not read frame {index} of {video}"
        canvas = cv2.resize(frame, (240, 240))
        canvas = cv2.copyMakeBorder(canvas, 0, 0, 40, 40, cv2.BORDER_CONSTANT, value=(40, 40, 40))
        ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
        frames.append(jpeg.tobytes())
    capture.release()
    return frames


@pytest.fixture(scope="session")
def shared_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared folder with a few real-face photos per label and a short cut of the face video
    (tests/support/shared_subset.py), for tests of the real-face evaluation's shape."""
    shared = require_file(shared_dir(), "shared material directory")
    require_file(shared / "data" / "realfaces_dev" / "labels.csv", "real-face photos")
    require_file(shared / "media" / "liveportrait_d3.mp4", "face video")
    return build_shared_subset(shared, tmp_path_factory.mktemp("shared_subset"))


# ---- real services ---------------------------------------------------------------------------------------


@pytest.fixture
def postgres(transactional_db) -> dict:
    """The test database, committed for real so that other processes see the rows."""
    if connection.vendor != "postgresql":
        skip_or_fail("Postgres is required: run via `make test` or set DATABASE_URL=postgres://...")
    return connection.settings_dict


@pytest.fixture(scope="session")
def redis_url() -> str:
    return reachable_redis_url()


class DeploymentSwitch:
    """Runs this test process in one deployment mode (research_portal/deployment.py); everything that differs
    between the modes (flow counters, analysis backend, ack inbox, rollup journal, live windows) is made
    anew for it."""

    def embedded(self) -> None:
        deployment.switch_to(deployment.Deployment(deployment.Mode.EMBEDDED))

    def production(self, redis_url: str) -> None:
        deployment.switch_to(deployment.Deployment(deployment.Mode.PRODUCTION, redis_url))


@pytest.fixture
def deployment_mode() -> Iterator[DeploymentSwitch]:
    """Switch this process's deployment mode for one test: `deployment_mode.embedded()` or
    `deployment_mode.production(redis_url)`, as often as the test needs. Afterwards the embedded analysis
    threads finish what was queued (before the test database is flushed under them) and the mode is the
    settings' again."""
    # (The app's models load once Django is set up, after this module is imported.)
    from research_portal.capture.queueing import analysis_backend

    yield DeploymentSwitch()
    if deployment.current().mode is deployment.Mode.EMBEDDED:
        assert analysis_backend().wait_until_done(timeout_s=60), "embedded analysis still busy after 60 s"
    deployment.switch_to(None)


@pytest.fixture
def redis_flow(redis_url, settings, deployment_mode):
    """Flow control's production counters on the real Redis: clean counters, and a frame queue of its own
    (workers started by other tests consume the default one)."""
    deployment_mode.production(redis_url)
    settings.CELERY_TASK_DEFAULT_QUEUE = "flow-test-queue"
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("portal:flow:*"):
        client.delete(key)
    client.delete("flow-test-queue")
    yield client
    client.delete("flow-test-queue")


@pytest.fixture
def celery_worker(postgres: dict, redis_url: str, tmp_path: Path) -> Iterator[Service]:
    """A real `celery -A research_portal worker --beat` process on the test database and Redis, as `make run`
    starts it: beat's periodic jobs (session validation...) run in it."""
    worker = start_celery_worker(service_env(postgres, redis_url), tmp_path / "celery-worker.log", beat=True)
    yield worker
    worker.stop()


@pytest.fixture
def model_calls(monkeypatch) -> list[bytes]:
    """Every JPEG this process's pipeline analyses from now on, in order (the pipeline still runs)."""
    from inference.pipeline import get_pipeline

    pipeline = get_pipeline()
    analysed: list[bytes] = []
    analyze = pipeline.analyze_jpegs
    monkeypatch.setattr(pipeline, "analyze_jpegs", lambda jpegs: analysed.extend(jpegs) or analyze(jpegs))
    return analysed


@pytest.fixture
def asgi_server(postgres: dict, redis_url: str, tmp_path: Path) -> Iterator[str]:
    """A real daphne ASGI server on the production settings path; yields its base URL."""
    port = free_port()
    server = start_daphne(service_env(postgres, redis_url), port, tmp_path / "daphne.log")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if not path:
        skip_or_fail("Debian's chromium is not installed (`make test` installs it with apt-get)")
    return path


@pytest.fixture(autouse=True)
def rollups_refresh_on_every_batch(settings):
    """In-process code refreshes rollups per stored batch (deterministic, and no flusher thread outliving
    the test's database); tests/analytics/test_rollup_debounce.py tests the debounce itself. Servers the
    tests start run with the shipped interval."""
    settings.ANALYTICS_ROLLUP_INTERVAL_S = 0


@pytest.fixture(autouse=True)
def live_pushes_end_with_their_test(settings):
    """Live pushes in this process throttle in 50 ms windows, so a trailing push (a timer thread) fires within
    the test that caused it, not onto the event loop of the test after it; tests of the throttle and of live
    pushes set the interval they need. Servers the tests start run with the shipped 1 s."""
    settings.ANALYTICS_LIVE_INTERVAL_S = 0.05


@pytest.fixture(autouse=True)
def no_periodic_thread_in_tests(settings):
    """Requests in this process never start embedded mode's periodic thread (research_portal/ops/periodic.py):
    tests run the periodic jobs themselves (do_validate_due_sessions, do_reconcile_due_studies), or start a
    loop of their own. Servers the tests start run it as shipped."""
    settings.EMBEDDED_PERIODIC_LOOP = False
