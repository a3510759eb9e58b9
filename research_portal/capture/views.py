from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from research_portal.capture.models import ParticipantSession
from research_portal.capture.participation import (
    EntryRefused,
    check_entry,
    do_complete_session,
    do_decline,
    do_record_consent,
    do_start_session,
)
from research_portal.capture.routing import capture_socket_path
from research_portal.studies.models import Study

State = ParticipantSession.State


def session_or_404(token: str) -> ParticipantSession:
    return get_object_or_404(ParticipantSession.objects.select_related("study"), token=token)


def page_for_state(session: ParticipantSession) -> str:
    """Where a participant belongs now; every page redirects there if reached out of order."""
    name = {
        State.STARTED: "participant-consent",
        State.CONSENTED: "participant-watch",
        State.VIEWING: "participant-watch",
    }.get(session.state, "participant-thanks")
    return reverse(name, args=[session.token])


def message_page(request: HttpRequest, status: int, title: str, detail: str) -> HttpResponse:
    return render(request, "participant/message.html", {"title": title, "detail": detail}, status=status)


@require_GET
def study_entry(request: HttpRequest, public_id: str) -> HttpResponse:
    study = Study.objects.filter(public_id=public_id).first()
    if study is None:
        return message_page(request, 404, "Study not found", "This study link is not valid.")
    try:
        participant_id, country = check_entry(study, request.GET.get("pid", ""), request.GET.get("c", ""))
    except EntryRefused as refused:
        return message_page(request, refused.status, refused.title, refused.detail)
    session = do_start_session(study, participant_id, country)
    return redirect(page_for_state(session))


@require_http_methods(["GET", "POST"])
def consent(request: HttpRequest, token: str) -> HttpResponse:
    session = session_or_404(token)
    if session.state != State.STARTED:
        return redirect(page_for_state(session))
    if request.method == "POST":
        if request.POST.get("decision") == "accept":
            do_record_consent(session)
        elif request.POST.get("decision") == "decline":
            do_decline(session)
        else:
            return message_page(request, 400, "Please choose", "Please accept or decline to continue.")
        return redirect(page_for_state(session))
    return render(request, "participant/consent.html", {"session": session, "study": session.study})


@require_GET
def watch(request: HttpRequest, token: str) -> HttpResponse:
    session = session_or_404(token)
    if not session.is_capturing:
        return redirect(page_for_state(session))
    ads = list(session.study.ads.all())
    if not ads:
        return message_page(request, 503, "Nothing to watch yet", "This study has no video yet.")
    capture_config = {
        "socketPath": capture_socket_path(session.token),
        "fps": session.study.capture_fps,
        "finishUrl": reverse("participant-finish", args=[session.token]),
        "ads": [
            {
                "id": ad.pk,
                "title": ad.title,
                "src": reverse("participant-ad-video", args=[session.token, ad.pk]),
            }
            for ad in ads
        ],
    }
    return render(request, "participant/watch.html", {"session": session, "capture_config": capture_config})


@require_GET
def ad_video(request: HttpRequest, token: str, ad_id: int) -> FileResponse:
    """Ad videos are served only to a session of their own study, never from a public path."""
    session = session_or_404(token)
    if session.state in (State.COMPLETED, State.DECLINED):
        raise Http404
    ad = get_object_or_404(session.study.ads, pk=ad_id)
    return FileResponse(ad.video.open("rb"), content_type=video_content_type(ad.video.name))


def video_content_type(name: str) -> str:
    extension = name.rsplit(".", 1)[-1].lower()
    return {"webm": "video/webm", "ogv": "video/ogg"}.get(extension, "video/mp4")


@require_POST
def finish(request: HttpRequest, token: str) -> HttpResponse:
    session = session_or_404(token)
    do_complete_session(session)
    return redirect(page_for_state(session))


@require_GET
def thanks(request: HttpRequest, token: str) -> HttpResponse:
    session = session_or_404(token)
    if session.is_capturing or session.state == State.STARTED:
        return redirect(page_for_state(session))
    return render(request, "participant/thanks.html", {"session": session})
