"""Gateway start-up: forwarding handlers, health mirror, reflection of public services only."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2

from gateway.auth import AuthInterceptor, KeyAuthenticator
from gateway.forwarding import Upstream, forwarding_handler, refusing_handler
from gateway.required import RequiredFieldsInterceptor
from gateway.settings import GatewaySettings
from gateway.upstream_health import HealthMirror
from taxidriver.access import least_roles
from taxidriver.config import SettingsError
from taxidriver.ingest.v1 import ingest_service_pb2
from taxidriver.internal_auth import token_metadata
from taxidriver.registry.v1 import registry_service_pb2
from taxidriver.server import RunningServer, ServiceBinding, create_server
from taxidriver.trainer.v1 import trainer_service_pb2
from taxidriver.tuner.v1 import tuner_service_pb2

log = logging.getLogger(__name__)

TRAINER_SERVICE = trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"]
REGISTRY_SERVICE = registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"]
TUNER_SERVICE = tuner_service_pb2.DESCRIPTOR.services_by_name["TunerService"]
INGEST_SERVICE = ingest_service_pb2.DESCRIPTOR.services_by_name["IngestService"]
# What the gateway serves: each needs an access option on every method (taxidriver/access.py).
PUBLIC_SERVICES = (TRAINER_SERVICE, REGISTRY_SERVICE, TUNER_SERVICE)
INGEST_REFUSAL = f"{INGEST_SERVICE.full_name} is internal to the cluster and not routed by the gateway"


@dataclass(kw_only=True)
class GatewayApp:
    running: RunningServer
    trainer: Upstream
    registry: Upstream
    tuner: Upstream
    mirror: HealthMirror
    authenticator: KeyAuthenticator | None = None
    # What stop() gives in-flight calls by default (GATEWAY_SHUTDOWN_GRACE).
    shutdown_grace: float = 0.0

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace: float | None = None) -> None:
        """Drain in-flight calls (they still need the upstream channels), then close them."""
        await self.running.health.enter_graceful_shutdown()
        await self.running.server.stop(self.shutdown_grace if grace is None else grace)
        await self.close()

    async def close(self) -> None:
        await self.mirror.stop()
        await self.trainer.close()
        await self.registry.close()
        await self.tuner.close()
        if self.authenticator is not None:
            await self.authenticator.close()


def tls_credentials(settings: GatewaySettings) -> grpc.ServerCredentials | None:
    """Server credentials from the PEM files, read once at start-up (a Secret mounted as files)."""
    if not settings.tls_cert_file:
        return None
    try:
        key = Path(settings.tls_key_file).read_bytes()
        chain = Path(settings.tls_cert_file).read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read the gateway's TLS certificate or key: {exc}") from exc
    return grpc.ssl_server_credentials([(key, chain)])


async def start_gateway(
    settings: GatewaySettings, *, public_services: Sequence[ServiceDescriptor] = PUBLIC_SERVICES
) -> GatewayApp:
    """Serve the public services; `public_services` are those whose access the gateway enforces.

    Raises AccessNotDeclared, naming the methods, when a public method declares no
    least role, whether or not keys are required: no method is ever open by default.
    With keys required, a path outside `public_services` is refused (UNIMPLEMENTED).
    """
    roles = least_roles(public_services)
    extra = token_metadata(settings.internal_token)
    trainer = Upstream(
        name="trainer", service=TRAINER_SERVICE.full_name, targets=settings.trainer_targets, extra_metadata=extra
    )
    registry = Upstream(
        name="registry", service=REGISTRY_SERVICE.full_name, targets=(settings.registry_target,), extra_metadata=extra
    )

    tuner = Upstream(
        name="tuner", service=TUNER_SERVICE.full_name, targets=(settings.tuner_target,), extra_metadata=extra
    )

    authenticator: KeyAuthenticator | None = None
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.auth_required:
        authenticator = KeyAuthenticator(
            settings.registry_target, ttl=settings.auth_cache_seconds, internal_token=settings.internal_token
        )
        authenticator.start()
        interceptors.append(AuthInterceptor(authenticator, roles))
    # After authentication: an unknown caller learns nothing about a request's shape.
    interceptors.append(RequiredFieldsInterceptor(public_services))
    credentials = tls_credentials(settings)

    def add(handler: grpc.GenericRpcHandler) -> Callable[[grpc.aio.Server], None]:
        return lambda server: server.add_generic_rpc_handlers((handler,))

    running = await create_server(
        address=settings.address,
        services=[
            ServiceBinding(name=TRAINER_SERVICE.full_name, register=add(forwarding_handler(TRAINER_SERVICE, trainer))),
            ServiceBinding(
                name=REGISTRY_SERVICE.full_name, register=add(forwarding_handler(REGISTRY_SERVICE, registry))
            ),
            ServiceBinding(name=TUNER_SERVICE.full_name, register=add(forwarding_handler(TUNER_SERVICE, tuner))),
            ServiceBinding(
                name=INGEST_SERVICE.full_name,
                register=add(refusing_handler(INGEST_SERVICE, INGEST_REFUSAL)),
                reflect=False,
            ),
        ],
        # Upstream statuses pass through untouched; there is no domain error to map here.
        error_mapping=False,
        serving=False,
        interceptors=interceptors,
        credentials=credentials,
    )
    # The gateway itself is alive; each public service follows its upstream.
    await running.health.set("", health_pb2.HealthCheckResponse.SERVING)
    mirror = HealthMirror(running.health, [trainer, registry, tuner], retry_max=settings.health_retry_max)
    await mirror.start()
    log.info(
        "gateway on port %d (%s, %s): trainer -> %s, registry -> %s, tuner -> %s",
        running.port,
        "TLS" if credentials else "plaintext",
        "API keys required" if authenticator else "no authentication",
        ",".join(settings.trainer_targets),
        settings.registry_target,
        settings.tuner_target,
    )
    return GatewayApp(
        running=running,
        trainer=trainer,
        registry=registry,
        tuner=tuner,
        mirror=mirror,
        authenticator=authenticator,
        shutdown_grace=settings.shutdown_grace,
    )
