"""Participant pages. Thin: each view loads the session, calls a domain function, renders or redirects."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from research_portal.accounts.ratelimit import rate_limited
from research_portal.capture.face_check import do_check_camera_frame, do_fail_check_attempt
from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import (
    EntryRefused,
    check_entry,
    consent_text_for,
    device_type_from_user_agent,
    do_decline,
    do_record_consent,
    do_start_session,
    find_returning_session,
    language_for,
    panel_redirect_url,
    read_entry_params,
    session_redirect_url,
)
from research_portal.capture.routing import capture_socket_path
from research_portal.capture.validation import do_finish_viewing, session_outcome
from research_portal.studies.models import Study

State = ParticipantSession.State
# A check frame is one small JPEG; anything bigger is not from our page.
MAX_CHECK_FRAME_BYTES = 512 * 1024


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
        session = get_object_or_404(ParticipantSession.objects.select_related("study"), token=token)
        with translation.override(session.language):
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


def too_many_entries(request: HttpRequest) -> HttpResponse:
    return message_page(
        request, 429, _("Please wait a moment"), _("Please wait a minute and open your link again.")
    )


@require_GET
@rate_limited("entry", key=lambda request: request.path, methods=("GET",), response=too_many_entries)
def study_entry(request: HttpRequest, public_id: str) -> HttpResponse:
    study = Study.objects.filter(public_id=public_id).first()
    if study is None:
        return message_page(request, 404, _("Study not found"), _("This study link is not valid."))
    participant_id, country = read_entry_params(study, request.GET)
    returning = find_returning_session(study, participant_id.strip())
    if returning is not None:
        return redirect(page_for_state(returning))
    language = language_for(country.strip().upper(), request.LANGUAGE_CODE)
    with translation.override(language):
        try:
            participant_id, country = check_entry(study, participant_id, country)
        except EntryRefused as refused:
            next_url = panel_redirect_url(study, refused.outcome, participant_id) if refused.outcome else ""
            return message_page(request, refused.status, refused.title, refused.detail, next_url)
    device_type = device_type_from_user_agent(request.headers.get("User-Agent", ""))
    session = do_start_session(study, participant_id, country, language, device_type)
    return redirect(page_for_state(session))


@require_http_methods(["GET", "POST"])
@participant_view
def consent(request: HttpRequest, session: ParticipantSession) -> HttpResponse:
    if session.state != State.STARTED:
        return redirect(page_for_state(session))
    if request.method == "POST":
        decision = request.POST.get("decision")
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
def check_frame(request: HttpRequest, session: ParticipantSession) -> JsonResponse:
    """One camera frame of the face check (JPEG body, measured camera fps in the query)."""
    if not session.is_capturing:
        return JsonResponse({"error": "session_closed", "next": page_for_state(session)}, status=409)
    body = request.body
    if not body or len(body) > MAX_CHECK_FRAME_BYTES or not body.startswith(b"\xff\xd8\xff"):
        return JsonResponse({"error": "not_jpeg"}, status=400)
    try:
        camera_fps = float(request.GET.get("fps", "0"))
    except ValueError:
        return JsonResponse({"error": "bad_fps"}, status=400)
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


@require_POST
@participant_view
def check_attempt_failed(request: HttpRequest, session: ParticipantSession) -> JsonResponse:
    if not session.is_capturing or session.checks_passed_at is not None:
        return JsonResponse({"failed": session.has_ended, "next": page_for_state(session)})
    try:
        problems = [str(code)[:30] for code in json.loads(request.body or b"{}").get("problems", [])][:10]
    except (ValueError, AttributeError):
        problems = []
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
def ad_video(request: HttpRequest, session: ParticipantSession, ad_id: int) -> FileResponse:
    """Ad videos are served only to a session of their own study that is viewing, never from a public path."""
    if not session.is_capturing or ad_id not in session.ad_sequence:
        raise Http404
    ad = get_object_or_404(session.study.ads, pk=ad_id)
    return FileResponse(ad.video.open("rb"), content_type=video_content_type(ad.video.name))


def video_content_type(name: str) -> str:
    extension = name.rsplit(".", 1)[-1].lower()
    return {"webm": "video/webm", "ogv": "video/ogg"}.get(extension, "video/mp4")


@require_POST
@participant_view
def finish(request: HttpRequest, session: ParticipantSession) -> HttpResponse:
    do_finish_viewing(session)
    return redirect(page_for_state(session))


@require_GET
@participant_view
def outcome(request: HttpRequest, session: ParticipantSession) -> JsonResponse:
    """Polled by the end page while the last readings are stored and the session is validated."""
    session = session_outcome(session)
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
    session = session_outcome(session)
    next_url = session_redirect_url(session)
    context = {
        "session": session,
        "next_url": next_url,
        "outcome_url": reverse("participant-outcome", args=[session.token]),
        "messages": feedback_messages(),
    }
    return render(request, "participant/end.html", context)
