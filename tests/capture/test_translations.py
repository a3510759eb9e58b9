"""Participant pages in every language: complete catalogs, no English left on any page, language from entry.

The English source strings are read from the templates and views themselves (not from the catalogs), so a
string added to a participant page without a translation fails here.
"""

from __future__ import annotations

import ast
import gettext
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from html import unescape
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone, translation

from research_portal.capture.models import ParticipantSession
from research_portal.capture.views import feedback_messages
from research_portal.studies.models import CountryQuota, Study

pytestmark = pytest.mark.django_db

LANGUAGES = ("de", "fr", "es", "pt", "ja")
# A country whose participants get each language (see LANGUAGE_BY_COUNTRY in participation.py).
COUNTRY_OF = {"de": "DE", "fr": "FR", "es": "MX", "pt": "BR", "ja": "JP"}
# (language, msgid) pairs whose correct translation is the English text itself; none so far.
IDENTICAL_OK: frozenset[tuple[str, str]] = frozenset()
LOCALE_DIR = Path(settings.LOCALE_PATHS[0])
REPO = Path(settings.BASE_DIR)
PARTICIPANT_TEMPLATES = [
    REPO / "templates" / "base.html",
    *sorted((REPO / "templates/participant").glob("*.html")),
]
PARTICIPANT_MODULES = [
    REPO / "research_portal/capture/views.py",
    REPO / "research_portal/capture/participation.py",
]
PLACEHOLDER = re.compile(r"%\([^)]+\)[sd]|%[sd]|\{[^{}]*\}|</?[a-zA-Z][^>]*>")
# Study content the researcher writes in one language; kept out of the English check by a neutral marker.
CONSENT_MARKER = "[[consent text of the study]]"


# ---- the English source strings and the catalogs ---------------------------------------------------------


def template_msgids(path: Path) -> set[str]:
    """Strings of {% translate "..." %} and plain {% blocktranslate %}...{% endblocktranslate %}."""
    source = path.read_text(encoding="utf-8")
    found = {
        ast.literal_eval(quoted)
        for quoted in re.findall(
            r"{%\s*(?:translate|trans)\s+(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')", source
        )
    }
    for options, body in re.findall(
        r"{%\s*blocktrans(?:late)?(.*?)%}(.*?){%\s*endblocktrans(?:late)?\s*%}", source, re.S
    ):
        body = re.sub(r"{{\s*(\w+)\s*}}", r"%(\1)s", body)
        found.add(" ".join(body.split()) if "trimmed" in options else body)
    return found


def python_msgids(path: Path) -> set[str]:
    """String arguments of every _("...") call (implicit concatenation included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("_", "gettext", "gettext_lazy")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }


def participant_msgids() -> set[str]:
    msgids = set()
    for path in PARTICIPANT_TEMPLATES:
        msgids |= template_msgids(path)
    for path in PARTICIPANT_MODULES:
        msgids |= python_msgids(path)
    return msgids


@dataclass
class PoEntry:
    msgid: str
    msgstrs: list[str]
    flags: set[str] = field(default_factory=set)


def read_po(path: Path) -> list[PoEntry]:
    """The live entries of a .po file (obsolete `#~` ones are ignored, as msgfmt does)."""
    entries = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        flags, fields, current = set(), {}, None
        for line in block.splitlines():
            if line.startswith("#,"):
                flags |= {flag.strip() for flag in line[2:].split(",")}
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                fields[current] += ast.literal_eval(line)
            elif line.strip():
                keyword, _space, quoted = line.partition(" ")
                current = keyword
                fields[current] = ast.literal_eval(quoted)
        if "msgid" in fields:
            msgstrs = [value for key, value in fields.items() if key.startswith("msgstr")]
            entries.append(PoEntry(fields["msgid"], msgstrs, flags))
    return entries


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / "django.po"


def catalog(language: str) -> dict[str, str]:
    return {entry.msgid: entry.msgstrs[0] for entry in read_po(po_path(language)) if entry.msgid}


def english_leaks(text: str, language: str) -> list[str]:
    """Source strings of two words or more that appear verbatim (as whole words) in `text`.

    Single words are left to the catalog tests: Portuguese "Continue por lá" is not English.
    """
    return [
        msgid
        for msgid in sorted(participant_msgids())
        if len(msgid.split()) >= 2
        and (language, msgid) not in IDENTICAL_OK
        and re.search(rf"(?<!\w){re.escape(msgid)}(?!\w)", text)
    ]


# ---- (a) the catalogs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_catalog_has_no_untranslated_or_fuzzy_entry(language):
    entries = read_po(po_path(language))
    header = next(entry for entry in entries if entry.msgid == "")
    assert f"Language: {language}\n" in header.msgstrs[0]
    assert "fuzzy" not in header.flags
    for entry in entries:
        if not entry.msgid:
            continue
        assert "fuzzy" not in entry.flags, f"{language}: fuzzy entry {entry.msgid!r}"
        assert all(entry.msgstrs), f"{language}: untranslated {entry.msgid!r}"
        for msgstr in entry.msgstrs:
            assert sorted(PLACEHOLDER.findall(msgstr)) == sorted(PLACEHOLDER.findall(entry.msgid)), (
                f"{language}: placeholders or HTML differ in {entry.msgid!r} -> {msgstr!r}"
            )


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_participant_string_is_translated_in_the_compiled_catalog(language):
    po = catalog(language)
    compiled = gettext.translation("django", localedir=LOCALE_DIR, languages=[language])
    missing = sorted(participant_msgids() - po.keys())
    assert not missing, f"{language}: not in the catalog (run makemessages): {missing}"
    for msgid in participant_msgids():
        translated = compiled.gettext(msgid)
        assert translated == po[msgid], (
            f"{language}: .mo differs from .po for {msgid!r} (run compilemessages)"
        )
        if (language, msgid) not in IDENTICAL_OK:
            assert translated != msgid, f"{language}: {msgid!r} is still English"


def test_the_source_strings_are_found():
    msgids = participant_msgids()
    assert len(msgids) >= 50
    assert {"Before you start", "Camera check", "This study is full"} <= msgids
    assert "Your camera stopped. Please check it and press Resume." in msgids  # a feedback message


def test_the_privacy_promise_keeps_its_strength():
    """'Analysed, then discarded; no picture or video stored': the key words of each translation."""
    msgid = (
        "webcam pictures are analysed as they arrive and then discarded. "
        "No picture or video of you is stored."
    )
    key_words = {
        "de": ("ausgewertet", "gelöscht", "Kein Bild und kein Video", "gespeichert"),
        "fr": ("analysées", "supprimées", "Aucune image ni vidéo", "conservée"),
        "es": ("se analizan", "se eliminan", "No se guarda ninguna imagen ni ningún video"),
        "pt": ("analisadas", "descartadas", "Nenhuma imagem ou vídeo", "armazenado"),
        "ja": ("分析", "破棄", "画像や動画", "一切ありません"),
    }
    for language, words in key_words.items():
        translated = catalog(language)[msgid]
        assert all(word in translated for word in words), f"{language}: {translated!r}"


# ---- (b) every participant page in every language ---------------------------------------------------------


def new_session(acme, language: str, **fields) -> ParticipantSession:
    fields.setdefault("ad_sequence", [acme.ad.pk])
    return ParticipantSession.objects.create(
        study=acme.study, language=language, country=COUNTRY_OF[language], **fields
    )


def with_panel_redirects(study: Study) -> None:
    for outcome in ("complete", "failed", "declined", "over_quota"):
        setattr(study, f"redirect_{outcome}_url", f"https://panel.example/{outcome}?id={{pid}}")
    study.save()


def enter(client, acme, language: str, **params):
    params = {"pid": f"panel-{language}", "c": COUNTRY_OF[language], **params}
    params = {name: value for name, value in params.items() if value is not None}
    return client.get(f"/s/{acme.study.public_id}/", params, HTTP_ACCEPT_LANGUAGE=language)


def consent_page(client, acme, language):
    return client.get(f"/p/{new_session(acme, language).token}/consent/")


def consent_page_of_a_study_keeping_frames(client, acme, language):
    acme.study.store_frames = True
    acme.study.save()
    return consent_page(client, acme, language)


def consent_without_a_decision(client, acme, language):
    return client.post(f"/p/{new_session(acme, language).token}/consent/", {})


def check_page(client, acme, language):
    return client.get(f"/p/{new_session(acme, language, state='consented').token}/check/")


def watch_page(client, acme, language):
    session = new_session(acme, language, state="consented", checks_passed_at=timezone.now())
    return client.get(f"/p/{session.token}/watch/")


def watch_page_without_a_video(client, acme, language):
    session = new_session(acme, language, state="consented", checks_passed_at=timezone.now(), ad_sequence=[])
    return client.get(f"/p/{session.token}/watch/")


def end_page_while_saving(client, acme, language):
    now = timezone.now()
    session = new_session(
        acme,
        language,
        state="viewing",
        checks_passed_at=now - timedelta(seconds=10),
        viewing_ended_at=now,
        last_enqueued_seq=40,
        last_enqueued_at=now,
    )
    return client.get(f"/p/{session.token}/end/")


def ended_page(state: str, redirects: bool):
    def page(client, acme, language):
        if redirects:
            with_panel_redirects(acme.study)
        session = new_session(acme, language, state=state, external_participant_id=f"p-{language}")
        return client.get(f"/p/{session.token}/end/")

    return page


def failed_after_viewing(client, acme, language):
    with_panel_redirects(acme.study)
    session = new_session(
        acme,
        language,
        state="failed",
        external_participant_id=f"p-{language}",
        checks_passed_at=timezone.now(),
        exclusion_reason="too few usable frames",
    )
    return client.get(f"/p/{session.token}/end/")


def ended_for_an_unplayable_ad(client, acme, language):
    with_panel_redirects(acme.study)
    session = new_session(
        acme,
        language,
        state="failed",
        external_participant_id=f"p-{language}",
        exclusion_reason=f"ad_unplayable: ad {acme.ad.pk} (not_supported): {acme.ad.title}",
    )
    return client.get(f"/p/{session.token}/end/")


def refused_invalid_link(client, acme, language):
    return enter(client, acme, language, pid="<script>")


def refused_without_a_panel_id(client, acme, language):
    acme.study.require_participant_id = True
    acme.study.save()
    return enter(client, acme, language, pid=None)


def refused_closed_study(client, acme, language):
    with_panel_redirects(acme.study)
    acme.study.status = Study.Status.CLOSED
    acme.study.save()
    return enter(client, acme, language)


def refused_other_country(client, acme, language):
    acme.study.allowed_countries = ["US"]
    acme.study.save()
    return enter(client, acme, language)


def refused_full_quota(client, acme, language):
    with_panel_redirects(acme.study)
    acme.study.allowed_countries = []
    acme.study.save()
    country = COUNTRY_OF[language]
    CountryQuota.objects.create(study=acme.study, country=country, target=1)
    ParticipantSession.objects.create(study=acme.study, country=country, state="completed")
    return enter(client, acme, language)


def unknown_study_link(client, acme, language):
    return client.get(
        "/s/no-such-study/", {"pid": "p", "c": COUNTRY_OF[language]}, HTTP_ACCEPT_LANGUAGE=language
    )


# name -> (how to reach the page, its status, the English source strings it must show translated)
PAGES = {
    "consent": (consent_page, 200, ["Before you start", "I agree, continue", "No, thanks"]),
    "consent, frames kept": (
        consent_page_of_a_study_keeping_frames,
        200,
        ["this study keeps the webcam pictures taken while you watch, for its research team only."],
    ),
    "consent, no decision": (consent_without_a_decision, 400, ["Please accept or decline to continue."]),
    "check": (
        check_page,
        200,
        ["Camera check", "Start camera check", "Your camera picture", "Starting camera…", "Checking…"],
    ),
    "watch": (
        watch_page,
        200,
        ["Please watch the video", "Start", "Resume", "Play", "Relax and look at the screen"],
    ),
    "watch, no video": (watch_page_without_a_video, 503, ["Nothing to watch yet"]),
    "end, saving": (end_page_while_saving, 200, ["Saving your session…"]),
    "end, completed": (ended_page("completed", True), 200, ["You have finished this study.", "Continue"]),
    "end, completed, no panel": (ended_page("completed", False), 200, ["You can close this window now."]),
    "end, declined": (
        ended_page("declined", True),
        200,
        ["You chose not to take part. Nothing was recorded."],
    ),
    "end, over quota": (ended_page("over_quota", True), 200, ["This study is full"]),
    "end, failed at the camera check": (
        ended_page("failed", True),
        200,
        [
            "Unfortunately the camera check did not succeed, so the study ended before the video. Nothing "
            "from your camera was stored."
        ],
    ),
    "end, failed after viewing": (
        failed_after_viewing,
        200,
        ["Unfortunately we could not record enough of your session to use it."],
    ),
    "end, ad unplayable": (
        ended_for_an_unplayable_ad,
        200,
        [
            "Thank you for your time",
            "Your browser could not play the video, so the study ended early.",
            "Continue",
        ],
    ),
    "refused, invalid link": (refused_invalid_link, 400, ["This link is not valid"]),
    "refused, no panel id": (
        refused_without_a_panel_id,
        400,
        [
            "This link is incomplete",
            "The link is missing your participant id. Please go back to your panel and open the study from "
            "there.",
        ],
    ),
    "refused, closed": (refused_closed_study, 410, ["This study is closed", "Continue"]),
    "refused, other country": (refused_other_country, 403, ["This study is not available in your country"]),
    "refused, quota full": (
        refused_full_quota,
        403,
        ["Thank you for your interest; we have all the participants we need."],
    ),
    "unknown study": (unknown_study_link, 404, ["Study not found", "This study link is not valid."]),
}


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("language", LANGUAGES)
def test_participant_page_has_no_english_left(client, acme, language, page):
    reach, status, expected = PAGES[page]
    acme.study.consent_text = CONSENT_MARKER
    acme.study.save()
    response = reach(client, acme, language)
    assert response.status_code == status
    html = response.content.decode()
    assert f'<html lang="{language}">' in html
    text = unescape(html)
    assert not english_leaks(text, language), f"English on the {language} {page} page"
    translations = catalog(language)
    for msgid in expected:
        assert translations[msgid] in text, f"{translations[msgid]!r} missing from the {language} {page} page"


def json_script(html: str, element_id: str) -> dict:
    return json.loads(html.split(f'id="{element_id}" type="application/json">')[1].split("</script>")[0])


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("page, element_id", [(check_page, "check-config"), (watch_page, "capture-config")])
def test_messages_for_the_page_scripts_are_translated(client, acme, language, page, element_id):
    messages = json_script(page(client, acme, language).content.decode(), element_id)["messages"]
    with translation.override("en"):
        english = feedback_messages()
    with translation.override(language):
        assert messages == feedback_messages()
    assert messages.keys() == english.keys()
    still_english = [code for code, text in messages.items() if text == english[code]]
    assert not still_english, f"{language}: untranslated messages {still_english}"
    if language == "ja":
        assert all(re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", text) for text in messages.values())


# ---- (c) the entry link picks the language ----------------------------------------------------------------


def test_a_japanese_panel_link_leads_to_japanese_pages(client, acme):
    response = client.get(f"/s/{acme.study.public_id}/?pid=x&c=JP", HTTP_ACCEPT_LANGUAGE="en-US", follow=True)
    session = ParticipantSession.objects.get(external_participant_id="x")
    assert session.language == "ja"
    html = response.content.decode()
    assert response["Content-Language"] == "ja" and '<html lang="ja">' in html
    assert "始める前に" in html and "同意して続ける" in html
    # Every later page stays Japanese, whatever the browser says.
    response = client.post(
        f"/p/{session.token}/consent/", {"decision": "accept"}, HTTP_ACCEPT_LANGUAGE="de", follow=True
    )
    html = response.content.decode()
    assert '<html lang="ja">' in html and "カメラチェック" in html
    assert not english_leaks(unescape(html), "ja")


def test_a_country_without_its_own_language_falls_back_to_the_browser(client, acme):
    response = client.get(f"/s/{acme.study.public_id}/?pid=x&c=US", HTTP_ACCEPT_LANGUAGE="de", follow=True)
    assert ParticipantSession.objects.get(external_participant_id="x").language == "de"
    html = response.content.decode()
    assert response["Content-Language"] == "de" and '<html lang="de">' in html
    assert "Bevor Sie beginnen" in html and "Ich stimme zu, weiter" in html


def test_an_unlisted_browser_language_gets_english(client, acme):
    response = client.get(f"/s/{acme.study.public_id}/?pid=x&c=US", HTTP_ACCEPT_LANGUAGE="it", follow=True)
    assert ParticipantSession.objects.get(external_participant_id="x").language == "en"
    assert '<html lang="en">' in response.content.decode() and b"Before you start" in response.content
