from django.urls import path

from research_portal.analytics import views

app_name = "analytics"

urlpatterns = [
    path("", views.study_list, name="studies"),
    path("plotly.min.js", views.plotly_js, name="plotly-js"),
    path("studies/<int:study_id>/", views.study_overview, name="study"),
    path("studies/<int:study_id>/data.json", views.study_overview_data, name="study-data"),
    path("ads/<int:ad_id>/", views.ad_dashboard, name="ad"),
    path("ads/compare/", views.ad_comparison_page, name="compare"),
    path("ads/compare/data.json", views.ad_comparison_data, name="compare-data"),
    path("ads/compare/export/comparison.csv", views.ad_comparison_export, name="compare-export"),
    path(
        "ads/compare/export/comparison.parquet",
        views.ad_comparison_export,
        {"file_format": "parquet"},
        name="compare-export-parquet",
    ),
    path("ads/<int:ad_id>/data.json", views.ad_dashboard_data, name="ad-data"),
    path("studies/<int:study_id>/sessions/", views.session_list_page, name="sessions"),
    path("studies/<int:study_id>/sessions/<int:session_id>/", views.session_page, name="session"),
    path(
        "studies/<int:study_id>/sessions/<int:session_id>/export/frames.csv",
        views.session_export,
        {"file_format": "csv"},
        name="session-export",
    ),
    path(
        "studies/<int:study_id>/sessions/<int:session_id>/export/frames.parquet",
        views.session_export,
        {"file_format": "parquet"},
        name="session-export-parquet",
    ),
    path("ads/<int:ad_id>/export/<str:kind>.csv", views.ad_export, name="ad-export"),
    path(
        "ads/<int:ad_id>/export/<str:kind>.parquet",
        views.ad_export,
        {"file_format": "parquet"},
        name="ad-export-parquet",
    ),
    path("ads/<int:ad_id>/video", views.ad_video, name="ad-video"),
    path("ads/<int:ad_id>/report.pdf", views.ad_report, name="ad-report"),
]
