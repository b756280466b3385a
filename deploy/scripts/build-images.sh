#!/usr/bin/env bash
# Build the six images (registry, trainer, tuner, gateway, web, postgres) from a staged context.
# The context mirrors the repository's paths but holds only what images need (no .venv,
# .data, .git, generated code, caches), so the Dockerfiles also work from the repo root
# with a .dockerignore. Python wheels come from deploy/.wheelhouse (make wheelhouse).
# Env: DOCKER (client), BASE_IMAGE, TAG, IMAGE_PREFIX, SERVICES.
set -euo pipefail
cd "$(dirname "$0")/../.."
DOCKER=${DOCKER:-docker}
BASE_IMAGE=${BASE_IMAGE:-taxidriver/base:bookworm}
TAG=${TAG:-dev}
PREFIX=${IMAGE_PREFIX:-taxidriver}
SERVICES=${SERVICES:-postgres registry trainer tuner gateway web}
CTX=deploy/.context

ls deploy/.wheelhouse/*.whl >/dev/null 2>&1 || { echo "build-images: deploy/.wheelhouse is empty (make wheelhouse)" >&2; exit 1; }
# The Python services share deploy/python/Dockerfile (one target each): their package and requirements.
package_of() { case "$1" in registry) echo registry_service ;; trainer) echo trainer_service ;; tuner) echo tuner_service ;; *) echo "$1" ;; esac; }
requirements_of() { case "$1" in trainer) echo deploy/requirements.runtime.txt ;; *) echo "deploy/requirements.$1.txt" ;; esac; }
for service in $SERVICES; do
  [ "$service" = postgres ] && continue
  pkg=$(package_of "$service")
  [ -f "$pkg/__main__.py" ] || { echo "build-images: $pkg/__main__.py missing; nothing to package yet" >&2; exit 1; }
done

rm -rf "$CTX"
mkdir -p "$CTX/deploy/scripts" "$CTX/deploy/postgres"
packages=()
for pkg in registry_service trainer_service tuner_service gateway web; do [ -d "$pkg" ] && packages+=("$pkg"); done
rsync -a --exclude '__pycache__' --exclude '*.pyc' \
  --exclude '/taxidriver/registry' --exclude '/taxidriver/trainer' --exclude '/taxidriver/ingest' --exclude '/taxidriver/tuner' \
  protos taxidriver "${packages[@]}" "$CTX/"
cp deploy/requirements.*.txt "$CTX/deploy/"
cp deploy/scripts/grpc_health_probe.py deploy/scripts/import_check.py "$CTX/deploy/scripts/"
cp deploy/postgres/entrypoint.sh "$CTX/deploy/postgres/"
# Hard links: the wheelhouse is large and read-only here.
cp -al deploy/.wheelhouse "$CTX/deploy/.wheelhouse" 2>/dev/null || cp -a deploy/.wheelhouse "$CTX/deploy/.wheelhouse"

for service in $SERVICES; do
  echo "build-images: $PREFIX/$service:$TAG (base $BASE_IMAGE)"
  if [ "$service" = postgres ]; then
    args=(--file deploy/postgres/Dockerfile)
  else
    args=(--file deploy/python/Dockerfile --target "$service"
      --build-arg PACKAGE="$(package_of "$service")" --build-arg REQUIREMENTS="$(requirements_of "$service")")
  fi
  DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-1} $DOCKER build --quiet \
    --build-arg BASE_IMAGE="$BASE_IMAGE" "${args[@]}" \
    --tag "$PREFIX/$service:$TAG" "$CTX"
done
$DOCKER image ls "$PREFIX/*"
