from django.apps import AppConfig


class OpsConfig(AppConfig):
    name = "research_portal.ops"
    label = "ops"
    verbose_name = "Operations"
