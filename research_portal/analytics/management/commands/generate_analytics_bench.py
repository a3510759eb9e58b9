from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from research_portal.analytics.benchdata import do_generate_bench_data


class Command(BaseCommand):
    help = (
        "Generate a benchmark study whose ad has N FrameResults (default 10 million) with INSERT ... SELECT "
        "generate_series, then build its rollups. Postgres only; refuses a database whose name lacks 'bench' "
        "unless --force."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--frames", type=int, default=10_000_000, help="FrameResults for the ad")
        parser.add_argument("--seconds", type=int, default=30, help="ad duration")
        parser.add_argument("--fps", type=int, default=5)
        parser.add_argument("--force", action="store_true", help="allow a database not named *bench*")

    def handle(self, *args, frames: int, seconds: int, fps: int, force: bool, **options) -> None:
        name = connection.settings_dict["NAME"]
        if "bench" not in str(name) and not force:
            raise CommandError(f"Database {name!r} does not look like a benchmark database (use --force).")
        data = do_generate_bench_data(frames, seconds, fps, log=self.stdout.write)
        self.stdout.write(
            f"study {data.study.pk}, ad {data.ad.pk}: {data.sessions} sessions, {data.ad_frames} ad frames, "
            f"{data.baseline_frames} baseline frames; timings {data.timings_s}"
        )
