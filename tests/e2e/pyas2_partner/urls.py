from django.urls import include, path

urlpatterns = [path("pyas2/", include("pyas2.urls"))]
