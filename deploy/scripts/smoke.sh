#!/usr/bin/env bash
# Container smoke test (make smoke): a real engine, the real images, the real stack, one
# real training and a tiny sweep (through the tuner container) through the gateway container,
# then everything torn down. It fails loudly
# when the engine cannot start; it never passes without having run.
# Env: as engine.sh / build-images.sh / stack.sh; KEEP_ENGINE=1 leaves a dockerd we started.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export DOCKER_HOST=${DOCKER_HOST:-unix:///tmp/td-docker.sock}
export PROJECT=${SMOKE_PROJECT:-taxidriver-smoke}
export TAG=${TAG:-dev}
GATEWAY_PORT=${GATEWAY_PORT:-$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export GATEWAY_PORT
WEB_PORT=${WEB_PORT:-$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export WEB_PORT
t0=$SECONDS
phase() { echo "smoke: $1 = $(( SECONDS - $2 )) s"; }

# engine.sh works on the engine named by DOCKER_HOST: socket /x/y.sock, state in /x/y.
export ENGINE_SOCKET=$DOCKER_HOST
engine_dir=${DOCKER_HOST#unix://}
export ENGINE_DIR=${engine_dir%.sock}
started_engine=""
if ! deploy/scripts/engine.sh ping; then
  [[ "$DOCKER_HOST" == unix://* ]] || { echo "smoke: FAILED: engine at $DOCKER_HOST does not answer" >&2; exit 1; }
  deploy/scripts/engine.sh start || { echo "smoke: FAILED: could not start a Docker engine" >&2; exit 1; }
  started_engine=1
fi
DOCKER=$(command -v /usr/bin/docker || command -v docker)
export DOCKER
echo "smoke: engine $($DOCKER version --format '{{.Server.Version}}') at $DOCKER_HOST"

cleanup() {
  local rc=$?
  deploy/scripts/stack.sh down || true
  if [ -n "$started_engine" ] && [ -z "${KEEP_ENGINE:-}" ]; then
    deploy/scripts/engine.sh stop || true
  fi
  if [ $rc -eq 0 ]; then echo "smoke: PASSED in $(( SECONDS - t0 )) s"; else echo "smoke: FAILED (exit $rc)" >&2; fi
}
trap cleanup EXIT

t=$SECONDS
make --no-print-directory wheelhouse protos >/dev/null
deploy/scripts/base-image.sh
phase base_image_and_wheelhouse $t
t=$SECONDS
deploy/scripts/build-images.sh
phase build_images $t
for image in postgres registry trainer tuner gateway web; do
  echo "smoke: image $image = $($DOCKER image inspect --format '{{.Size}}' "taxidriver/$image:$TAG" | awk '{printf "%.0f", $1/1048576}') MiB"
done
deploy/scripts/stack.sh down >/dev/null 2>&1 || true
t=$SECONDS
deploy/scripts/stack.sh up
phase stack_up $t
t=$SECONDS
# The gateway wants an API key: a user created in the registry's database, as an operator would.
TAXI_DRIVER_API_KEY=$(deploy/scripts/stack.sh task python -m registry_service.users create smoke --role trainer | tail -n 1)
export TAXI_DRIVER_API_KEY
[ -n "$TAXI_DRIVER_API_KEY" ] || { echo "smoke: FAILED: no API key issued" >&2; exit 1; }
$PY deploy/scripts/smoke_client.py --target "127.0.0.1:$GATEWAY_PORT"
phase training $t
t=$SECONDS
$PY deploy/scripts/smoke_client.py --target "127.0.0.1:$GATEWAY_PORT" --sweep --owner smoke
phase sweep $t
# The web container: the seed's listing over HTTP/JSON with the key, and /docs, through it.
t=$SECONDS
listed=$(curl -fsS -H "Authorization: Bearer $TAXI_DRIVER_API_KEY" "http://127.0.0.1:$WEB_PORT/database/runs?limit=10")
$PY -c 'import json, sys; runs = json.loads(sys.argv[1])["runs"]; assert runs, "no run listed"; print(f"smoke: web lists {len(runs)} run(s)")' "$listed"
curl -fsS -o /dev/null "http://127.0.0.1:$WEB_PORT/docs"
curl -fsS -o /dev/null "http://127.0.0.1:$WEB_PORT/static/vendor/uplot/uPlot.iife.min.js"
phase web $t
# The CronJobs' commands, in the registry image under the same hardening (read-only root).
t=$SECONDS
deploy/scripts/stack.sh task /bin/sh -c \
  'python -m registry_service.backup dump --file /backups/smoke.dump && test -s /backups/smoke.dump \
   && echo "smoke: backup = $(wc -c < /backups/smoke.dump) bytes"'
deploy/scripts/stack.sh task python -m registry_service.purge --older-than-days 30
phase backup_and_purge $t
# Graceful drain: web and the gateway must exit 0 on SIGTERM.
t=$SECONDS
$DOCKER stop --time 30 "$PROJECT-web" >/dev/null
code=$($DOCKER inspect --format '{{.State.ExitCode}}' "$PROJECT-web")
[ "$code" = 0 ] || { echo "smoke: FAILED: web exited $code on SIGTERM" >&2; exit 1; }
$DOCKER stop --time 30 "$PROJECT-gateway" >/dev/null
code=$($DOCKER inspect --format '{{.State.ExitCode}}' "$PROJECT-gateway")
[ "$code" = 0 ] || { echo "smoke: FAILED: gateway exited $code on SIGTERM" >&2; exit 1; }
phase gateway_sigterm_drain $t
