from django.core.management.base import BaseCommand

from research_portal.capture.erasure import do_apply_retention


class Command(BaseCommand):
    help = (
        "Delete raw per-frame readings and stored frames past each study's retention period (what the "
        "Celery beat task does; run it from cron in embedded mode)."
    )

    def handle(self, *args, **options) -> None:
        result = do_apply_retention()
        self.stdout.write(
            f"Deleted {result.frame_results} frame readings, {result.frame_folders} stored-frame folders, "
            f"{result.preview_sessions} preview sessions."
        )
