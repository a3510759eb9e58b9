"""The settings module: embedded defaults with nothing configured, production path from env vars."""

import json
import os
import subprocess
import sys

import pytest

from inference.resources import REPO_ROOT
from research_portal.settings import database_from_url

PRINT_SETTINGS = (
    "import json, django; from django.conf import settings; django.setup();"
    "from research_portal import deployment; from research_portal.capture.queueing import analysis_backend;"
    "print(json.dumps({"
    "'engine': settings.DATABASES['default']['ENGINE'],"
    "'layer': settings.CHANNEL_LAYERS['default']['BACKEND'],"
    "'mode': deployment.current().mode, 'analysis': type(analysis_backend()).__name__,"
    "'broker': settings.CELERY_BROKER_URL}))"
)


def settings_with_env(tmp_path, **env) -> dict:
    clean = {key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "REDIS_URL"}}
    clean.update(env, DJANGO_SETTINGS_MODULE="research_portal.settings", PORTAL_VAR_DIR=str(tmp_path))
    output = subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        cwd=REPO_ROOT,
        env=clean,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def test_nothing_configured_means_embedded_mode(tmp_path):
    assert settings_with_env(tmp_path) == {
        "engine": "django.db.backends.sqlite3",
        "layer": "channels.layers.InMemoryChannelLayer",
        "mode": "embedded",
        "analysis": "ThreadPoolBackend",
        "broker": "memory://",
    }
    assert (tmp_path / "secret_key").exists()


def test_database_and_redis_urls_select_the_production_path(tmp_path):
    assert settings_with_env(
        tmp_path, DATABASE_URL="postgres://u:p@db:5432/portal", REDIS_URL="redis://cache:6379/0"
    ) == {
        "engine": "django.db.backends.postgresql",
        "layer": "channels_redis.core.RedisChannelLayer",
        "mode": "production",
        "analysis": "CeleryBackend",
        "broker": "redis://cache:6379/0",
    }


def test_database_url_is_parsed_with_escapes():
    config = database_from_url("postgresql://analyst:p%40ss@db.example:6543/portal")
    assert (config["USER"], config["PASSWORD"], config["HOST"], config["PORT"], config["NAME"]) == (
        "analyst",
        "p@ss",
        "db.example",
        "6543",
        "portal",
    )


def test_database_url_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="postgres"):
        database_from_url("mysql://root@localhost/portal")


def test_every_periodic_job_names_a_registered_task():
    from django.conf import settings

    from research_portal.celery import app

    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {
        "research_portal.capture.tasks.apply_retention_task",
        "research_portal.capture.tasks.validate_due_sessions_task",
        "research_portal.analytics.tasks.reconcile_rollups_task",
    }
    assert scheduled <= set(app.tasks)
