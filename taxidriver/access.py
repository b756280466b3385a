"""Roles and who may call what, read from the contracts.

Role names come from the `taxidriver.auth.v1.Role` enum (ROLE_READER -> "reader"),
and each public method's least role from its `(taxidriver.options.v1.access)`
option: the protos are the one definition, and the gateway, the registry's
users command and the CLI all read it from here.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from taxidriver.auth.v1 import auth_service_pb2
from taxidriver.options.v1 import access_pb2

_PREFIX = "ROLE_"

# "reader" -> ROLE_READER, ... in the enum's order (each role includes the ones before it).
ROLES: dict[str, int] = {
    name.removeprefix(_PREFIX).lower(): number
    for name, number in auth_service_pb2.Role.items()
    if number != auth_service_pb2.ROLE_UNSPECIFIED
}
ROLE_NAMES: tuple[str, ...] = tuple(ROLES)


class AccessNotDeclared(RuntimeError):
    """A public method carries no `(taxidriver.options.v1.access)` option (or no least_role)."""


def role_name(role: int) -> str:
    """ "reader", "trainer", "admin"; "none" for ROLE_UNSPECIFIED or a number this build does not know."""
    for name, number in ROLES.items():
        if number == role:
            return name
    return "none"


def method_path(method: MethodDescriptor) -> str:
    """The path a call names on the wire: /package.Service/Method."""
    return f"/{method.containing_service.full_name}/{method.name}"


def declared_access(method: MethodDescriptor) -> access_pb2.Access | None:
    """The method's access option, or None when the method declares none."""
    options = method.GetOptions()
    if not options.HasExtension(access_pb2.access):
        return None
    return options.Extensions[access_pb2.access]


def least_roles(services: Iterable[ServiceDescriptor]) -> dict[str, int]:
    """Full method path -> the least role allowed to call it, from the protos.

    Refuses (AccessNotDeclared, naming every offending method) when a method has no
    access option or leaves least_role unspecified: there is no default role.
    """
    table: dict[str, int] = {}
    missing: list[str] = []
    for service in services:
        for method in service.methods:
            access = declared_access(method)
            if access is None or access.least_role == auth_service_pb2.ROLE_UNSPECIFIED:
                missing.append(method.full_name)
            else:
                table[method_path(method)] = access.least_role
    if missing:
        raise AccessNotDeclared(
            "public methods without a least role: "
            + ", ".join(missing)
            + "; declare `option (taxidriver.options.v1.access) = {least_role: ROLE_...};` on each"
            " (protos/taxidriver/options/v1/access.proto)"
        )
    return table
