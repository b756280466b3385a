# Containers and Kubernetes (included by the top-level Makefile). See docs/deploy.md.
#   make deploy-validate  offline: kustomize render, kubernetes-validate --strict, hadolint, yamllint
#   make docker-engine    a private dockerd (Debian's docker.io) when no engine runs
#   make wheelhouse       runtime wheels for the images, downloaded on the host
#   make base-image       Debian bookworm + python3.11 via debootstrap, imported as taxidriver/base:bookworm
#   make images           the six images (registry, trainer, tuner, gateway, web, dev postgres), tag $(TAG)
#   make up / make down   the stack on one machine (compose when available, else docker run)
#   make smoke            build, start, train once through the gateway container, tear down
.PHONY: deploy-validate docker-engine docker-engine-stop wheelhouse base-image images up down smoke

TAG ?= dev
K8S_VERSION ?= 1.37.0
BASE_IMAGE ?= taxidriver/base:bookworm
# The engine: $DOCKER_HOST if set, else the system socket if present, else the private one.
ifeq ($(origin DOCKER_HOST),undefined)
DOCKER_HOST := $(if $(wildcard /var/run/docker.sock),unix:///var/run/docker.sock,unix:///tmp/td-docker.sock)
endif
DOCKER ?= $(or $(wildcard /usr/bin/docker),docker)
# On the private engine, targets that need an engine start it first (idempotent).
ENGINE_DEP := $(if $(filter unix:///tmp/td-docker.sock,$(DOCKER_HOST)),docker-engine,)
export DOCKER_HOST DOCKER TAG BASE_IMAGE K8S_VERSION
# `docker compose` (v2), else docker-compose (1.29+), else plain docker run (deploy/scripts/stack.sh).
COMPOSE_CMD = $(shell if $(DOCKER) compose version >/dev/null 2>&1; then echo "$(DOCKER) compose"; \
	elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; fi)
COMPOSE_ARGS = -p taxidriver -f deploy/compose.yaml

deploy-validate: $(STAMPS)/venv
	BIN=$(BIN) deploy/scripts/validate.sh

docker-engine:
	deploy/scripts/engine.sh start

docker-engine-stop:
	deploy/scripts/engine.sh stop

deploy/.wheelhouse/.complete: deploy/requirements.runtime.txt deploy/requirements.build.txt deploy/requirements.postgres.txt deploy/requirements.web.txt deploy/requirements.tuner.txt
	@mkdir -p deploy/.wheelhouse
	$(PY) -m pip wheel --quiet --quiet --disable-pip-version-check --wheel-dir deploy/.wheelhouse \
		-r deploy/requirements.runtime.txt -r deploy/requirements.build.txt -r deploy/requirements.postgres.txt \
		-r deploy/requirements.web.txt -r deploy/requirements.tuner.txt
	@touch $@

wheelhouse: $(STAMPS)/venv deploy/.wheelhouse/.complete

base-image: $(ENGINE_DEP)
	deploy/scripts/base-image.sh $(BASE_IMAGE)

images: wheelhouse base-image
	deploy/scripts/build-images.sh

up: images
	@if [ -n "$(COMPOSE_CMD)" ]; then \
		echo "$(COMPOSE_CMD) $(COMPOSE_ARGS) up -d"; $(COMPOSE_CMD) $(COMPOSE_ARGS) up -d; \
		for i in $$(seq 1 120); do $(PY) deploy/scripts/grpc_health_probe.py --timeout 2 \
			127.0.0.1:$${GATEWAY_PORT:-50051} >/dev/null 2>&1 && break; sleep 1; done; \
		$(PY) deploy/scripts/grpc_health_probe.py 127.0.0.1:$${GATEWAY_PORT:-50051}; \
	else deploy/scripts/stack.sh up; fi

down: $(ENGINE_DEP)
	@if [ -n "$(COMPOSE_CMD)" ]; then $(COMPOSE_CMD) $(COMPOSE_ARGS) down; \
	else deploy/scripts/stack.sh down; fi

smoke: $(STAMPS)/protos
	deploy/scripts/smoke.sh
