from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "research_portal.studies"
    label = "studies"
