"""`make run` with nothing configured: SQLite, in-memory channel layer, in-process inference. The seeded demo
must work for a participant in a real browser, with readings stored in the SQLite file."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.resources import REPO_ROOT
from tests.e2e.conftest import walk_through_study
from tests.support.processes import free_port
from tests.support.services import start_daphne

pytestmark = pytest.mark.e2e


def embedded_env(var_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(PORTAL_VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def seeded_installation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One embedded installation migrated and seeded as a newcomer's `make run` does (about 20 s), copied by
    each test: its var folder and the demo participant link's path."""
    var_dir = tmp_path_factory.mktemp("embedded-seeded")
    env = embedded_env(var_dir)
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--noinput"], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    seeded = subprocess.run(
        [*manage, "seed_demo", "--base-url", "http://127.0.0.1"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return var_dir, re.search(r"Participant link:\s+http://127\.0\.0\.1(\S+)", seeded).group(1)


def seeded_demo(
    seeded_installation: tuple[Path, str], var_dir: Path, port: int
) -> tuple[dict[str, str], str]:
    """A fresh copy of the seeded installation in `var_dir`: its environment and participant link."""
    template, link_path = seeded_installation
    shutil.copytree(template, var_dir)
    return embedded_env(var_dir), f"http://127.0.0.1:{port}{link_path}"


def test_seeded_demo_works_without_postgres_or_redis(seeded_installation, tmp_path, browser):
    port = free_port()
    env, link = seeded_demo(seeded_installation, tmp_path / "var", port)

    server = start_daphne(env, port, tmp_path / "daphne-embedded.log")
    try:
        walk_through_study(browser.new_page(), link)
    finally:
        server.stop()

    with sqlite3.connect(tmp_path / "var" / "portal.sqlite3") as database:
        state = database.execute("select state from capture_participantsession").fetchone()[0]
        rows, faces, first_ms, last_ms = database.execute(
            "select count(*), sum(face_found), min(media_time_ms), max(media_time_ms)"
            " from capture_frameresult where ad_id is not null"
        ).fetchone()
    assert state == "completed"
    # The 10 s demo ad at 5 fps: ~50 frames, each acked and stored, nearly all with the face found.
    assert rows >= 40, server.log()[-3000:]
    assert faces >= 0.8 * rows
    assert first_ms <= 1000 and last_ms >= 9000


def test_a_participant_who_closes_the_tab_at_the_end_is_validated_all_the_same(
    seeded_installation, tmp_path, browser
):
    """Nothing polls /outcome: the web process's periodic thread (research_portal/ops/periodic.py) validates
    the session within the bound, and the quota would count it."""
    port = free_port()
    env, link = seeded_demo(seeded_installation, tmp_path / "var", port)
    server = start_daphne(env, port, tmp_path / "daphne-embedded.log")
    try:
        walk_through_study(browser.new_page(), link, close_at_end=True)
        closed_at = time.monotonic()
        state = "viewing"
        while state == "viewing" and time.monotonic() - closed_at < 60:
            time.sleep(0.5)
            with sqlite3.connect(tmp_path / "var" / "portal.sqlite3", timeout=20) as database:
                state = database.execute("select state from capture_participantsession").fetchone()[0]
        waited_s = time.monotonic() - closed_at
    finally:
        server.stop()
    assert state == "completed", server.log()[-3000:]
    assert waited_s < 60
    print(f"embedded server: validated {waited_s:.1f} s after the tab closed")
