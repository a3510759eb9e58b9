from django.core.management.base import BaseCommand

from research_portal.analytics.rollups import do_rebuild_rollups, do_reconcile_study
from research_portal.studies.models import Study


class Command(BaseCommand):
    help = (
        "Rebuild the analytics rollups from raw FrameResults (all studies, or --study ID ...), e.g. after "
        "installing the analytics app on a database that already has frames. With --reconcile, only re-file "
        "sessions whose attributes changed (what dashboards also do on load)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--study", type=int, action="append", dest="studies", help="study id (repeatable)"
        )
        parser.add_argument("--reconcile", action="store_true")

    def handle(self, *args, studies: list[int] | None, reconcile: bool, **options) -> None:
        if reconcile:
            for study_id in studies or Study.objects.values_list("id", flat=True):
                refreshed = do_reconcile_study(study_id)
                self.stdout.write(f"study {study_id}: {len(refreshed)} sessions re-filed")
            return
        counts = do_rebuild_rollups(studies)
        for table, rows in counts.items():
            self.stdout.write(f"{table}: {rows} rows")
