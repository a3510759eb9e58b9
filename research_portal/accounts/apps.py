from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "research_portal.accounts"
    label = "accounts"
