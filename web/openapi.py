"""OpenAPI 3.1 of the HTTP face, generated from the same routes and descriptors the transcoder uses.

Schemas follow protobuf's canonical JSON mapping: lowerCamelCase names on output
(proto names accepted on input), 64-bit integers as strings, enums as their
names, Timestamp/Duration as strings, Struct as a free-form object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from taxidriver.field_behavior import is_output_only, is_required
from web.rules import Route
from web.transcoder import short_enum_names

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "description": "Seconds with an 's' suffix, e.g. \"90s\"."},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
    "google.protobuf.DoubleValue": {"type": "number"},
    "google.protobuf.FloatValue": {"type": "number"},
    "google.protobuf.Int64Value": {"type": "string", "format": "int64"},
    "google.protobuf.UInt64Value": {"type": "string", "format": "uint64"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.UInt32Value": {"type": "integer", "format": "int64"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BytesValue": {"type": "string", "format": "byte"},
}

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
}

STATUS_REF = "#/components/schemas/google.rpc.Status"
# Written by protos/generate.py (--include_source_info): the protos' comments.
DESCRIPTORS = Path(__file__).resolve().parent.parent / "taxidriver" / "api_descriptors.binpb"


def _walk_message(names: dict[tuple[int, ...], str], message: Any, prefix: tuple[int, ...], scope: str) -> None:
    name = f"{scope}.{message.name}"
    names[prefix] = name
    for index, field in enumerate(message.field):
        names[(*prefix, 2, index)] = f"{name}.{field.name}"
    for index, nested in enumerate(message.nested_type):
        _walk_message(names, nested, (*prefix, 3, index), name)
    for index, enum in enumerate(message.enum_type):
        _walk_enum(names, enum, (*prefix, 4, index), name)


def _walk_enum(names: dict[tuple[int, ...], str], enum: Any, prefix: tuple[int, ...], scope: str) -> None:
    name = f"{scope}.{enum.name}"
    names[prefix] = name
    for index, value in enumerate(enum.value):
        names[(*prefix, 2, index)] = f"{name}.{value.name}"


def load_comments(path: Path = DESCRIPTORS) -> dict[str, str]:
    """Full name of a message, field, enum, enum value, service or method -> its leading comment.

    Empty when the descriptor set is missing: the document is still complete, without prose.
    """
    if not path.exists():
        return {}
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    comments: dict[str, str] = {}
    for proto in files.file:
        # source_code_info paths: 4 message, 5 enum, 6 service; inside them 2 field/value/method.
        names: dict[tuple[int, ...], str] = {}
        for index, message in enumerate(proto.message_type):
            _walk_message(names, message, (4, index), proto.package)
        for index, enum in enumerate(proto.enum_type):
            _walk_enum(names, enum, (5, index), proto.package)
        for index, service in enumerate(proto.service):
            names[(6, index)] = f"{proto.package}.{service.name}"
            for method_index, method in enumerate(service.method):
                names[(6, index, 2, method_index)] = f"{proto.package}.{service.name}.{method.name}"
        for location in proto.source_code_info.location:
            name = names.get(tuple(location.path))
            text = " ".join(line.strip() for line in location.leading_comments.strip().splitlines())
            if name and text:
                comments[name] = text
    return comments


class _Schemas:
    def __init__(self, comments: dict[str, str] | None = None) -> None:
        self.components: dict[str, dict[str, Any]] = {}
        self.comments = comments or {}

    def described(self, schema: dict[str, Any], full_name: str) -> dict[str, Any]:
        text = self.comments.get(full_name)
        if not text:
            return schema
        if "$ref" in schema:  # OpenAPI 3.1: a $ref may carry a description beside it
            return {**schema, "description": text}
        return {**schema, "description": (schema.get("description", "") + " " + text).strip()}

    def ref(self, name: str) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"}

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {}  # in progress: a recursive field refers to it; filled below
            properties = {
                field.json_name: self.described(self.property(field), field.full_name) for field in descriptor.fields
            }
            schema: dict[str, Any] = {"type": "object", "properties": properties}
            required = [field.json_name for field in descriptor.fields if is_required(field)]
            if required:
                schema["required"] = required
            self.components[name] = self.described(schema, name)
        return self.ref(name)

    def enum(self, descriptor: EnumDescriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {
                "type": "string",
                "enum": [value.name for value in descriptor.values],
                "description": "Also accepted on input: the short lower-case names "
                + ", ".join(short_enum_names(descriptor))
                + ", or the numbers.",
            }
        return self.ref(name)

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.message(field.message_type)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def property(self, field: FieldDescriptor) -> dict[str, Any]:
        """A field as a message's property: OUTPUT_ONLY ones are readOnly (AIP-203)."""
        schema = self.field(field)
        return {**schema, "readOnly": True} if is_output_only(field) else schema

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": self.single(entry.fields_by_name["value"])}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)


def _query_fields(descriptor: Descriptor, prefix: str = "", depth: int = 0) -> list[tuple[str, FieldDescriptor]]:
    """Fields a query string can set: scalars, enums, repeated scalars, and nested messages' fields."""
    found: list[tuple[str, FieldDescriptor]] = []
    for field in descriptor.fields:
        path = prefix + field.name
        message = field.message_type
        if message is None or message.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration"):
            found.append((path, field))
        elif message.full_name not in _WELL_KNOWN and not message.GetOptions().map_entry and depth < 2:
            if not field.is_repeated:
                found.extend(_query_fields(message, path + ".", depth + 1))
    return found


def _operation(route: Route, schemas: _Schemas, operation_id: str) -> dict[str, Any]:
    method = route.method
    request = method.input_type
    variables = set(route.template.variables)
    parameters: list[dict[str, Any]] = []
    for variable in route.template.variables:
        field = _field(request, variable)
        parameters.append(
            {
                "name": variable,
                "in": "path",
                "required": True,
                "description": schemas.comments.get(field.full_name, ""),
                "schema": schemas.field(field),
            }
        )
    alias_names = {alias.name for alias in route.aliases}
    if route.body != "*":
        for path, field in _query_fields(request):
            if path in variables or (route.body and path.split(".")[0] == route.body) or path in alias_names:
                continue
            parameters.append(
                {
                    "name": path,
                    "in": "query",
                    # A REQUIRED field of the request itself (a nested one is required only with its parent).
                    "required": "." not in path and is_required(field),
                    "description": schemas.comments.get(field.full_name, ""),
                    "schema": schemas.field(field),
                }
            )
        for alias in route.aliases:
            if alias.struct:
                parameters.append(
                    {
                        "name": alias.struct,
                        "in": "query",
                        "required": is_required(_field(request, alias.struct)),
                        "description": alias.description,
                        "schema": {"type": "object", "additionalProperties": True},
                        "style": "form",
                        "explode": True,
                    }
                )
                continue
            target = _field(request, alias.field) if alias.field else request.fields_by_name["filter"]
            schema = schemas.field(target) if alias.field else {"type": "string"}
            if alias.default is not None:
                schema = {**schema, "default": alias.default}
            parameters.append(
                {
                    "name": alias.name,
                    "in": "query",
                    "required": bool(alias.field) and alias.default is None and is_required(target),
                    "description": alias.description,
                    "schema": schema,
                }
            )
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": f"{method.containing_service.name}.{method.name}",
        "description": schemas.comments.get(method.full_name, ""),
        "tags": [method.containing_service.name],
        "parameters": parameters,
        "responses": {
            "200": _success(route, schemas),
            "default": {
                "description": "A gRPC error as google.rpc.Status (HTTP status from google/rpc/code.proto).",
                "content": {"application/json": {"schema": {"$ref": STATUS_REF}}},
            },
        },
    }
    if route.body:
        if route.body == "*":
            in_body = [field for field in request.fields if field.name not in variables]
            body_schema: dict[str, Any] = {
                "type": "object",
                "properties": {field.json_name: schemas.field(field) for field in in_body},
            }
            required = [field.json_name for field in in_body if is_required(field)]
            if required:
                body_schema["required"] = required
        else:
            body_field = request.fields_by_name[route.body]
            body_schema = schemas.field(body_field)
            required = [body_field.json_name] if is_required(body_field) else []
        operation["requestBody"] = {
            "required": bool(required),
            "content": {"application/json": {"schema": body_schema}},
        }
    if method.containing_service.full_name == "grpc.health.v1.Health":
        operation["security"] = []
    return operation


def _success(route: Route, schemas: _Schemas) -> dict[str, Any]:
    output = route.method.output_type
    if route.server_streaming and route.response_body:
        return {
            "description": f"The `{route.response_body}` bytes of every {output.name}, concatenated.",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    if route.server_streaming:
        return {
            "description": f"Server-Sent Events: one `data:` line per {output.name} (canonical JSON), "
            "then `event: end`; a failure mid-stream is `event: error` with a google.rpc.Status.",
            "content": {"text/event-stream": {"schema": schemas.message(output)}},
        }
    if route.response_body:
        schema = schemas.field(output.fields_by_name[route.response_body])
    else:
        schema = schemas.message(output)
    return {"description": output.name, "content": {"application/json": {"schema": schema}}}


def _field(message: Descriptor, dotted: str) -> FieldDescriptor:
    field = None
    current: Descriptor | None = message
    for name in dotted.split("."):
        assert current is not None
        field = current.fields_by_name[name]
        current = field.message_type
    assert field is not None
    return field


def build_openapi(routes: list[Route], version: str = "1", comments: dict[str, str] | None = None) -> dict[str, Any]:
    schemas = _Schemas(load_comments() if comments is None else comments)
    from google.rpc import status_pb2

    schemas.message(status_pb2.Status.DESCRIPTOR)
    paths: dict[str, dict[str, Any]] = {}
    used_ids: dict[str, int] = {}
    # Document routes in a stable, readable order: by path, then method.
    for route in sorted(routes, key=lambda r: (r.template.text, r.http_method)):
        name = route.method.name
        used_ids[name] = used_ids.get(name, 0) + 1
        operation_id = name if used_ids[name] == 1 else f"{name}{used_ids[name]}"
        paths.setdefault(route.template.text, {})[route.http_method.lower()] = _operation(route, schemas, operation_id)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Taxi Driver",
            "version": version,
            "description": (
                "The public gRPC API over HTTP/JSON, transcoded from the google.api.http annotations of "
                "protos/ (AIP-127) with protobuf's canonical JSON mapping. Every call needs "
                "`Authorization: Bearer <API key>`; the gateway checks the key and the role."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }
