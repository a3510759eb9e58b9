from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "research_portal.studies"
    label = "studies"

    def ready(self) -> None:
        from research_portal.studies import signals  # noqa: F401  (connects the access-change receivers)
