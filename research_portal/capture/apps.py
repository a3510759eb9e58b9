from django.apps import AppConfig


class CaptureConfig(AppConfig):
    name = "research_portal.capture"
    label = "capture"
