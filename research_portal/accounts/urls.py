from django.urls import path

from research_portal.accounts import views

app_name = "accounts"

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("team/", views.team, name="team"),
    path("team/<int:organization_id>/", views.team, name="team-of"),
    path("members/<int:membership_id>/remove/", views.remove_member, name="remove-member"),
    path("invite/<str:token>/", views.accept_invitation, name="accept-invitation"),
]
