#!/usr/bin/env bash
# The compose stack with plain `docker run` on a user network, for engines without a compose
# tool (and for the smoke test, which must not depend on one). Mirrors deploy/compose.yaml:
# postgres -> migrate (must exit 0) -> registry (healthy) -> trainer (healthy) -> tuner (healthy)
# -> gateway (healthy) -> web (healthy: its /readyz sees the gateway).
#   deploy/scripts/stack.sh up|down|status|task COMMAND [ARGS...]
# Env: DOCKER, PROJECT (container/network prefix, default taxidriver), TAG (default dev),
#      GATEWAY_PORT (loopback port, default 50051), WEB_PORT (default 8000), POSTGRES_PASSWORD, TRAINER_WORKERS,
#      KEEP_VOLUME=1 keeps the database volume on down.
set -euo pipefail
DOCKER=${DOCKER:-docker}
PROJECT=${PROJECT:-taxidriver}
TAG=${TAG:-dev}
PREFIX=${IMAGE_PREFIX:-taxidriver}
GATEWAY_PORT=${GATEWAY_PORT:-50051}
WEB_PORT=${WEB_PORT:-8000}
WEB_SESSION_SECRET=${WEB_SESSION_SECRET:-taxidriver-dev-web-session-secret}
POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-taxidriver-dev}
INTERNAL_TOKEN=${INTERNAL_TOKEN:-taxidriver-dev-internal-token}
TRAINER_WORKERS=${TRAINER_WORKERS:-2}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-120}
NET="$PROJECT"
VOLUME="$PROJECT-pgdata"
DATABASE_URL="postgresql://taxidriver:$POSTGRES_PASSWORD@postgres:5432/taxidriver"
HARDENING=(--read-only --tmpfs /tmp:rw,size=512m --cap-drop ALL --security-opt no-new-privileges:true --init)

run() { # run NAME IMAGE [docker run args...] -- [command args...]
  local name=$1 image=$2
  shift 2
  $DOCKER run --detach --name "$PROJECT-$name" --hostname "$name" --network "$NET" --network-alias "$name" \
    --label "taxidriver.project=$PROJECT" --restart unless-stopped "${HARDENING[@]}" "$@" >/dev/null
  echo "stack: started $PROJECT-$name ($image)"
}

wait_healthy() {
  local name="$PROJECT-$1" deadline=$((SECONDS + HEALTH_TIMEOUT)) state
  while :; do
    state=$($DOCKER inspect --format '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$name")
    case "$state" in
      running/healthy) echo "stack: $name healthy after ${SECONDS}s"; return 0 ;;
      exited/* | dead/* | */unhealthy)
        echo "stack: $name is $state" >&2; $DOCKER logs --tail 50 "$name" >&2; return 1 ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "stack: $name not healthy after ${HEALTH_TIMEOUT}s ($state)" >&2; $DOCKER logs --tail 50 "$name" >&2; return 1
    fi
    sleep 1
  done
}

up() {
  $DOCKER network inspect "$NET" >/dev/null 2>&1 || $DOCKER network create --label "taxidriver.project=$PROJECT" "$NET" >/dev/null
  $DOCKER volume inspect "$VOLUME" >/dev/null 2>&1 || $DOCKER volume create "$VOLUME" >/dev/null
  run postgres "$PREFIX/postgres:$TAG" -e POSTGRES_PASSWORD="$POSTGRES_PASSWORD" \
    -v "$VOLUME:/var/lib/postgresql/data" "$PREFIX/postgres:$TAG"
  wait_healthy postgres
  echo "stack: migrating"
  $DOCKER run --rm --name "$PROJECT-migrate" --network "$NET" --label "taxidriver.project=$PROJECT" "${HARDENING[@]}" \
    -e DATABASE_URL="$DATABASE_URL" --entrypoint python "$PREFIX/registry:$TAG" -m registry_service.migrate
  run registry "$PREFIX/registry:$TAG" -e DATABASE_URL="$DATABASE_URL" -e REGISTRY_ADDRESS=0.0.0.0:50053 \
    -e INTERNAL_TOKEN="$INTERNAL_TOKEN" \
    --health-cmd "grpc-health-probe --service taxidriver.registry.v1.RegistryService 127.0.0.1:50053" \
    --health-interval 2s --health-retries 30 "$PREFIX/registry:$TAG"
  wait_healthy registry
  run trainer "$PREFIX/trainer:$TAG" -e TRAINER_ADDRESS=0.0.0.0:50052 -e REGISTRY_TARGET=registry:50053 \
    -e TRAINER_WORKERS="$TRAINER_WORKERS" -e INTERNAL_TOKEN="$INTERNAL_TOKEN" --shm-size 256m \
    --health-cmd "grpc-health-probe --service taxidriver.trainer.v1.TrainerService 127.0.0.1:50052" \
    --health-interval 2s --health-retries 30 "$PREFIX/trainer:$TAG"
  wait_healthy trainer
  run tuner "$PREFIX/tuner:$TAG" -e TUNER_ADDRESS=0.0.0.0:50054 -e TRAINER_TARGETS=trainer:50052 \
    -e REGISTRY_TARGET=registry:50053 -e INTERNAL_TOKEN="$INTERNAL_TOKEN" \
    --health-cmd "grpc-health-probe --service taxidriver.tuner.v1.TunerService 127.0.0.1:50054" \
    --health-interval 2s --health-retries 30 "$PREFIX/tuner:$TAG"
  wait_healthy tuner
  run gateway "$PREFIX/gateway:$TAG" -e GATEWAY_ADDRESS=0.0.0.0:50051 -e TRAINER_TARGETS=trainer:50052 \
    -e REGISTRY_TARGET=registry:50053 -e TUNER_TARGET=tuner:50054 -e INTERNAL_TOKEN="$INTERNAL_TOKEN" \
    -p "127.0.0.1:$GATEWAY_PORT:50051" \
    --health-cmd "grpc-health-probe 127.0.0.1:50051" --health-interval 2s --health-retries 30 "$PREFIX/gateway:$TAG"
  wait_healthy gateway
  run web "$PREFIX/web:$TAG" -e WEB_HOST=0.0.0.0 -e WEB_PORT=8000 -e GATEWAY_TARGET=gateway:50051 \
    -e WEB_SESSION_SECRET="$WEB_SESSION_SECRET" -p "127.0.0.1:$WEB_PORT:8000" \
    --health-cmd "python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)\"" \
    --health-interval 2s --health-retries 30 "$PREFIX/web:$TAG"
  wait_healthy web
  echo "stack: up; gateway at 127.0.0.1:$GATEWAY_PORT, web at http://127.0.0.1:$WEB_PORT"
}

down() {
  local ids
  ids=$($DOCKER ps --all --quiet --filter "label=taxidriver.project=$PROJECT")
  if [ -n "$ids" ]; then
    # SIGTERM first (graceful drain), then removal.
    # shellcheck disable=SC2086
    $DOCKER stop --time 30 $ids >/dev/null
    # shellcheck disable=SC2086
    $DOCKER rm --force --volumes $ids >/dev/null
  fi
  $DOCKER network rm "$NET" >/dev/null 2>&1 || true
  [ -n "${KEEP_VOLUME:-}" ] || $DOCKER volume rm "$VOLUME" >/dev/null 2>&1 || true
  echo "stack: $PROJECT down"
}

# A one-off command in the registry image on the stack's network, like the Kubernetes Job and
# CronJobs (migrate, purge, backup): `stack.sh task python -m registry_service.purge`.
task() {
  [ $# -ge 1 ] || { echo "usage: $0 task COMMAND [ARGS...]" >&2; return 2; }
  $DOCKER run --rm --network "$NET" --label "taxidriver.project=$PROJECT" "${HARDENING[@]}" \
    --tmpfs /backups:rw,mode=1777 -e DATABASE_URL="$DATABASE_URL" --entrypoint "$1" "$PREFIX/registry:$TAG" "${@:2}"
}

status() { $DOCKER ps --all --filter "label=taxidriver.project=$PROJECT"; }

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  task) shift; task "$@" ;;
  *) echo "usage: $0 up|down|status|task COMMAND [ARGS...]" >&2; exit 2 ;;
esac
