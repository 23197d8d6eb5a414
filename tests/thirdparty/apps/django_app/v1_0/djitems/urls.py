from django.urls import path

from djitems import views

urlpatterns = [path("health", views.health), path("items", views.items)]
