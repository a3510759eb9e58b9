"""The load generator finds Celery workers it did not start (containers, other terminals) by command line and
REDIS_URL, so that `--url` runs count the workers' CPU (make docker-smoke measures containerised ones)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.resources import REPO_ROOT
from tests.load.cli import parse_args
from tests.load.cpu import CpuSampler, celery_worker_pids, is_celery_worker, redis_endpoint
from tests.support.services import reachable_redis_url

CELERY = str(Path(sys.executable).parent / "celery")
# Nothing listens on port 1: a worker given this broker keeps retrying, alive, and takes no one's tasks.
ELSEWHERE = "redis://127.0.0.1:1/0"


def worker(redis_url: str, name: str) -> subprocess.Popen:
    env = {**os.environ, "REDIS_URL": redis_url}
    command = [CELERY, "-A", "research_portal", "worker", "--pool=solo", "--loglevel=warning"]
    command += ["--without-gossip", "--without-mingle", f"--hostname={name}@%h"]
    quiet = subprocess.DEVNULL
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=quiet, stderr=quiet)


def test_workers_of_the_runs_redis_are_found_and_their_cpu_counted() -> None:
    redis_url = reachable_redis_url()
    ours, theirs = worker(redis_url, "discovery-ours"), worker(ELSEWHERE, "discovery-theirs")
    try:
        deadline = time.monotonic() + 30
        found: set[int] = set()
        while ours.pid not in found and time.monotonic() < deadline:
            time.sleep(0.2)
            found = celery_worker_pids(redis_url)
        assert ours.pid in found and theirs.pid not in found
        assert theirs.pid in celery_worker_pids(ELSEWHERE) and ours.pid not in celery_worker_pids(ELSEWHERE)
        # The same Redis named another way is the same Redis.
        assert ours.pid in celery_worker_pids(redis_url.replace("127.0.0.1", "localhost"))

        sampler = CpuSampler(set(), found, "unused", set(), set())
        sampler.start()
        time.sleep(1.5)  # the worker boots (imports Django and the model): CPU it spends in the window
        sampler.stop()
        assert sampler.result()["server_by_component_s"]["workers"] > 0
    finally:
        for process in (ours, theirs):
            process.terminate()
        for process in (ours, theirs):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("/opt/python/bin/python3 /opt/python/bin/celery -A research_portal worker --pool=solo", True),
        ("/app/.venv/bin/celery --app=research_portal worker -c 1", True),
        ("python -m celery -A research_portal.celery:app worker", True),
        ("celery -Aresearch_portal worker", True),
        ("celery -A research_portal beat --schedule=/tmp/s", False),
        ("celery -A other_project worker", False),
        ("python manage.py runserver worker", False),
    ],
)
def test_what_counts_as_a_portal_worker(command: str, expected: bool) -> None:
    assert is_celery_worker(command.split()) is expected


def test_redis_endpoints_compare_by_address_port_and_database() -> None:
    assert redis_endpoint("redis://localhost:6379/0") == redis_endpoint("redis://127.0.0.1/")
    assert redis_endpoint("redis://127.0.0.1:6379/4") != redis_endpoint("redis://127.0.0.1:6379/0")
    assert redis_endpoint("redis://127.0.0.1:56379/0") != redis_endpoint("redis://127.0.0.1:6379/0")


def test_stored_frames_need_kept_data() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--store-frames"])
    assert parse_args(["--store-frames", "--keep-data"]).store_frames
