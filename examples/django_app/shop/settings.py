"""The example shop's settings: Django's auth, with sessions on pooled_sessions.

``SHOP_SESSIONS`` names the store (a path or a ``redis://`` URL), ``SHOP_DB`` the SQLite
file of the users.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SHOP_SECRET_KEY", "an-example-key-not-for-production")
DEBUG = os.environ.get("SHOP_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes"]
# A JSON API driven with curl; a site with forms adds django.middleware.csrf.CsrfViewMiddleware.
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SHOP_DB", BASE_DIR / "db.sqlite3"),
    }
}
USE_TZ = True

SESSION_ENGINE = "pooled_sessions.integrations.django"
POOLED_SESSIONS = {
    "backend": os.environ.get("SHOP_SESSIONS", str(BASE_DIR / "sessions.json")),
    "expire_minutes": 30,
}
