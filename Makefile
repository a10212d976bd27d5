# The two set-up commands of the README: `make run` and `make test`.
# Both create the virtual environment and install what they need first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: run test test-tools install install-dev vendor migrate lint mock bench-storage

run: install vendor .env
	$(PY) -m scripts.serve

# First start: .env from .env-sample with a random JWT_SECRET and SECRETS_KEY (the sample's
# values are public and refused outside the tests). An existing .env is never touched.
.env:
	@secret=$$($(PYTHON) -c "import secrets; print(secrets.token_urlsafe(48))") && \
	  key=$$($(PYTHON) -c "import secrets; print(secrets.token_urlsafe(32))") && \
	  sed -e "s|^JWT_SECRET=.*|JWT_SECRET=$$secret|" -e "s|^SECRETS_KEY=.*|SECRETS_KEY=$$key|" \
	    .env-sample > .env.tmp && mv .env.tmp .env && \
	  echo "created .env from .env-sample (with a random JWT_SECRET and SECRETS_KEY)"

# The whole suite: the Debian tools it runs (Chromium, docker-compose, Redis, MariaDB, npm),
# the services started if down, then every test (SKIP_MISSING_TOOLS=1 to skip, not install).
test: test-tools install-dev vendor
	$(PY) -m pytest $(PYTEST_ARGS)

test-tools:
	@[ "$$SKIP_MISSING_TOOLS" = 1 ] || bash scripts/install_test_tools.sh
	bash scripts/start_services.sh

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Re-install only when pyproject.toml changes.
$(VENV)/.stamp-runtime: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[dev]'
	touch $@ $(VENV)/.stamp-runtime

install: $(VENV)/.stamp-runtime
install-dev: $(VENV)/.stamp-dev

# JavaScript libraries of the chat page, pinned in package-lock.json, copied into web/static/vendor.
vendor: web/static/vendor/.stamp

web/static/vendor/.stamp: package-lock.json package.json scripts/vendor_js.py | $(PY)
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	$(PY) -m scripts.vendor_js
	touch $@

migrate: install .env
	$(PY) -m storage.migrate upgrade

mock: install
	$(PY) -m scripts.mock_upstream --port 8001

lint: install-dev
	$(VENV)/bin/ruff check core storage chat_actors web scripts tests
	$(VENV)/bin/mypy core storage chat_actors web

bench-storage: install-dev
	$(PY) -m scripts.bench_storage
