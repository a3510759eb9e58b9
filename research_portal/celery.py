import logging
import os
from logging.config import dictConfig

from celery import Celery
from celery.signals import setup_logging, task_prerun
from django.conf import settings
from django.db import close_old_connections

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "research_portal.settings")

app = Celery("research_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(loglevel=None, **_kwargs) -> None:
    """Workers and beat log like the web process (settings.LOGGING: JSON lines, tokens hashed) instead of in
    Celery's own format; `--loglevel` still sets the level, as it did."""
    dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)


@task_prerun.connect
def drop_unusable_database_connections(**_kwargs) -> None:
    """Connections live across tasks (settings.CELERY_DB_REUSE_MAX): before each task, close one that broke
    (the database restarted: the task would otherwise fail on it) or outlived CONN_MAX_AGE, as Django does
    before each request. The next query opens a fresh one."""
    close_old_connections()
