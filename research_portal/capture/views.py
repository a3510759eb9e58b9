"""Participant pages. Thin: each view loads the session, calls a domain function, renders or redirects."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from functools import wraps

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.cache import add_never_cache_headers
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from research_portal.accounts.ratelimit import rate_limited
from research_portal.capture.face_check import do_check_camera_frame, do_fail_check_attempt
from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import (
    EntryRefused,
    check_parameters,
    check_query_string,
    check_url_token,
    consent_text_for,
    country_hint,
    device_type_from_user_agent,
    do_decline,
    do_enter_study,
    do_record_consent,
    language_for,
    read_entry_link,
    session_redirect_url,
)
from research_portal.capture.routing import capture_socket_path
from research_portal.capture.validation import do_finish_viewing, failed_for_unplayable_ad
from research_portal.media import JPEG_MAGIC, video_response
from research_portal.studies.models import Study

State = ParticipantSession.State
# A check frame is one small JPEG; anything bigger is not from our page.
MAX_CHECK_FRAME_BYTES = 512 * 1024
# The camera rate the check page measures, e.g. "29.8"; no camera films faster than this.
CAMERA_FPS = re.compile(r"^[0-9]{1,4}(\.[0-9]{1,3})?$")
MAX_CAMERA_FPS = 1000.0
# A check attempt reports the problem codes of its last frame (the codes of feedback_messages).
MAX_ATTEMPT_BODY_BYTES = 4096
MAX_ATTEMPT_PROBLEMS = 20
# The entry cookie binds a browser to the sessions it started (or resumed with a signed link) in one study,
# so that only that browser resumes them from an unsigned link. Signed, HttpOnly, SameSite=Lax (sent when
# the panel's page sends the participant over, not on other sites' requests), only on the study's link.
ENTRY_COOKIE_SALT = "facecode-entry-binding"
ENTRY_COOKIE_MAX_AGE = 60 * 24 * 3600
ENTRY_COOKIE_SESSIONS = 8
# Request bodies that Django parses into request.POST (checked like query strings).
FORM_CONTENT_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def page_for_state(session: ParticipantSession) -> str:
    """Where a participant belongs now; every page redirects there when reached out of order."""
    if session.state == State.STARTED:
        name = "participant-consent"
    elif session.is_capturing and session.checks_passed_at is None:
        name = "participant-check"
    elif session.is_capturing:
        name = "participant-watch"
    else:
        name = "participant-end"
    return reverse(name, args=[session.token])


def participant_view(view: Callable) -> Callable:
    """Load the session behind the token (404 if none) and render in the participant's language."""

    @wraps(view)
    def wrapper(request: HttpRequest, token: str, *args, **kwargs) -> HttpResponse:
        try:
            check_url_token(token)
        except EntryRefused as refused:
            with translation.override(language_for("", request.LANGUAGE_CODE)):
                return refusal_page(request, refused)
        session = get_object_or_404(ParticipantSession.objects.select_related("study"), token=token)
        with translation.override(session.language):
            try:
                check_request_parameters(request)
            except EntryRefused as refused:
                response = refusal_page(request, refused)
            else:
                response = view(request, session, *args, **kwargs)
        response.headers.setdefault("Content-Language", session.language)
        return response

    return wrapper


def message_page(
    request: HttpRequest, status: int, title: str, detail: str, next_url: str = ""
) -> HttpResponse:
    return render(
        request,
        "participant/message.html",
        {"title": title, "detail": detail, "next_url": next_url},
        status=status,
    )


def refusal_page(request: HttpRequest, refused: EntryRefused) -> HttpResponse:
    return message_page(request, refused.status, refused.title, refused.detail, refused.next_url)


def check_request_parameters(request: HttpRequest) -> None:
    """The query string and form fields of a participant page: clean text, bounded (EntryRefused 400)."""
    check_query_string(request.META.get("QUERY_STRING", ""))
    check_parameters(request.GET)
    if request.method == "POST" and request.content_type in FORM_CONTENT_TYPES:
        request.body  # noqa: B018 -- read (and kept) first, so that a view may still read the raw body
        check_parameters(request.POST)


def too_many_entries(request: HttpRequest) -> HttpResponse:
    return message_page(
        request, 429, _("Please wait a moment"), _("Please wait a minute and open your link again.")
    )


def entry_cookie_name(public_id: str) -> str:
    return f"facecode_entry_{public_id}"


def bound_session_ids(request: HttpRequest, public_id: str) -> list[int]:
    """The sessions of this study that this browser started or resumed, newest first (from its cookie)."""
    value = request.get_signed_cookie(
        entry_cookie_name(public_id),
        default="",
        salt=ENTRY_COOKIE_SALT + public_id,
        max_age=ENTRY_COOKIE_MAX_AGE,
    )
    ids = [int(part) for part in value.split(".") if part.isascii() and part.isdigit()]
    return ids[:ENTRY_COOKIE_SESSIONS]


def bind_browser(request: HttpRequest, response: HttpResponse, session: ParticipantSession) -> None:
    public_id = session.study.public_id
    ids = [session.pk, *(pk for pk in bound_session_ids(request, public_id) if pk != session.pk)]
    response.set_signed_cookie(
        entry_cookie_name(public_id),
        ".".join(str(pk) for pk in ids[:ENTRY_COOKIE_SESSIONS]),
        salt=ENTRY_COOKIE_SALT + public_id,
        max_age=ENTRY_COOKIE_MAX_AGE,
        path=f"/s/{public_id}/",
        secure=settings.SESSION_COOKIE_SECURE,
        httponly=True,
        samesite="Lax",
    )


@require_GET
@rate_limited("entry", key=lambda request: request.path, methods=("GET",), response=too_many_entries)
def study_entry(request: HttpRequest, public_id: str) -> HttpResponse:
    """The panel's link. A GET by contract (panels send participants with links), and the one participant
    GET that writes: it starts a session (or records an over-quota refusal) once per panel id; opening it
    again resumes in the same browser or with a signed link, and never makes a second session."""
    response = entry_response(request, public_id)
    # Never cached anywhere: the answer carries a cookie and a session's address for this browser only.
    add_never_cache_headers(response)
    return response


def entry_response(request: HttpRequest, public_id: str) -> HttpResponse:
    raw_query = request.META.get("QUERY_STRING", "")
    with translation.override(language_for("", request.LANGUAGE_CODE)):
        try:
            check_url_token(public_id)
            check_query_string(raw_query)  # before Django parses it (thousands of fields would be its 400)
        except EntryRefused as refused:
            return refusal_page(request, refused)
        study = Study.objects.filter(public_id=public_id).first()
        if study is None:
            return message_page(request, 404, _("Study not found"), _("This study link is not valid."))
    language = language_for(country_hint(study, request.GET), request.LANGUAGE_CODE)
    with translation.override(language):
        try:
            link = read_entry_link(study, request.GET, raw_query)
            device_type = device_type_from_user_agent(request.headers.get("User-Agent", "")[:512])
            entry = do_enter_study(study, link, language, device_type, bound_session_ids(request, public_id))
        except EntryRefused as refused:
            response = refusal_page(request, refused)
        else:
            if entry.refusal is not None:
                response = refusal_page(request, entry.refusal)
            else:
                response = redirect(page_for_state(entry.session))
            bind_browser(request, response, entry.session)
    response.headers.setdefault("Content-Language", language)
    return response


@require_http_methods(["GET", "POST"])
@participant_view
def consent(request: HttpRequest, session: ParticipantSession) -> HttpResponse:
    if session.state != State.STARTED:
        return redirect(page_for_state(session))
    if request.method == "POST":
        decisions = request.POST.getlist("decision")
        decision = decisions[0] if len(decisions) == 1 else ""  # both at once is no decision
        if decision == "accept":
            do_record_consent(session)
        elif decision == "decline":
            do_decline(session)
        else:
            return message_page(request, 400, _("Please choose"), _("Please accept or decline to continue."))
        return redirect(page_for_state(session))
    context = {
        "session": session,
        "study": session.study,
        "consent_text": consent_text_for(session.study, session.language),
    }
    return render(request, "participant/consent.html", context)


def feedback_messages() -> dict[str, str]:
    """The words the pages show for each problem code (translated into the participant's language)."""
    return {
        "no_face": _("We can't see your face. Please look at the screen."),
        "not_centred": _("Please move so that your face is in the middle of the picture."),
        "too_small": _("Please move closer to your camera."),
        "too_dark": _("Your face is too dark. Please turn on a light in front of you."),
        "too_bright": _("There is too much light on your face. Please move out of direct light."),
        "backlit": _("There is a bright light behind you. Please face the light instead."),
        "blurry": _("The picture is blurry. Please hold still and check that your camera is clean."),
        "not_frontal": _("Please look straight at the screen."),
        "low_frame_rate": _("Your camera is too slow. Please close other programs that use the camera."),
        "unreadable": _("We could not read the camera picture. Please try again."),
        "camera_denied": _("We could not use your camera. Please allow camera access and try again."),
        "camera_stopped": _("Your camera stopped. Please check it and press Resume."),
        "other_tab": _("This study is open in another window or tab. Please continue there."),
        "good": _("Great, hold still…"),
        "passed": _("All set!"),
        "attempt_failed": _("That did not work yet. Please read the hint above and try again."),
        "saving": _("Saving your session…"),
        "keep_face": _("Please keep your face in view while the video plays."),
        "baseline": _("Relax and look at the screen for a few seconds."),
        "video_error": _("The video could not be played."),
        "ad_unplayable": _(
            "Your browser cannot play this video, so the study ends here. Thank you for your time."
        ),
        "press_play": _("Your browser paused the video. Please press Play to continue."),
    }


@require_GET
@participant_view
def check(request: HttpRequest, session: ParticipantSession) -> HttpResponse:
    if not session.is_capturing or session.checks_passed_at is not None:
        return redirect(page_for_state(session))
    config = {
        "frameUrl": reverse("participant-check-frame", args=[session.token]),
        "attemptFailedUrl": reverse("participant-check-attempt-failed", args=[session.token]),
        "watchUrl": reverse("participant-watch", args=[session.token]),
        "attemptSeconds": session.study.check_attempt_seconds,
        "attemptsLeft": max(0, session.study.max_check_attempts - session.check_attempts),
        "messages": feedback_messages(),
    }
    return render(request, "participant/check.html", {"session": session, "check_config": config})


def too_many_check_frames(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"error": "rate_limited"}, status=429)


@require_POST
@rate_limited(
    "check_frame", key=lambda request: request.path, methods=("POST",), response=too_many_check_frames
)
@participant_view
def camera_check_frame(request: HttpRequest, session: ParticipantSession) -> JsonResponse:
    """One camera frame of the face check (JPEG body, measured camera fps in the query)."""
    if not session.is_capturing:
        return JsonResponse({"error": "session_closed", "next": page_for_state(session)}, status=409)
    body = request.body
    if not body or len(body) > MAX_CHECK_FRAME_BYTES or not body.startswith(JPEG_MAGIC):
        return JsonResponse({"error": "not_jpeg"}, status=400)
    raw_fps = request.GET.get("fps", "0")
    if not CAMERA_FPS.match(raw_fps) or not math.isfinite(float(raw_fps)) or float(raw_fps) > MAX_CAMERA_FPS:
        return JsonResponse({"error": "bad_fps"}, status=400)
    camera_fps = float(raw_fps)
    result = do_check_camera_frame(session, body, camera_fps)
    messages = feedback_messages()
    return JsonResponse(
        {
            "problems": result.problems,
            "messages": [messages[code] for code in result.problems if code in messages],
            "passed": result.passed,
            "face_box": result.face_box,
        }
    )


def read_attempt_problems(body: bytes) -> list[str] | None:
    """The problem codes a timed-out check attempt reports ({"problems": [...]}, empty body: none); None
    when the body is anything else (the codes go into the session's events, so only known codes)."""
    if not body:
        return []
    if len(body) > MAX_ATTEMPT_BODY_BYTES:
        return None
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    problems = data.get("problems", []) if isinstance(data, dict) else None
    known = feedback_messages().keys()
    if not isinstance(problems, list) or len(problems) > MAX_ATTEMPT_PROBLEMS:
        return None
    if not all(isinstance(code, str) and code in known for code in problems):
        return None
    return list(dict.fromkeys(problems))


@require_POST
@participant_view
def camera_check_attempt_failed(request: HttpRequest, session: ParticipantSession) -> JsonResponse:
    if not session.is_capturing or session.checks_passed_at is not None:
        return JsonResponse({"failed": session.has_ended, "next": page_for_state(session)})
    problems = read_attempt_problems(request.body)
    if problems is None:
        return JsonResponse({"error": "bad_request"}, status=400)
    failed = do_fail_check_attempt(session, problems)
    return JsonResponse({"failed": failed, "next": page_for_state(session) if failed else ""})


@require_GET
@participant_view
def watch(request: HttpRequest, session: ParticipantSession) -> HttpResponse:
    if not session.is_capturing or session.checks_passed_at is None:
        return redirect(page_for_state(session))
    ads = session.study.ads.in_bulk(session.ad_sequence)
    playlist = [ads[ad_id] for ad_id in session.ad_sequence if ad_id in ads]
    if not playlist:
        return message_page(request, 503, _("Nothing to watch yet"), _("This study has no video yet."))
    capture_config = {
        "socketPath": capture_socket_path(session.token),
        "fps": session.study.capture_fps,
        "finishUrl": reverse("participant-finish", args=[session.token]),
        "endUrl": reverse("participant-end", args=[session.token]),
        "baselineSeconds": session.study.baseline_seconds,
        "ads": [
            {
                "id": ad.pk,
                "title": ad.title,
                "src": reverse("participant-ad-video", args=[session.token, ad.pk]),
            }
            for ad in playlist
        ],
        "messages": feedback_messages(),
    }
    return render(request, "participant/watch.html", {"session": session, "capture_config": capture_config})


@require_GET
@participant_view
def ad_video(request: HttpRequest, session: ParticipantSession, ad_id: int) -> HttpResponse:
    """Ad videos are served only to a session of their own study that is viewing, never from a public path."""
    if not session.is_capturing or ad_id not in session.ad_sequence:
        raise Http404
    return video_response(request, get_object_or_404(session.study.ads, pk=ad_id).video)


@require_POST
@participant_view
def finish(request: HttpRequest, session: ParticipantSession) -> HttpResponse:
    do_finish_viewing(session)
    return redirect(page_for_state(session))


@require_GET
@participant_view
def outcome(request: HttpRequest, session: ParticipantSession) -> JsonResponse:
    """Polled by the end page until the session is validated. Reads only: validation is periodic work
    (validation.do_validate_due_sessions), done whether or not this page is still open."""
    return JsonResponse(
        {
            "state": session.state,
            "ended": session.has_ended,
            "next": session_redirect_url(session) if session.has_ended else "",
        }
    )


@require_GET
@participant_view
def end(request: HttpRequest, session: ParticipantSession) -> HttpResponse:
    if session.is_capturing or session.state == State.STARTED:
        return redirect(page_for_state(session))
    # Until validated the page polls /outcome, which says where to go once the session has ended.
    next_url = session_redirect_url(session) if session.has_ended else ""
    context = {
        "session": session,
        "next_url": next_url,
        "outcome_url": reverse("participant-outcome", args=[session.token]),
        "ad_unplayable": failed_for_unplayable_ad(session),
        "messages": feedback_messages(),
    }
    return render(request, "participant/end.html", context)
