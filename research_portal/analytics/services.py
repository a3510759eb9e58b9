"""Which filters a request asks for, and the quotas a study is measured against.

Who may see what is decided by accounts/permissions.py alone, and analytics' views and sockets call it
directly (studies_visible_to, study_for_viewer, ad_for_viewer).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import date

from django.http import QueryDict

from research_portal.analytics.definitions import DERIVED_MEASURES, MEASURES, QUALITY_LEVELS, quality_level
from research_portal.capture.models import ParticipantSession
from research_portal.studies.models import CountryQuota, Study

DEVICE_TYPES = tuple(choice for choice, _label in ParticipantSession.DeviceType.choices)


# ---- quotas ----------------------------------------------------------------------------------------------


def get_country_quotas(study: Study) -> dict[str, int]:
    """Target of validated completes per country."""
    return dict(CountryQuota.objects.filter(study=study).values_list("country", "target"))


# ---- filters ---------------------------------------------------------------------------------------------


class InvalidFilters(ValueError):
    """A filter value the dashboards do not offer; the message is shown to the analyst."""


@dataclass(frozen=True)
class Filters:
    """What a dashboard, export or live feed is computed for. Empty tuples mean "all"."""

    countries: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    date_from: date | None = None
    date_to: date | None = None
    quality: float = 0.0
    completed_only: bool = False
    baseline: bool = False
    measure: str = "smile"
    compare: tuple[str, str] | None = None
    correction: str = "bh"
    layout: str = "overlay"
    model_version: str = ""
    # The scorecard's norm (analytics/norms.py): only participants of one country ("": all), only ads of one
    # category ("": every category).
    norm_country: str = ""
    norm_category: str = ""

    @property
    def level(self) -> int:
        return quality_level(self.quality)

    def with_model(self, model_version: str) -> Filters:
        return replace(self, model_version=model_version)

    def with_measure(self, measure: str) -> Filters:
        return replace(self, measure=measure)

    def to_query(self) -> dict[str, object]:
        """The query parameters that reproduce these filters (for links and the live socket)."""
        query: dict[str, object] = {
            "country": list(self.countries),
            "device": list(self.devices),
            "from": self.date_from.isoformat() if self.date_from else "",
            "to": self.date_to.isoformat() if self.date_to else "",
            "quality": str(self.quality),
            "completed": "1" if self.completed_only else "",
            "baseline": "1" if self.baseline else "",
            "measure": self.measure,
            "compare": list(self.compare or ()),
            "correction": self.correction,
            "layout": self.layout,
            "model": self.model_version,
            "norm_country": self.norm_country,
            "norm_category": self.norm_category,
        }
        return {key: value for key, value in query.items() if value not in ("", [])}


# Bounds on what a dashboard, export or live socket accepts as parameters: a value past them is not from
# the dashboard's own form, and is refused (400 / a socket error) rather than cut short or passed to SQL.
MAX_PARAMETERS = 50
MAX_NAME_CHARS = 64
MAX_VALUE_CHARS = 1000  # a comma-separated list of every country code fits
MAX_VALUES = 300  # repeated ?country=, one per country code
MAX_MODEL_CHARS = 64  # FrameResult.model_version
SCALARS = (
    "from", "to", "quality", "completed", "baseline", "measure", "correction", "layout", "model",
    "norm_country", "norm_category",
)  # fmt: skip
MAX_CATEGORY_CHARS = 60  # studies.Ad.category
TRUE_VALUES, FALSE_VALUES = {"1", "true", "on", "yes"}, {"", "0", "false", "off", "no"}
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DECIMAL = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,6})?")
COUNTRY = re.compile(r"[A-Za-z]{2}")


def _as_query(query: QueryDict | dict) -> QueryDict:
    """The live socket's subscribe message as a QueryDict: each value a string, a number, a boolean or a
    list of strings and numbers (what the page sends); anything else is refused."""
    if isinstance(query, QueryDict):
        return query
    if not isinstance(query, dict):
        raise InvalidFilters("Filters must be an object of query parameters.")
    data = QueryDict(mutable=True)
    for key, value in query.items():
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not isinstance(key, str) or not all(_is_scalar(v) for v in values):
            name = str(key)[:MAX_NAME_CHARS]
            raise InvalidFilters(f"Filter {name!r} must be text, a number or a list of them.")
        data.setlist(key, [_scalar_text(v) for v in values])
    return data


def _is_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int)  # bool is an int


def _scalar_text(value: str | int | float) -> str:
    if isinstance(value, bool):
        return "1" if value else ""
    return str(value)


def check_parameters(query: QueryDict) -> None:
    """Every parameter, known or not: printable text (no NUL or other control characters), of bounded length
    and number; the dashboard's single-valued parameters given once."""
    if len(query) > MAX_PARAMETERS:
        raise InvalidFilters("Too many parameters.")
    for name, values in query.lists():
        if len(name) > MAX_NAME_CHARS or not name.isprintable():
            raise InvalidFilters("A parameter name is too long or has control characters.")
        if len(values) > MAX_VALUES:
            raise InvalidFilters(f"Too many values for {name}.")
        if name in SCALARS and len(values) > 1:
            raise InvalidFilters(f"{name} may be given once.")
        for value in values:
            if len(value) > MAX_VALUE_CHARS or not value.isprintable():
                raise InvalidFilters(f"The value of {name} is too long or has control characters.")


def _parse_date(value: str, name: str) -> date | None:
    if not value:
        return None
    try:
        if not ISO_DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError as error:
        raise InvalidFilters(f"{name} must be a date like 2026-03-31.") from error


def _flag(query: QueryDict, name: str) -> bool:
    value = (query.get(name) or "").strip().lower()
    if value not in TRUE_VALUES | FALSE_VALUES:
        raise InvalidFilters(f"{name} must be 1 or 0.")
    return value in TRUE_VALUES


def _codes(query: QueryDict, name: str) -> list[str]:
    """Repeated parameters (?country=DE&country=US) or one comma-separated value."""
    values = []
    for raw in query.getlist(name):
        values += [part.strip() for part in raw.split(",") if part.strip()]
    if len(values) > MAX_VALUES:
        raise InvalidFilters(f"Too many values for {name}.")
    return values


def _quality(value: str) -> float:
    offered = ", ".join(str(level) for level in QUALITY_LEVELS)
    try:
        if not DECIMAL.fullmatch(value.strip()):
            raise ValueError(value)
        quality = float(value)
        quality_level(quality)
    except ValueError as error:
        raise InvalidFilters(f"Quality must be one of {offered}.") from error
    return quality


def parse_filters(query: QueryDict | dict) -> Filters:
    """Validate dashboard query parameters (a page's, an export's, or a live socket's subscribe message);
    raise InvalidFilters with a readable message. Nothing invalid is corrected silently."""
    query = _as_query(query)
    check_parameters(query)
    countries = _codes(query, "country")
    if any(not COUNTRY.fullmatch(code) for code in countries):
        raise InvalidFilters("Countries are two-letter codes, e.g. DE.")
    devices = _codes(query, "device")
    if any(device not in DEVICE_TYPES for device in devices):
        raise InvalidFilters(f"Device types are {', '.join(DEVICE_TYPES)}.")
    date_from, date_to = _parse_date(query.get("from", ""), "From"), _parse_date(query.get("to", ""), "To")
    if date_from and date_to and date_from > date_to:
        raise InvalidFilters("The date range ends before it starts.")
    quality = _quality(query.get("quality") or "0")
    measure = query.get("measure") or "smile"
    if measure not in (*MEASURES, *DERIVED_MEASURES):
        raise InvalidFilters(f"Measure must be one of {', '.join((*MEASURES, *DERIVED_MEASURES))}.")
    compare = [code.upper() for code in _codes(query, "compare")]
    if compare and (
        len(compare) != 2 or compare[0] == compare[1] or not all(COUNTRY.fullmatch(c) for c in compare)
    ):
        raise InvalidFilters("Compare two different countries, e.g. compare=DE&compare=US.")
    correction = query.get("correction") or "bh"
    if correction not in {"bh", "holm"}:
        raise InvalidFilters("Correction must be bh (Benjamini-Hochberg) or holm.")
    layout = query.get("layout") or "overlay"
    if layout not in {"overlay", "multiples"}:
        raise InvalidFilters("Layout must be overlay or multiples.")
    model_version = query.get("model") or ""
    if len(model_version) > MAX_MODEL_CHARS:
        raise InvalidFilters(f"A model version has at most {MAX_MODEL_CHARS} characters.")
    norm_country = (query.get("norm_country") or "").strip().upper()
    if norm_country and not COUNTRY.fullmatch(norm_country):
        raise InvalidFilters("The norm's country is a two-letter code, e.g. DE.")
    norm_category = " ".join((query.get("norm_category") or "").split())
    if len(norm_category) > MAX_CATEGORY_CHARS:
        raise InvalidFilters(f"An ad category has at most {MAX_CATEGORY_CHARS} characters.")
    return Filters(
        countries=tuple(sorted({code.upper() for code in countries})),
        devices=tuple(sorted(set(devices))),
        date_from=date_from,
        date_to=date_to,
        quality=QUALITY_LEVELS[quality_level(quality)],
        completed_only=_flag(query, "completed"),
        baseline=_flag(query, "baseline"),
        measure=measure,
        compare=(compare[0], compare[1]) if compare else None,
        correction=correction,
        layout=layout,
        model_version=model_version,
        norm_country=norm_country,
        norm_category=norm_category,
    )
