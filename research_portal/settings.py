"""One settings module for every deployment, driven by environment variables.

Nothing set          -> embedded mode: SQLite in var/, in-memory channel layer, inference in a thread pool.
DATABASE_URL set     -> Postgres (postgres://user:pass@host:port/name).
REDIS_URL set        -> channels_redis layer, Celery with Redis broker, frames analysed by separate
                        `celery -A research_portal worker` processes.
"""

import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PORTAL_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def database_from_url(url: str) -> dict:
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"DATABASE_URL must be postgres://..., got scheme {parsed.scheme!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
        "CONN_HEALTH_CHECKS": True,
    }


def embedded_secret_key() -> str:
    """A per-installation key kept in var/, so `make run` needs no configuration."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


DEBUG = env_bool("PORTAL_DEBUG", False)
# PORTAL_HTTPS=1 marks a production deployment served over HTTPS (see docs/security.md): it turns on secure
# cookies, HSTS and the HTTPS redirect, and requires every secret to come from the environment.
PORTAL_HTTPS = env_bool("PORTAL_HTTPS", False)
if PORTAL_HTTPS and not os.environ.get("SECRET_KEY"):
    raise ImproperlyConfigured("PORTAL_HTTPS is set: SECRET_KEY must come from the environment.")
if PORTAL_HTTPS and DEBUG:
    raise ImproperlyConfigured("PORTAL_DEBUG must be off in a production (PORTAL_HTTPS) deployment.")
SECRET_KEY = os.environ.get("SECRET_KEY") or embedded_secret_key()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "research_portal.accounts",
    "research_portal.studies",
    "research_portal.capture",
    "research_portal.analytics",
    "research_portal.privacy",
    "research_portal.ops",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "research_portal.accounts.middleware.AdminForStaffOnlyMiddleware",
    # 400 for admin parameters Django admin would pass to the database unchecked (NUL, selections).
    "research_portal.accounts.middleware.AdminParametersMiddleware",
    # 429 for too many failed sign-ins, raised by the authentication backend on every sign-in path.
    "research_portal.accounts.middleware.LoginThrottleMiddleware",
]
# Django's backend behind the sign-in limiter (accounts/backends.py): the portal's and admin's sign-in forms
# and anything else that calls authenticate() are limited alike.
AUTHENTICATION_BACKENDS = ["research_portal.accounts.backends.ThrottledModelBackend"]

ROOT_URLCONF = "research_portal.urls"
ASGI_APPLICATION = "research_portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "portal.sqlite3",
            # The embedded server writes results from a thread pool; wait for the lock instead of failing.
            "OPTIONS": {"timeout": 20},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    # redis-py 8 times out socket reads after 5 s by default, exactly channels_redis's blocking-pop time:
    # without a longer timeout every idle consumer crashes. 30 s still notices a dead server.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Rate-limit counters (and nothing else yet) live in the cache: Redis when configured, shared by every
# server process; per process memory otherwise.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# "count/seconds" (docs/security.md, "Limits").
RATE_LIMITS = {
    # Failed sign-ins (admin, portal, invitation links) per username and client address; successes are free.
    "login": os.environ.get("RATE_LIMIT_LOGIN", "10/300"),
    # Failed sign-ins per client address whatever the username: loose, for an office behind one NAT.
    "login_address": os.environ.get("RATE_LIMIT_LOGIN_ADDRESS", "100/300"),
    # New participant entries per client address and study link.
    "entry": os.environ.get("RATE_LIMIT_ENTRY", "30/60"),
    # Check frames run the model in the web process; the page sends 2 per second.
    "check_frame": os.environ.get("RATE_LIMIT_CHECK_FRAME", "40/10"),
}
# Behind N reverse proxies the client is the N-th address from the right of X-Forwarded-For; 0 = REMOTE_ADDR.
PORTAL_TRUSTED_PROXY_HOPS = int(os.environ.get("PORTAL_TRUSTED_PROXY_HOPS", "0"))

# Embedded mode analyses frame batches in this many threads of the web process (research_portal/deployment.py
# decides the mode: production, with REDIS_URL, analyses them in Celery workers).
CAPTURE_THREAD_WORKERS = int(os.environ.get("CAPTURE_THREAD_WORKERS", "1"))

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json", "msgpack"]
CELERY_TASK_SERIALIZER = "json"
# A batch is only removed from the queue once stored, so a killed worker's batch is redelivered.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Each pool process loads the model at start (capture/tasks.load_the_model: 0.4 s on an idle core); the
# default 4 s before a starting process counts as failed is too tight on a loaded machine.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 30.0
CELERY_TASK_DEFAULT_QUEUE = "celery"  # its length in Redis is the queue depth flow control watches
# A batch whose worker died without acking (kill -9, lost host) is handed to another worker after this long.
# Batches take well under a second, so a minute never redelivers a batch that is still running.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT_S", "60")),
    # How often idle workers look for such batches (kombu's default is 60 s).
    "unacked_restore_interval": int(os.environ.get("CELERY_RESTORE_INTERVAL_S", "5")),
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes the database connection before and after every task unless this is set, so
# each frame batch paid a new Postgres connection (a backend fork, auth, Django's session setup). Workers
# keep theirs (closed after every 2 x this many tasks); research_portal.celery drops a broken or obsolete
# one (CONN_MAX_AGE, CONN_HEALTH_CHECKS) before each task, as Django does before each request.
CELERY_DB_REUSE_MAX = int(os.environ.get("CELERY_DB_REUSE_MAX", "1000"))
# Periodic work, never done by a page view. Production: `celery -A research_portal beat` runs this schedule
# (`make run` starts its worker with --beat, docker/compose.yaml a beat service). Embedded mode: a thread of
# the web process runs the EMBEDDED_PERIODIC_JOBS at the same intervals (research_portal/ops/periodic.py);
# retention among them (no cron needed; `manage.py apply_retention` runs it by hand).
SESSION_VALIDATION_INTERVAL_S = float(os.environ.get("SESSION_VALIDATION_INTERVAL_S", "5"))
ROLLUP_RECONCILE_INTERVAL_S = float(os.environ.get("ROLLUP_RECONCILE_INTERVAL_S", "60"))
CELERY_BEAT_SCHEDULE = {
    "apply-retention": {
        "task": "research_portal.capture.tasks.apply_retention_task",
        "schedule": float(os.environ.get("RETENTION_INTERVAL_S", str(6 * 3600))),
    },
    # Sessions whose viewing ended are validated, within 30 s (capture/validation.py, MAX_VALIDATION_WAIT)
    # plus this interval of their end, whether or not their end page is open; abandoned ones are ended.
    "validate-sessions": {
        "task": "research_portal.capture.tasks.validate_due_sessions_task",
        "schedule": SESSION_VALIDATION_INTERVAL_S,
        # A run still queued when the next one is due is dropped: the next one does the same work.
        "options": {"expires": SESSION_VALIDATION_INTERVAL_S},
    },
    # Safety net for the rollups that dashboards read: re-file sessions whose attributes changed without a
    # signal, refresh keys a killed worker left journaled (~28 ms at 10 million frames, make bench-analytics).
    "reconcile-rollups": {
        "task": "research_portal.analytics.tasks.reconcile_rollups_task",
        "schedule": ROLLUP_RECONCILE_INTERVAL_S,
        "options": {"expires": ROLLUP_RECONCILE_INTERVAL_S},
    },
}
# The schedule's entries that embedded mode runs in its web process; its thread starts with the process's
# first request. Off: run them some other way (tests call them, tests/conftest.py).
EMBEDDED_PERIODIC_JOBS = ("apply-retention", "validate-sessions", "reconcile-rollups")
EMBEDDED_PERIODIC_LOOP = env_bool("PORTAL_EMBEDDED_PERIODIC_LOOP", True)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
# Participant pages are translated into these; each session keeps the language chosen at entry.
LANGUAGES = [
    ("en", "English"),
    ("de", "Deutsch"),
    ("fr", "Français"),
    ("es", "Español"),
    ("pt", "Português"),
    ("ja", "日本語"),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every request without it
# Ad videos are uploaded here; they are served only through views that check the session or staff user.
MEDIA_ROOT = Path(os.environ.get("PORTAL_MEDIA_ROOT", VAR_DIR / "media"))
MEDIA_URL = "/media/"
AD_MAX_UPLOAD_BYTES = int(os.environ.get("AD_MAX_UPLOAD_BYTES", str(200 * 1024 * 1024)))
# Request-body limits per route, enforced before a body is read (research_portal/ops/body_limits.py, also
# inside daphne): anonymous forms (sign-in, invitations, participant pages) and any path not listed get
# the form limit; signed-in set-up, team and admin forms the larger one; the ad-upload routes
# AD_MAX_UPLOAD_BYTES (+1 MiB of form), for an admin of the study (staff in Django admin) only.
BODY_LIMIT_FORM_BYTES = int(os.environ.get("BODY_LIMIT_FORM_BYTES", str(16 * 1024)))
BODY_LIMIT_SIGNED_IN_BYTES = int(os.environ.get("BODY_LIMIT_SIGNED_IN_BYTES", str(1024 * 1024)))
# How long daphne drains (and drops) what a refused client still sends before it closes the connection.
BODY_LIMIT_LINGER_S = float(os.environ.get("BODY_LIMIT_LINGER_S", "2"))
# Django's own limits behind those: form data outside uploaded files (400 past it), and the size up to which
# a body or uploaded file is kept in memory rather than in a temporary file.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DATA_UPLOAD_MAX_MEMORY_SIZE", str(1024 * 1024)))
FILE_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("FILE_UPLOAD_MAX_MEMORY_SIZE", str(5 * 1024 * 1024)))
FILE_UPLOAD_HANDLERS = [
    "research_portal.studies.uploads.SizeLimitedUploadHandler",  # stops oversized uploads mid-stream
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedStaticFilesStorage"
    },
}

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/studies/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# ---- security ----------------------------------------------------------------------------------------------
# Database sessions, looked up only for keys of the form Django issues (a NUL in a cookie was a 500).
SESSION_ENGINE = "research_portal.accounts.session_store"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = int(os.environ.get("SESSION_COOKIE_AGE", str(12 * 3600)))
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Probes call these over plain HTTP on the pod's port: a redirect would pass as "healthy" without a check.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
if PORTAL_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    # Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients).
    if env_bool("PORTAL_BEHIND_PROXY", False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Inference is configured by PORTAL_SHARED_DIR, PORTAL_MODEL_PATH and PORTAL_FACE_DETECTOR, which only
# inference/resources.py reads (no Django there): the product, the tests and the tools resolve them alike.

# Rollups of a session are refreshed at most this often while its frames arrive (analytics/debounce.py):
# live dashboards lag by up to this much, and the refresh cost per frame falls with it. A refresh costs the
# analysing process 15 ms of CPU for 50 new frames, 20 ms for 150: 0.3 ms per frame at 10 s (5 fps),
# 0.13 ms at 30 s; `python -m tests.load` measured 3.9 against 3.45 ms of server CPU per frame.
ANALYTICS_ROLLUP_INTERVAL_S = float(os.environ.get("ANALYTICS_ROLLUP_INTERVAL_S", "30"))
# Live dashboard sockets re-check their user's access before a push when the last check is older than this
# (and at once when a membership, user, session, study or ad changes: accounts/signals.py).
ANALYTICS_LIVE_ACCESS_RECHECK_S = float(os.environ.get("ANALYTICS_LIVE_ACCESS_RECHECK_S", "5"))
# A live dashboard group gets at most one push per this many seconds (analytics/live.py).
ANALYTICS_LIVE_INTERVAL_S = float(os.environ.get("ANALYTICS_LIVE_INTERVAL_S", "1.0"))

# Capture limits (see docs/architecture.md, "Wire protocol").
CAPTURE_MAX_FRAME_BYTES = int(os.environ.get("CAPTURE_MAX_FRAME_BYTES", str(256 * 1024)))
# Each web process batches the frames of all its sockets into one task (never a task per frame): a batch
# leaves when it holds CAPTURE_FLUSH_MAX_FRAMES or its oldest frame has waited CAPTURE_FLUSH_INTERVAL_S.
CAPTURE_FLUSH_INTERVAL_S = float(os.environ.get("CAPTURE_FLUSH_INTERVAL_S", "0.25"))
CAPTURE_FLUSH_MAX_FRAMES = int(os.environ.get("CAPTURE_FLUSH_MAX_FRAMES", "32"))
# Frames a web process holds while the broker is unreachable; past this it refuses new ones (not acked).
CAPTURE_MAX_BUFFERED_FRAMES = int(os.environ.get("CAPTURE_MAX_BUFFERED_FRAMES", "3000"))
# Backpressure (docs/scaling.md): the queue's backlog in seconds of worker time steers the capture rate.
CAPTURE_FLOW_INTERVAL_S = float(os.environ.get("CAPTURE_FLOW_INTERVAL_S", "1.0"))
CAPTURE_BACKLOG_HIGH_S = float(os.environ.get("CAPTURE_BACKLOG_HIGH_S", "2.0"))
CAPTURE_BACKLOG_LOW_S = float(os.environ.get("CAPTURE_BACKLOG_LOW_S", "0.5"))
CAPTURE_MIN_FPS_SCALE = float(os.environ.get("CAPTURE_MIN_FPS_SCALE", "0.2"))  # 5 fps studies: 1 fps
# Clients resend a frame unacked this long (told in `hello`). While the queue holds more than half of it,
# flow control asks for twice the backlog instead (`throttle`), up to the maximum: a resend of a frame still
# queued only costs upload and a lookup (measured at 160 participants on 2 cores: 1364 resends in 25 s).
CAPTURE_RESEND_AFTER_S = float(os.environ.get("CAPTURE_RESEND_AFTER_S", "5"))
CAPTURE_MAX_RESEND_AFTER_S = float(os.environ.get("CAPTURE_MAX_RESEND_AFTER_S", "30"))
# Scrapers read /metrics with `Authorization: Bearer <this>`; staff users may read it signed in.
PORTAL_METRICS_TOKEN = os.environ.get("PORTAL_METRICS_TOKEN", "")
# Hard bound on queued frames (~40 KB each in Redis): past it new frames are refused until it drains.
CAPTURE_MAX_QUEUE_FRAMES = int(os.environ.get("CAPTURE_MAX_QUEUE_FRAMES", "5000"))
# Per socket (capture/socket_limits.py SocketLimits), so that one flooding client never slows the others:
# frames a burst of CAPTURE_FRAME_BURST, then CAPTURE_FRAME_RATE_FACTOR x the study's rate (times the
# flow-control scale; room for resends beside the captured frames); page events (each a SessionEvent row) a
# burst, then CAPTURE_EVENTS_PER_S. Beyond: `rate_limited`, and repeated refusals close the socket (4008).
CAPTURE_FRAME_BURST = int(os.environ.get("CAPTURE_FRAME_BURST", "30"))
CAPTURE_FRAME_RATE_FACTOR = float(os.environ.get("CAPTURE_FRAME_RATE_FACTOR", "3"))
CAPTURE_EVENT_BURST = int(os.environ.get("CAPTURE_EVENT_BURST", "20"))
CAPTURE_EVENTS_PER_S = float(os.environ.get("CAPTURE_EVENTS_PER_S", "0.5"))
# Socket connects ("count/seconds") per session token and per client address, counted in the cache (shared
# by every web process with Redis); beyond: `too_many_connections`, close 4029. Raise the per-address one
# for load tests that connect everyone from one address (docs/scaling.md).
CAPTURE_CONNECTS_PER_TOKEN = os.environ.get("CAPTURE_CONNECTS_PER_TOKEN", "20/60")
CAPTURE_CONNECTS_PER_IP = os.environ.get("CAPTURE_CONNECTS_PER_IP", "1000/60")
# /readyz fails (check `capture`) once a frame has waited this long in a web process's batcher.
CAPTURE_STUCK_AFTER_S = float(os.environ.get("CAPTURE_STUCK_AFTER_S", "10"))

# LOG_FORMAT=json (default): one JSON object per line; plain: for a terminal. Both write hash_token(token)
# where a participant token would be (research_portal/log_format.py).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "json").strip().lower()
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, got {LOG_FORMAT!r}.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "research_portal.log_format.JsonFormatter"},
        "plain": {
            "()": "research_portal.log_format.PlainFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "WARNING"}},
}
WHITENOISE_USE_FINDERS = True  # serve static/ without a collectstatic step (tests, embedded runs)
