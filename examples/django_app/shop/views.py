"""Views: who is signed in and what is in the cart; adding to it; login and logout.

Each answer names the worker process that served it (``pid``).
"""

import os

from django.contrib.auth import authenticate, login, logout
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST


def state(request: HttpRequest) -> JsonResponse:
    """The visitor's user and cart, as this worker sees them."""
    user = request.user.get_username() or None
    return JsonResponse({"pid": os.getpid(), "user": user, "cart": request.session.get("cart", [])})


def home(request: HttpRequest) -> JsonResponse:
    """Reading the session stores nothing: a visitor who adds nothing gets no cookie."""
    return state(request)


@require_POST
def add_to_cart(request: HttpRequest) -> JsonResponse:
    """Add ``item`` to the cart (a list changed in place is saved too)."""
    request.session.setdefault("cart", []).append(request.POST["item"])
    return state(request)


@require_POST
def sign_in(request: HttpRequest) -> JsonResponse:
    """Django's own login: the session gets a new id, bound to the user; the cart stays."""
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return JsonResponse({"error": "wrong username or password"}, status=403)
    login(request, user)
    return state(request)


@require_POST
def sign_out(request: HttpRequest) -> JsonResponse:
    """Django's own logout: the session ends on every worker and server."""
    logout(request)
    return state(request)
