from django.conf import settings
from django.core.management.base import BaseCommand
from django.urls import reverse

from research_portal.studies.demo import do_seed_demo


class Command(BaseCommand):
    help = "Create (or refresh) the demo admin, organisation, study and ad, and print how to use them."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default=settings.SITE_URL)

    def handle(self, *args, base_url: str, **options):
        seed = do_seed_demo()
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "Demo ready.",
                    f"  Sign in:          {base_url}/accounts/login/",
                    f"  Username:         {seed.admin_username}",
                    f"  Password:         {seed.admin_password}",
                    f"  Study set-up:     {base_url}{reverse('studies:setup', args=[seed.study.pk])}",
                    f"  Dashboards:       {base_url}{reverse('analytics:study', args=[seed.study.pk])}",
                    f"  Django admin:     {base_url}/admin/",
                    f"  Participant link: {base_url}/s/{seed.study.public_id}/?pid=demo-1&c=DE",
                    "",
                ]
            )
        )
