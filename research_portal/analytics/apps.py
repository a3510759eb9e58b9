from django.apps import AppConfig


class AnalyticsConfig(AppConfig):
    name = "research_portal.analytics"
    label = "analytics"
    verbose_name = "Analytics"

    def ready(self) -> None:
        # Keep rollups in step with session changes made anywhere (completion, exclusion, deletion).
        from research_portal.analytics import signals  # noqa: F401
