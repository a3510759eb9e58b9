"""research_portal.countries: which codes are countries, and how analysts see them."""

from __future__ import annotations

import pytest

from research_portal.countries import (
    UnknownCountry,
    check_country_code,
    country_label,
    country_labels,
    country_name,
    is_country_code,
)


def test_assigned_codes_are_countries_and_other_two_letters_are_not():
    assert all(is_country_code(code) for code in ("DE", "US", "JP", "GB", "FR", "BR", "KR"))
    # Unassigned, user-assigned (XK, Kosovo, by some panels), exceptionally reserved (UK, EU), other cases.
    not_countries = ("XX", "ZZ", "XK", "UK", "EU", "de", "De", "D", "DEU", "")
    assert not any(is_country_code(code) for code in not_countries)


def test_check_says_what_is_wrong_and_what_was_meant():
    check_country_code("DE")
    message = r"^XX is not an ISO 3166-1 country code \(e\.g\. DE for Germany\)\.$"
    with pytest.raises(UnknownCountry, match=message):
        check_country_code("XX")
    with pytest.raises(UnknownCountry, match="For United Kingdom use GB."):
        check_country_code("UK")
    with pytest.raises(UnknownCountry, match="For Greece use GR."):
        check_country_code("EL")


def test_analysts_read_names_with_their_codes():
    assert country_label("DE") == "Germany (DE)"
    assert country_label("US") == "United States (US)"
    assert country_label("KR") == "South Korea (KR)"  # the common name, not ISO's "Korea, Republic of"
    assert country_name("JP") == "Japan" and country_name("XX") == ""
    # Codes stored before codes were checked stay readable; no country at all is "unknown".
    assert country_label("XX") == "XX" and country_label("") == "unknown"
    assert country_labels(["DE", "", "XX"]) == {"DE": "Germany (DE)", "": "unknown", "XX": "XX"}
