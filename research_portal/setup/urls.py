from django.urls import path

from research_portal.setup import views

app_name = "studies"

urlpatterns = [
    path("", views.study_list, name="list"),
    path("new/", views.study_create, name="create"),
    path("<int:study_id>/", views.study_setup, name="setup"),
    path("<int:study_id>/ads/", views.ad_upload, name="ad-upload"),
    path("<int:study_id>/ads/<int:ad_id>/move/<str:direction>/", views.ad_move, name="ad-move"),
    path("<int:study_id>/ads/<int:ad_id>/remove/", views.ad_remove, name="ad-remove"),
    path("<int:study_id>/ads/<int:ad_id>/video", views.ad_video, name="ad-video"),
    path("<int:study_id>/launch/", views.launch, name="launch"),
    path("<int:study_id>/status/<str:action>/", views.change_status, name="status"),
    path("<int:study_id>/preview/", views.preview, name="preview"),
    path("<int:study_id>/delete-participant/", views.delete_participant, name="delete-participant"),
    path("<int:study_id>/delete/", views.delete_study, name="delete"),
]
