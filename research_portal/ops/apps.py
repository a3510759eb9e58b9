from django.apps import AppConfig
from django.core.signals import request_started


class OpsConfig(AppConfig):
    name = "research_portal.ops"
    label = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Embedded mode: periodic work (session validation, the rollup reconcile) runs in a thread of the
        # web process from its first request on (periodic.py); production leaves it to Celery beat.
        from research_portal.ops.periodic import start_with_first_request  # once the apps are loaded

        request_started.connect(start_with_first_request, dispatch_uid="ops-embedded-periodic-loop")
