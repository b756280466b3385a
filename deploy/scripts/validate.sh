#!/usr/bin/env bash
# Offline checks of everything under deploy/ (make deploy-validate; tests/test_deploy_manifests.py):
# kustomize renders base and dev, kubernetes-validate --strict accepts every object against the
# Kubernetes version given (bundled schemas, no cluster), hadolint passes on each Dockerfile,
# yamllint on the YAML, and the shell scripts parse.
# Env: BIN (tools folder, default .venv/bin), K8S_VERSION (default 1.37.0), RENDER_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
K8S_VERSION=${K8S_VERSION:-1.37.0}
if [ -z "${RENDER_DIR:-}" ]; then
  RENDER_DIR=$(mktemp -d)
  trap 'rm -rf "$RENDER_DIR"' EXIT
fi
mkdir -p "$RENDER_DIR"

for kustomization in deploy/k8s/base deploy/k8s/overlays/*; do
  name=$(echo "$kustomization" | sed 's|deploy/k8s/||; s|/|-|g')
  out="$RENDER_DIR/$name.yaml"
  "$BIN/kubectl" kustomize "$kustomization" > "$out"
  objects=$(grep -c '^kind:' "$out" || true)
  "$BIN/kubernetes-validate" --strict --quiet --kubernetes-version "$K8S_VERSION" "$out"
  echo "deploy-validate: $kustomization renders $objects objects, all valid for Kubernetes $K8S_VERSION (strict)"
done

for job in deploy/k8s/jobs/*.yaml; do
  "$BIN/kubernetes-validate" --strict --quiet --kubernetes-version "$K8S_VERSION" "$job"
  echo "deploy-validate: $job valid for Kubernetes $K8S_VERSION (strict)"
done

for dockerfile in deploy/*/Dockerfile; do
  "$BIN/hadolint" "$dockerfile"
  echo "deploy-validate: hadolint $dockerfile ok"
done

"$BIN/yamllint" --strict -c deploy/.yamllint deploy/
echo "deploy-validate: yamllint deploy/ ok"

for script in deploy/scripts/*.sh; do bash -n "$script"; done
sh -n deploy/postgres/entrypoint.sh
echo "deploy-validate: shell scripts parse"
