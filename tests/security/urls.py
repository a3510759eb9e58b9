from django.urls import include, path


def broken(request):
    raise RuntimeError("secret internal detail: password=hunter2")


urlpatterns = [path("broken/", broken), path("", include("research_portal.urls"))]
