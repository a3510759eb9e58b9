"""`make test` runs the suite in parallel pytest-xdist workers (gw0, gw1, ...). They share the machine's
Postgres and Redis, so each needs its own of both: pytest-django gives each worker its own test database
(`test_<name>_gw<k>`); this gives each its own Redis database, or one worker's Celery processes would take
the other's frames and its tests would flush the other's keys. Worker k uses the database number of
REDIS_URL minus k (`make test`: 15, 14, ...).

The settings were read before this runs (pytest-django sets Django up first), so what they derived from
REDIS_URL is set again here, and the environment carries the URL to the servers and workers tests start.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse, urlunparse

from django.conf import settings


def worker_index() -> int | None:
    """This process's xdist worker number, None when the suite runs in one process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker.removeprefix("gw")) if worker.startswith("gw") else None


def redis_url_of_worker(url: str, index: int) -> str:
    parsed = urlparse(url)
    base = int(parsed.path.lstrip("/") or 0)
    if index > base:
        raise ValueError(f"REDIS_URL's database {base} leaves no database for xdist worker {index}")
    return urlunparse(parsed._replace(path=f"/{base - index}"))


def give_this_worker_its_own_redis() -> None:
    index = worker_index()
    url = os.environ.get("REDIS_URL", "")
    if index is None or not url:
        return
    url = redis_url_of_worker(url, index)
    os.environ["REDIS_URL"] = url
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.CACHES["default"]["LOCATION"] = url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"] = url
