from django.urls import path

from research_portal.capture import views

urlpatterns = [
    path("s/<str:public_id>/", views.study_entry, name="study-entry"),
    path("p/<str:token>/consent/", views.consent, name="participant-consent"),
    path("p/<str:token>/check/", views.check, name="participant-check"),
    path("p/<str:token>/check/frame", views.camera_check_frame, name="participant-check-frame"),
    path(
        "p/<str:token>/check/attempt-failed",
        views.camera_check_attempt_failed,
        name="participant-check-attempt-failed",
    ),
    path("p/<str:token>/watch/", views.watch, name="participant-watch"),
    path("p/<str:token>/ads/<int:ad_id>/video", views.ad_video, name="participant-ad-video"),
    path("p/<str:token>/finish/", views.finish, name="participant-finish"),
    path("p/<str:token>/outcome", views.outcome, name="participant-outcome"),
    path("p/<str:token>/end/", views.end, name="participant-end"),
]
