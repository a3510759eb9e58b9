"""The ad report as a PDF (being written: raises NotImplementedError until it lands)."""

from __future__ import annotations

from research_portal.analytics.services import Filters
from research_portal.studies.models import Ad


def build_ad_report(ad: Ad, filters: Filters) -> bytes:
    raise NotImplementedError
