import os

from celery import Celery
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "research_portal.settings")

app = Celery("research_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(loglevel=None, **_kwargs) -> None:
    """Workers and beat log like the web process (settings.LOGGING: JSON lines, tokens hashed) instead of in
    Celery's own format; `--loglevel` still sets the level, as it did."""
    import logging
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)
