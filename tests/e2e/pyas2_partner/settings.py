"""Django settings for django-pyas2 as raccord's AS2 test partner (runs in its own venv).

Paths come from the environment the test harness sets. ``PYAS2["DATA_DIR"]`` is left unset on
purpose: an absolute DATA_DIR trips Django's path check and django-pyas2 then answers HTTP 400
*after* storing the message (one test keeps that behaviour to see how raccord treats it:
``PARTNER_DATA_DIR_TRAP=1``).
"""

import os
import runpy

# The same compatibility hook raccord uses (oscrypto on two-digit OpenSSL patch numbers),
# loaded by path: raccord itself is not installed in this virtual environment.
runpy.run_path(os.environ["RACCORD_COMPAT"])["install"]()

WORK = os.environ["PARTNER_WORK"]
SECRET_KEY = "raccord-test-partner"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "pyas2",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.request",
            ]
        },
    }
]
ROOT_URLCONF = "urls"
MEDIA_ROOT = WORK
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(WORK, "partner.sqlite3"),
        # WAL, or concurrent requests fail with "database is locked".
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20},
    }
}
PYAS2 = {"MDN_URL": os.environ.get("PARTNER_MDN_URL", "http://127.0.0.1:1/")}
if os.environ.get("PARTNER_DATA_DIR_TRAP"):
    PYAS2["DATA_DIR"] = WORK
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"file": {"class": "logging.FileHandler", "filename": os.path.join(WORK, "log")}},
    "root": {"handlers": ["file"], "level": "INFO"},
}
