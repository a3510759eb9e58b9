from django.apps import AppConfig


class PrivacyConfig(AppConfig):
    name = "research_portal.privacy"
    label = "privacy"
    verbose_name = "Privacy and audit"
