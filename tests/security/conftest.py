"""The analytics fixtures (Acme's analysts and hand-computed readings), for the export tests here."""

from tests.analytics.conftest import analysts, hand_fixture  # noqa: F401
