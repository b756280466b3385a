"""The HTTP routes of the public API, read from the contracts.

Every route comes from a `google.api.http` rule: the annotations on the public
methods (and their `additional_bindings`), plus `protos/http_service.yaml` for
methods whose protos we do not own. Path templates follow google/api/http.proto:
literal segments, `*`, `**`, `{field.path}` or `{field=segments}` variables and an
optional `:verb`. Nothing here knows a particular route.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

# Importing the generated modules registers their descriptors in the default pool.
from grpc_health.v1 import health_pb2  # noqa: F401

from taxidriver.registry.v1 import registry_service_pb2
from taxidriver.trainer.v1 import trainer_service_pb2
from taxidriver.tuner.v1 import tuner_service_pb2

PUBLIC_SERVICES: tuple[ServiceDescriptor, ...] = (
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    trainer_service_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    tuner_service_pb2.DESCRIPTOR.services_by_name["TunerService"],
)

# The repository copy when run from a checkout; the packaged copy inside an image.
_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "protos" / "http_service.yaml",
    Path(__file__).resolve().parent / "http_service.yaml",
)

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_.]*)(?:=([^}]*))?\}")


class RuleError(ValueError):
    """An http rule that cannot be served (a contract mistake, found at start-up)."""


@dataclass(frozen=True)
class Segment:
    """One matcher of a path template: a literal, `*` (one segment) or `**` (the rest)."""

    literal: str | None = None
    wildcard: str = ""  # "*" or "**" when literal is None
    # The variable this segment belongs to, if any.
    variable: str | None = None


@dataclass(frozen=True)
class PathTemplate:
    text: str
    segments: tuple[Segment, ...]
    verb: str | None
    variables: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> PathTemplate:
        if not text.startswith("/"):
            raise RuleError(f"path template {text!r} must start with '/'")
        body, verb = text[1:], None
        # The verb is a ':' after the last variable and the last '/'.
        tail = body.rsplit("/", 1)[-1]
        if ":" in tail and "}" not in tail.split(":", 1)[1]:
            cut = body.rfind(":")
            body, verb = body[:cut], body[cut + 1 :]
        segments: list[Segment] = []
        variables: list[str] = []
        position = 0
        for match in _VARIABLE.finditer(body):
            segments.extend(_literal_segments(body[position : match.start()]))
            name, sub = match.group(1), match.group(2) or "*"
            variables.append(name)
            segments.extend(
                Segment(literal=part, variable=name)
                if part not in ("*", "**")
                else Segment(wildcard=part, variable=name)
                for part in sub.split("/")
            )
            position = match.end()
        segments.extend(_literal_segments(body[position:]))
        if any(s.wildcard == "**" for s in segments[:-1]):
            raise RuleError(f"path template {text!r}: '**' must be last")
        return PathTemplate(text=text, segments=tuple(segments), verb=verb, variables=tuple(variables))

    def match(self, path: str) -> dict[str, str] | None:
        """The variables' values if `path` (still percent-encoded) matches, else None."""
        from urllib.parse import unquote

        if not path.startswith("/"):
            return None
        body, verb = path[1:], None
        if self.verb is not None:
            if not body.endswith(":" + self.verb):
                return None
            body = body[: -len(self.verb) - 1]
        parts = body.split("/")
        values: dict[str, list[str]] = {}
        index = 0
        for segment in self.segments:
            if segment.wildcard == "**":
                rest = parts[index:]
                if segment.variable:
                    values.setdefault(segment.variable, []).extend(unquote(p) for p in rest)
                index = len(parts)
                break
            if index >= len(parts):
                return None
            part = parts[index]
            if segment.literal is not None:
                if part != segment.literal:
                    return None
            elif not part:
                return None
            if segment.variable:
                values.setdefault(segment.variable, []).append(unquote(part))
            index += 1
        if index != len(parts):
            return None
        del verb
        return {name: "/".join(items) for name, items in values.items()}

    @property
    def specificity(self) -> tuple[int, int, int]:
        """Routes are tried most specific first: more literals, a verb, fewer '**'."""
        literals = sum(1 for s in self.segments if s.literal is not None)
        return (literals, 1 if self.verb else 0, -sum(1 for s in self.segments if s.wildcard == "**"))


def _literal_segments(text: str) -> list[Segment]:
    return [
        Segment(literal=part) if part not in ("*", "**") else Segment(wildcard=part) for part in text.split("/") if part
    ]


@dataclass(frozen=True)
class QueryAlias:
    """A seed query parameter that is not a field of the request (http_service.yaml)."""

    name: str
    description: str
    field: str | None = None
    filter: str | None = None
    struct: str | None = None
    default: str | None = None


@dataclass(frozen=True)
class Route:
    http_method: str
    template: PathTemplate
    method: MethodDescriptor
    # "" (no body), "*" (the whole request) or a top-level field name.
    body: str
    # "" (the whole response) or a field of the response (bytes for downloads).
    response_body: str
    aliases: tuple[QueryAlias, ...] = field(default=())

    @property
    def full_method(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def client_streaming(self) -> bool:
        return bool(self.method.client_streaming)


def _http_method_and_path(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise RuleError(f"http rule of {rule.selector or 'a method'} has no pattern")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), getattr(rule, kind)


def _routes_of(
    method: MethodDescriptor, rule: http_pb2.HttpRule, aliases: tuple[QueryAlias, ...], top: bool = True
) -> list[Route]:
    http_method, path = _http_method_and_path(rule)
    template = PathTemplate.parse(path)
    request = method.input_type
    for variable in template.variables:
        _field_path(request, variable)  # fails at start-up on a contract mistake
    if rule.body and rule.body != "*" and rule.body not in request.fields_by_name:
        raise RuleError(f"{method.full_name}: body {rule.body!r} is not a field of {request.full_name}")
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        raise RuleError(f"{method.full_name}: response_body {rule.response_body!r} is not a response field")
    routes = [
        Route(
            http_method=http_method,
            template=template,
            method=method,
            body=rule.body,
            response_body=rule.response_body,
            aliases=aliases,
        )
    ]
    if top:
        for binding in rule.additional_bindings:
            routes.extend(_routes_of(method, binding, aliases, top=False))
    return routes


def _field_path(message: Any, dotted: str) -> list[Any]:
    fields = []
    for name in dotted.split("."):
        if message is None or name not in message.fields_by_name:
            raise RuleError(f"{dotted!r} is not a field path of the request")
        found = message.fields_by_name[name]
        fields.append(found)
        message = found.message_type
    return fields


def load_service_config(path: Path | None = None) -> dict[str, Any]:
    for candidate in (path,) if path else _CANDIDATES:
        if candidate is not None and candidate.exists():
            loaded = yaml.safe_load(candidate.read_text())
            return loaded if isinstance(loaded, dict) else {}
    raise RuleError("http_service.yaml not found beside the protos or the web package")


def _aliases(config: dict[str, Any], method: MethodDescriptor) -> tuple[QueryAlias, ...]:
    declared = (config.get("query_aliases") or {}).get(method.full_name) or {}
    aliases = []
    for name, spec in declared.items():
        alias = QueryAlias(
            name=name,
            description=str(spec.get("description", "")),
            field=spec.get("field"),
            filter=spec.get("filter"),
            struct=spec.get("struct"),
            default=spec.get("default"),
        )
        target = alias.field or alias.struct or ("filter" if alias.filter else None)
        if target is None or target not in method.input_type.fields_by_name:
            raise RuleError(f"query alias {name!r} of {method.full_name} names no field of the request")
        aliases.append(alias)
    return tuple(aliases)


def load_routes(
    services: tuple[ServiceDescriptor, ...] = PUBLIC_SERVICES, config: dict[str, Any] | None = None
) -> list[Route]:
    """Every route, most specific first (so `/database/runs/best` wins over `/database/runs/{run_id}`)."""
    config = load_service_config() if config is None else config
    routes: list[Route] = []
    for service in services:
        for method in service.methods:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                continue
            routes.extend(_routes_of(method, options.Extensions[annotations_pb2.http], _aliases(config, method)))
    pool = descriptor_pool.Default()
    for raw in (config.get("http") or {}).get("rules") or []:
        rule = http_pb2.HttpRule()
        for key, value in raw.items():
            setattr(rule, key, value)
        method = pool.FindMethodByName(rule.selector)
        routes.extend(_routes_of(method, rule, _aliases(config, method)))
    seen: dict[tuple[str, str], Route] = {}
    for route in routes:
        key = (route.http_method, route.template.text)
        if key in seen:
            raise RuleError(f"{route.http_method} {route.template.text} is bound twice")
        seen[key] = route
    return sorted(routes, key=lambda r: r.template.specificity, reverse=True)
