"""Roles and who may call what, read from the contracts.

Role names come from the `taxidriver.options.v1.Role` enum (ROLE_READER -> "reader"),
and each public method's least role from its `(taxidriver.options.v1.access)`
option (plus, for methods acting on one run or sweep, its ownership rule): the protos are
the one definition, and the gateway, the registry (AuthService, the users
command) and the trainer read it from here. The CLI spells no role name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from taxidriver.errors import ServiceError
from taxidriver.options.v1 import access_pb2

_PREFIX = "ROLE_"

# "reader" -> ROLE_READER, ... in the enum's order (each role includes the ones before it).
ROLES: dict[str, int] = {
    name.removeprefix(_PREFIX).lower(): number
    for name, number in access_pb2.Role.items()
    if number != access_pb2.ROLE_UNSPECIFIED
}
ROLE_NAMES: tuple[str, ...] = tuple(ROLES)

# The authenticated caller, as the gateway forwards it upstream (it drops any a client sends).
# Internal ports believe these keys: only the gateway, and services relaying its calls, reach them.
CALLER_KEY = "x-caller"  # user id
CALLER_NAME_KEY = "x-caller-name"  # username: what runs, annotations and models record
CALLER_ROLE_KEY = "x-caller-role"  # role name
CALLER_KEYS = frozenset({CALLER_KEY, CALLER_NAME_KEY, CALLER_ROLE_KEY})


# The request fields that name the one resource an ownership rule is about: a run (its owner is
# Run.creator) or a sweep (Sweep.owner).
OWNED_FIELDS = frozenset({"run_id", "sweep_id"})


class AccessNotDeclared(RuntimeError):
    """A public method has no `(taxidriver.options.v1.access)` least_role, or a rule that cannot hold."""


def role_name(role: int) -> str:
    """The role's name (reader, trainer, admin); "none" for ROLE_UNSPECIFIED or an unknown number."""
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
    extension: Any = access_pb2.access
    if not options.HasExtension(extension):
        return None
    access: access_pb2.Access = options.Extensions[extension]
    return access


def least_roles(services: Iterable[ServiceDescriptor]) -> dict[str, int]:
    """Full method path -> the least role allowed to call it, from the protos.

    Refuses (AccessNotDeclared, naming every offending method) when a method has no
    access option or leaves least_role unspecified: there is no default role.
    """
    table: dict[str, int] = {}
    missing: list[str] = []
    malformed: list[str] = []
    for service in services:
        for method in service.methods:
            access = declared_access(method)
            if access is None or access.least_role == access_pb2.ROLE_UNSPECIFIED:
                missing.append(method.full_name)
                continue
            table[method_path(method)] = access.least_role
            if access.any_owner_role != access_pb2.ROLE_UNSPECIFIED:
                if access.any_owner_role <= access.least_role:
                    malformed.append(f"{method.full_name} (any_owner_role must be above least_role)")
                if not OWNED_FIELDS & set(method.input_type.fields_by_name):
                    malformed.append(
                        f"{method.full_name} (an ownership rule needs a run_id or a sweep_id in the request)"
                    )
    if missing:
        raise AccessNotDeclared(
            "public methods without a least role: "
            + ", ".join(missing)
            + "; declare `option (taxidriver.options.v1.access) = {least_role: ROLE_...};` on each"
            " (protos/taxidriver/options/v1/access.proto)"
        )
    if malformed:
        raise AccessNotDeclared("access options that cannot be enforced: " + ", ".join(malformed))
    return table


@dataclass(frozen=True, kw_only=True)
class Caller:
    """Who makes a call, as the gateway asserted it."""

    user_id: str
    username: str
    role: int

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((CALLER_KEY, self.user_id), (CALLER_NAME_KEY, self.username), (CALLER_ROLE_KEY, role_name(self.role)))


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def caller_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller | None:
    """The caller the gateway asserted, or None when the call carries none (authentication off)."""
    values = {key: _text(value) for key, value in metadata or () if key in CALLER_KEYS}
    if not values.get(CALLER_NAME_KEY) or values.get(CALLER_ROLE_KEY) not in ROLES:
        return None
    return Caller(
        user_id=values.get(CALLER_KEY, "")[:100],
        username=values[CALLER_NAME_KEY][:100],
        role=ROLES[values[CALLER_ROLE_KEY]],
    )


def caller_of(context: grpc.aio.ServicerContext) -> Caller | None:
    return caller_from_metadata(context.invocation_metadata())


def caller_name(context: grpc.aio.ServicerContext) -> str | None:
    """The username to record as a row's creator/author; None (unknown) without authentication."""
    caller = caller_of(context)
    return caller.username if caller is not None else None


def any_owner_role(method: MethodDescriptor) -> int:
    """The role that may act on anyone's run or sweep; ROLE_UNSPECIFIED when the method has no ownership rule."""
    access = declared_access(method)
    return access.any_owner_role if access is not None else access_pb2.ROLE_UNSPECIFIED


def needs_owner(method: MethodDescriptor, caller: Caller | None) -> bool:
    """Whether `caller` may call `method` only on runs (or sweeps) it created.

    No caller (authentication off: a trusted setup) means no rule, as for roles.
    """
    threshold = any_owner_role(method)
    return caller is not None and threshold != access_pb2.ROLE_UNSPECIFIED and caller.role < threshold


def check_owner(
    method: MethodDescriptor, caller: Caller | None, *, creator: str, run_id: str = "", sweep_id: str = ""
) -> None:
    """PERMISSION_DENIED when the method's ownership rule keeps `caller` off this run (NOT_RUN_OWNER)
    or, given a `sweep_id`, off this sweep (NOT_SWEEP_OWNER); `creator` is the run's creator or the
    sweep's owner.

    A run or sweep whose owner is unknown (recorded before owners were, or started without
    authentication) belongs to nobody: only callers allowed on any may act on it.
    """
    if not needs_owner(method, caller) or caller is None or (creator and creator == caller.username):
        return
    kind, name = ("sweep", sweep_id) if sweep_id else ("run", run_id)
    message = (
        f"{method.name}: {kind} {name} belongs to {creator or 'an unknown user'}; "
        f"a {role_name(caller.role)} may act only on its own {kind}s "
        f"(the {role_name(any_owner_role(method))} role may act on any {kind})"
    )
    if sweep_id:
        raise ServiceError(
            code=grpc.StatusCode.PERMISSION_DENIED,
            message=message,
            reason="NOT_SWEEP_OWNER",
            metadata={"method": method.name, "sweep_id": sweep_id, "owner": creator},
        )
    raise ServiceError(
        code=grpc.StatusCode.PERMISSION_DENIED,
        message=message,
        reason="NOT_RUN_OWNER",
        metadata={"method": method.name, "run_id": run_id, "creator": creator},
    )
