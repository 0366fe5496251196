"""The shop's pages."""

from django.urls import path

from shop import views

urlpatterns = [
    path("", views.home),
    path("cart", views.add_to_cart),
    path("login", views.sign_in),
    path("logout", views.sign_out),
]
