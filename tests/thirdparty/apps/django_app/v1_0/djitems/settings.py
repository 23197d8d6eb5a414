"""Settings: the SQLite file comes from $ITEMS_DB (`python -m djitems serve --db PATH` sets it)."""

import os

from djitems import VERSION

APP_VERSION = VERSION
SECRET_KEY = "backout-thirdparty-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
INSTALLED_APPS = ["djitems"]
MIDDLEWARE = []
ROOT_URLCONF = "djitems.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("ITEMS_DB", "items.sqlite")}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"  # also the process TZ, so log timestamps match gunicorn's
# Errors (with their traceback) and migrate's progress go to stderr even with DEBUG off.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
                           "datefmt": "%Y-%m-%d %H:%M:%S %z"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                "djitems": {"handlers": ["stderr"], "level": "INFO", "propagate": False}},
}
