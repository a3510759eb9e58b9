"""Country codes and names: which codes exist (ISO 3166-1 alpha-2, from pycountry) and how analysts see them.

The one place that decides what a country is: the set-up form and the admin (allowed countries, quotas), the
participant's study link (`?c=DE`) and the dashboards all ask here. Imports nothing of the portal, so every
app may import it.
"""

from __future__ import annotations

from collections.abc import Iterable

import pycountry

# Code -> the name analysts read: ISO's short name, or its common name where ISO's reads like an index entry
# ("South Korea", not "Korea, Republic of").
COUNTRY_NAMES: dict[str, str] = {
    country.alpha_2: getattr(country, "common_name", country.name) for country in pycountry.countries
}
# Codes people often mean that ISO 3166-1 does not assign: what to suggest instead.
NOT_ISO_CODES = {"UK": "GB", "EL": "GR"}
UNKNOWN_LABEL = "unknown"  # a session without a country (the link carried none)


class UnknownCountry(ValueError):
    """A code that is not an ISO 3166-1 alpha-2 country code; the message says so for a person to read."""


def is_country_code(code: str) -> bool:
    """An assigned ISO 3166-1 alpha-2 code, in capitals as stored ("DE", not "de" or "Deutschland")."""
    return code in COUNTRY_NAMES


def check_country_code(code: str) -> None:
    """UnknownCountry unless `code` (capitals) is an assigned ISO 3166-1 alpha-2 code."""
    if is_country_code(code):
        return
    hint = NOT_ISO_CODES.get(code)
    suggestion = f" For {COUNTRY_NAMES[hint]} use {hint}." if hint else ""
    raise UnknownCountry(f"{code} is not an ISO 3166-1 country code (e.g. DE for Germany).{suggestion}")


def country_name(code: str) -> str:
    """The country's name, or "" for a code that is not one."""
    return COUNTRY_NAMES.get(code, "")


def country_label(code: str) -> str:
    """What analysts see: "Germany (DE)"; a code that is not a country (stored before codes were checked)
    as it is, and no code as "unknown"."""
    if not code:
        return UNKNOWN_LABEL
    name = COUNTRY_NAMES.get(code)
    return f"{name} ({code})" if name else code


def country_labels(codes: Iterable[str]) -> dict[str, str]:
    """Code -> label for each code (for a payload's table of the countries it mentions)."""
    return {code: country_label(code) for code in codes}
