# The two commands a newcomer needs: `make run` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The training extra (torch, CPU build): the tests cover the training code; `make run` never needs it.
TRAIN_STAMP := $(VENV)/.train-installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
# Links printed by the seed and shown in admin point at the server `make run` starts.
export SITE_URL ?= http://$(HOST):$(PORT)
# Tests use the machine's real services; override to point elsewhere.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: setup run worker test test-hostile lint bench bench-analytics train fetch-detector services browser load \
	docker-smoke

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

$(TRAIN_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[train]"
	touch $(TRAIN_STAMP)

# Optional: fetch the YuNet detector (sha256-checked); offline it says so and Haar is used.
fetch-detector: setup
	$(PY) -m inference fetch-detector

# Embedded mode by default (SQLite, in-process analysis). Set DATABASE_URL and REDIS_URL for the
# production path; then a Celery worker (with the periodic retention job) is started beside the web server.
run: setup fetch-detector
	$(PY) manage.py migrate --noinput
	$(PY) manage.py collectstatic --noinput -v 0
	$(PY) manage.py seed_demo
	@if [ -n "$$REDIS_URL" ]; then \
		$(VENV)/bin/celery -A research_portal worker --beat --schedule=var/celerybeat-schedule \
			--loglevel=info --concurrency=$${WORKER_CONCURRENCY:-1} & \
		worker=$$!; trap 'kill $$worker' EXIT INT TERM; \
		$(VENV)/bin/daphne -v 0 -b $(HOST) -p $(PORT) research_portal.asgi:application; \
	else \
		exec $(VENV)/bin/daphne -v 0 -b $(HOST) -p $(PORT) research_portal.asgi:application; \
	fi

worker: setup
	$(VENV)/bin/celery -A research_portal worker --loglevel=info

# Start the local Postgres/Redis if they are installed but down (no-op when they run).
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || (command -v pg_ctlcluster >/dev/null && \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start) || true
	@(command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1) || \
		(command -v redis-server >/dev/null && redis-server --daemonize yes --bind 127.0.0.1 --port 6379 \
		--save "" --appendonly no) || true

# Debian's chromium and firefox-esr for the browser tests (never `playwright install`).
browser:
	@(command -v chromium >/dev/null && command -v firefox-esr >/dev/null) || \
		(apt-get update -q && apt-get install -y -q chromium chromium-driver firefox-esr) \
		|| echo "chromium/firefox-esr could not be installed; browser tests will fail under CI"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# Under CI the Docker deployment is tested too (docker-smoke, after the suite) unless PORTAL_SKIP_DOCKER=1.
# The suite runs in TEST_WORKERS pytest-xdist processes, a test file each at a time (most tests wait on
# servers and workers they started: on 2 cores, 2 workers); each has its own test database and Redis
# database (tests/support/parallel.py). TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2
test: setup $(TRAIN_STAMP) services browser lint
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile
	@if [ "$$CI" = "true" ] && [ "$${PORTAL_SKIP_DOCKER:-0}" != "1" ]; then \
		$(MAKE) --no-print-directory docker-smoke; fi

# The hostile-input walk with every value (docs/security.md, L11); `make test` walks a sample of each kind.
test-hostile: setup services
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		PORTAL_HOSTILE_WALK=full $(PY) -m pytest tests/security/test_no_5xx.py

# docker/ built and run: its own dockerd (no bridge, firewall or forwarding changes), web + 2 workers + beat +
# Postgres + Redis on 127.0.0.1:58000/55432/56379, the load generator through them, then all torn down
# (tests/docker_smoke; about 1 minute warm, 5 cold; logs in var/docker-smoke/). Needs root.
docker-smoke: setup
	$(PY) -m tests.docker_smoke

bench: setup
	$(PY) -m inference bench

# Analyst dashboards at 10 million frames against the local Postgres (about 4 minutes; drops its database).
# BENCH_ANALYTICS_ARGS="--ads 50": the same frames over 50 ads, for the scorecard's norm (docs/analytics.md).
bench-analytics: setup services
	$(PY) -m tests.analytics_bench $(BENCH_ANALYTICS_ARGS)

# Load test of the capture path (docs/scaling.md): daphne + Celery workers on the local Postgres and Redis,
# 20 participants x 30 s at 5 fps (about a minute); numbers in var/load/last.json. LOAD_ARGS adds options.
load: setup services
	$(PY) -m tests.load --json var/load/last.json $(LOAD_ARGS)

# The current recipe (real faces: inference/training/README.md); about 10 minutes on one GPU, many hours on a 2-core CPU. A GPU machine that
# does not see ../shared: inference/training/gpu_run.py. Bump export.version in the config for a new model.
TRAIN_CONFIG ?= inference/training/configs/gpu_realfaces.json
train: $(TRAIN_STAMP)
	$(PY) -m inference.training --config $(TRAIN_CONFIG)
