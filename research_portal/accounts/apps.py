from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "research_portal.accounts"
    label = "accounts"

    def ready(self) -> None:
        # Open sockets re-check access when memberships, users or sessions change (studies: studies.signals).
        from research_portal.accounts import signals  # noqa: F401
