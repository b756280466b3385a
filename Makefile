# Taxi Driver: every target sets itself up (venv, pinned deps, generated code).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMPS := .stamps
PROTOS := $(shell find protos -name '*.proto')
BENCH ?=
PYTEST_ARGS ?=

.PHONY: help venv protos test run bench lint backup restore clean up down descriptor web-vendor docs preset-sweeps

help:
	@echo "make run     - embedded PostgreSQL (unless DATABASE_URL), the services, web on http://127.0.0.1:8000, a first training"
	@echo "make test    - the test suite (embedded PostgreSQL unless DATABASE_URL is set)"
	@echo "make bench   - benchmarks under bench/ (BENCH=<stem> for one; BENCH_QUICK=1: tiny sizes, as in CI)"
	@echo "make preset-sweeps - the tuner's sweeps behind the optimized presets (PRESET_SWEEPS_SIZE=reduced: quick)"
	@echo "make lint    - buf lint, ruff, mypy"
	@echo "make protos  - regenerate Python code from protos/"
	@echo "make docs    - docs/configuration.md from the declared settings"
	@echo "make descriptor - $(DESCRIPTOR): FileDescriptorSet of the public API with its imports"
	@echo "make backup / make restore FILE=... - pg_dump / pg_restore of the registry database"

$(STAMPS)/venv: requirements.lock pyproject.toml
	@mkdir -p $(STAMPS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

venv: $(STAMPS)/venv

$(STAMPS)/protos: $(STAMPS)/venv $(PROTOS) protos/generate.py
	$(PY) protos/generate.py
	@touch $@

protos: $(STAMPS)/protos

# pytest exits 5 when it collected no test: that is an error here, never a pass.
test: $(STAMPS)/protos
	@test -x /usr/bin/chromium || echo "make test: /usr/bin/chromium is missing: the browser tests (tests/test_web_browser.py) will be SKIPPED (apt-get install chromium)" >&2
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no tests (exit 5)" >&2; fi; exit $$rc

run: $(STAMPS)/protos
	$(PY) -m taxidriver.devstack

docs: $(STAMPS)/venv
	$(PY) -m taxidriver.config_doc

bench: $(STAMPS)/protos
	$(PY) bench/run.py $(BENCH)

# The sweeps that chose the optimized presets, through the tuner, stored in the registry
# (bench/tuner_presets.py): against TAXI_DRIVER_GATEWAY when set, else a stack of its own on .data.
PRESET_SWEEPS_SIZE ?= full
PRESET_SWEEPS_ARGS ?=
preset-sweeps: $(STAMPS)/protos
	$(PY) bench/tuner_presets.py --size $(PRESET_SWEEPS_SIZE) $(PRESET_SWEEPS_ARGS)

$(STAMPS)/buf:
	@mkdir -p $(STAMPS)
	npm install --silent --no-audit --no-fund --prefix $(STAMPS)/node @bufbuild/buf@1.75.0
	@touch $@

# The public API as one self-contained FileDescriptorSet (imports and comments
# included) for clients that load contracts at run time (docs/clients.md).
DESCRIPTOR := build/taxidriver-public.binpb
PUBLIC_PROTOS := taxidriver/trainer/v1/trainer_service.proto taxidriver/registry/v1/registry_service.proto \
	taxidriver/tuner/v1/tuner_service.proto \
	taxidriver/reasons/v1/error_reason.proto \
	third_party/google/rpc/status.proto third_party/google/rpc/error_details.proto \
	third_party/grpc/health/v1/health.proto

descriptor: $(STAMPS)/buf
	@mkdir -p $(dir $(DESCRIPTOR))
	cd protos && ../$(STAMPS)/node/node_modules/.bin/buf build --as-file-descriptor-set \
		$(addprefix --path ,$(PUBLIC_PROTOS)) -o ../$(DESCRIPTOR)
	@echo "wrote $(DESCRIPTOR)"

lint: $(STAMPS)/protos $(STAMPS)/buf
	cd protos && ../$(STAMPS)/node/node_modules/.bin/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy taxidriver trainer_service registry_service gateway web tuner_service
	$(BIN)/mypy -p bench

backup: $(STAMPS)/protos
	$(PY) -m registry_service.backup dump $(if $(FILE),--file $(FILE),)

restore: $(STAMPS)/protos
	@test -n "$(FILE)" || { echo "usage: make restore FILE=backup.dump"; exit 2; }
	$(PY) -m registry_service.backup restore --file $(FILE)

clean:
	rm -rf $(STAMPS) $(VENV) taxidriver/registry taxidriver/trainer taxidriver/ingest taxidriver/auth taxidriver/options taxidriver/reasons taxidriver/api_descriptors.binpb
-include deploy/deploy.mk

# The dashboard's and /docs' browser assets (committed; see web/static/vendor/README.md).
UPLOT_VERSION := 1.6.32
SWAGGER_UI_VERSION := 5.35.0
web-vendor:
	rm -rf $(STAMPS)/vendor && mkdir -p $(STAMPS)/vendor
	cd $(STAMPS)/vendor && npm pack --silent uplot@$(UPLOT_VERSION) swagger-ui-dist@$(SWAGGER_UI_VERSION)
	cd $(STAMPS)/vendor && for f in *.tgz; do mkdir -p "$${f%.tgz}" && tar xzf "$$f" -C "$${f%.tgz}"; done
	cp $(STAMPS)/vendor/uplot-$(UPLOT_VERSION)/package/dist/uPlot.iife.min.js $(STAMPS)/vendor/uplot-$(UPLOT_VERSION)/package/dist/uPlot.min.css $(STAMPS)/vendor/uplot-$(UPLOT_VERSION)/package/LICENSE web/static/vendor/uplot/
	cd $(STAMPS)/vendor/swagger-ui-dist-$(SWAGGER_UI_VERSION)/package && cp swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt $(CURDIR)/web/static/vendor/swagger-ui/
	cd web/static/vendor && sha256sum -c SHA256SUMS
