"""HTTP/JSON <-> gRPC, driven only by the routes' http rules and the message descriptors.

A request becomes the method's request message from (1) the path variables,
(2) the body (`*` or one field) and (3) the query parameters for every field the
path and body did not bind (AIP-127), plus the declared seed aliases. JSON is
protobuf's canonical mapping (`google.protobuf.json_format`), with one
leniency: an enum value may be written as its lower-case short name (`optimized`
for TRAINING_MODE_OPTIMIZED, `full` for RUN_VIEW_FULL), since every enum value
follows the AIP-126 `TYPE_NAME_VALUE` prefix rule and the seed spoke that way.

Bad input never reaches the services: unknown fields, wrong types and malformed
JSON are INVALID_ARGUMENT with a BadRequest field violation naming the field, as
the services themselves answer.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from taxidriver.errors import FieldViolation, ServiceError, invalid_argument
from web.rules import Route

# google/rpc/code.proto's documented HTTP mapping.
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}

# Well-known types whose JSON form is not an object of their fields.
_OPAQUE_JSON = {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.Any",
    "google.protobuf.Empty",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}

_INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _is_map(field: FieldDescriptor) -> bool:
    message = field.message_type
    return bool(message is not None and message.GetOptions().map_entry)


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _find_field(message: Descriptor, name: str) -> FieldDescriptor | None:
    """By proto name or by JSON (lowerCamelCase) name, as json_format accepts both."""
    found = message.fields_by_name.get(name)
    if found is not None:
        return found
    for candidate in message.fields:
        if candidate.json_name == name:
            return candidate
    return None


def enum_value_name(enum: EnumDescriptor, raw: str) -> str | None:
    """The value's full name for `raw` given as full name or as its lower-case short name."""
    if raw in enum.values_by_name:
        return raw
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    candidate = prefix + raw.upper()
    if candidate in enum.values_by_name and enum.values_by_name[candidate].number != 0:
        return candidate
    return None


def short_enum_names(enum: EnumDescriptor) -> list[str]:
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return [v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0]


class _Checker:
    """Walks JSON against a message descriptor: names every bad field, fixes enum short names."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def bad(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(field=path or "body", description=description))

    def message(self, descriptor: Descriptor, value: Any, path: str) -> Any:
        if descriptor.full_name in _OPAQUE_JSON:
            return self.opaque(descriptor, value, path)
        if not isinstance(value, dict):
            self.bad(path, f"must be a JSON object ({descriptor.name}), got {_json_type(value)}")
            return value
        checked: dict[str, Any] = {}
        for key, item in value.items():
            field = _find_field(descriptor, key)
            where = f"{path}.{key}" if path else key
            if field is None:
                self.bad(where, f"unknown field of {descriptor.name}")
                continue
            where = f"{path}.{field.name}" if path else field.name
            checked[field.name] = self.field(field, item, where)
        return checked

    def opaque(self, descriptor: Descriptor, value: Any, path: str) -> Any:
        try:
            json_format.ParseDict(value, message_class(descriptor)())
        except (json_format.ParseError, TypeError, ValueError) as exc:
            self.bad(path, f"is not a valid {descriptor.name}: {_short(exc)}")
        return value

    def field(self, field: FieldDescriptor, value: Any, path: str) -> Any:
        if value is None:
            return None  # json_format: null means the default
        if _is_map(field):
            if not isinstance(value, dict):
                self.bad(path, f"must be a JSON object, got {_json_type(value)}")
                return value
            entry = field.message_type
            assert entry is not None
            value_field = entry.fields_by_name["value"]
            return {key: self.single(value_field, item, f"{path}.{key}") for key, item in value.items()}
        if _is_repeated(field):
            if not isinstance(value, list):
                self.bad(path, f"must be a JSON array, got {_json_type(value)}")
                return value
            return [self.single(field, item, f"{path}[{i}]") for i, item in enumerate(value)]
        return self.single(field, value, path)

    def single(self, field: FieldDescriptor, value: Any, path: str) -> Any:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type is not None
            return self.message(field.message_type, value, path)
        if kind == FieldDescriptor.TYPE_ENUM:
            enum = field.enum_type
            assert enum is not None
            if isinstance(value, str):
                name = enum_value_name(enum, value)
                if name is None:
                    self.bad(path, f"unknown {enum.name} {value[:60]!r}; one of {', '.join(short_enum_names(enum))}")
                    return value
                return name
            if isinstance(value, int) and not isinstance(value, bool):
                if value not in enum.values_by_number:
                    self.bad(path, f"unknown {enum.name} number {value}")
                return value
            self.bad(path, f"must be a string ({enum.name}), got {_json_type(value)}")
            return value
        if kind == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                self.bad(path, f"must be true or false, got {_json_type(value)}")
            return value
        if kind in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            if not isinstance(value, str):
                self.bad(path, f"must be a string, got {_json_type(value)}")
            return value
        if kind in _INTEGER_TYPES:
            number: Any = value
            if isinstance(value, str):
                try:
                    number = int(value)
                except ValueError:
                    self.bad(path, f"must be an integer, got {value[:60]!r}")
                    return value
            elif isinstance(value, float) and value.is_integer():
                number = int(value)
            if isinstance(number, bool) or not isinstance(number, int):
                self.bad(path, f"must be an integer, got {_json_type(value)}")
                return value
            low, high = _INTEGER_RANGES[kind]
            if not low <= number <= high:
                self.bad(path, f"must be between {low} and {high}")
            return number
        if kind in _FLOAT_TYPES:
            if isinstance(value, str):
                if value in ("NaN", "Infinity", "-Infinity"):
                    return value
                try:
                    return float(value)
                except ValueError:
                    self.bad(path, f"must be a number, got {value[:60]!r}")
                    return value
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.bad(path, f"must be a number, got {_json_type(value)}")
            return value
        return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200]


def _query_value(field: FieldDescriptor, raw: str) -> Any:
    """A query string value as the JSON value json_format expects for the field."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_BOOL:
        lowered = raw.lower()
        return True if lowered == "true" else False if lowered == "false" else raw
    if field.message_type is not None and field.message_type.full_name in (
        "google.protobuf.Value",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.BoolValue",
    ):
        return json_scalar(raw)
    return raw  # strings, enums, integers and floats: the checker converts and names errors


def json_scalar(raw: str) -> Any:
    """A query value typed as JSON: a number, true/false/null, else the string itself."""
    if raw in ("true", "false", "null"):
        return json.loads(raw)
    try:
        number = float(raw)
    except ValueError:
        return raw
    if not math.isfinite(number):
        return raw
    return int(raw) if re.fullmatch(r"-?\d+", raw) else number


def _set_path(target: dict[str, Any], dotted: str, value: Any, *, append: bool = False) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        nested = target.setdefault(part, {})
        if not isinstance(nested, dict):
            raise invalid_argument([FieldViolation(field=dotted, description="is bound twice")])
        target = nested
    if append:
        target.setdefault(parts[-1], []).append(value)
    else:
        target[parts[-1]] = value


def _resolve(message: Descriptor | None, dotted: str) -> FieldDescriptor | None:
    field = None
    for name in dotted.split("."):
        if message is None:
            return None
        field = _find_field(message, name)
        if field is None:
            return None
        message = field.message_type
    return field


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_request(
    route: Route,
    path_values: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    body: bytes,
) -> Message:
    """The request message for one HTTP request, or INVALID_ARGUMENT naming each bad field."""
    descriptor = route.method.input_type
    document: dict[str, Any] = {}
    violations: list[FieldViolation] = []
    if route.body:
        if not body.strip():
            parsed: Any = {}
        else:
            try:
                parsed = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise invalid_argument(
                    [FieldViolation(field="body", description=f"is not valid JSON: {_short(exc)}")],
                    "request body is not valid JSON",
                ) from None
        if route.body == "*":
            if not isinstance(parsed, dict):
                raise invalid_argument(
                    [FieldViolation(field="body", description=f"must be a JSON object, got {_json_type(parsed)}")]
                )
            document.update(parsed)
        else:
            document[route.body] = parsed
    bound = {route.body} if route.body and route.body != "*" else set()
    for name, value in path_values.items():
        field = _resolve(descriptor, name)
        assert field is not None  # checked when the routes were loaded
        _set_path(document, name, _query_value(field, value))
        bound.add(name)
    aliases = {alias.name: alias for alias in route.aliases}
    filters: list[str] = []
    extra_struct: dict[str, dict[str, Any]] = {}
    given = set()
    for key, raw in query:
        given.add(key)
        if key in aliases:
            alias = aliases[key]
            if alias.field:
                # Checked here so that a bad value is reported under the name the caller used.
                target = _resolve(descriptor, alias.field)
                assert target is not None  # checked when the routes were loaded
                alias_checker = _Checker()
                value = alias_checker.single(target, _query_value(target, raw), key)
                violations.extend(alias_checker.violations)
                _set_path(document, alias.field, value)
            elif alias.filter:
                filters.append(alias.filter.replace("{value}", _quote(raw)))
            continue
        if route.body == "*":
            violations.append(
                FieldViolation(field=key, description="query parameters are not accepted: send it in the body")
            )
            continue
        field = _resolve(descriptor, key)
        if field is None or key in bound or (route.body and key.split(".")[0] == route.body):
            if "*" in aliases and aliases["*"].struct:
                extra_struct.setdefault(aliases["*"].struct, {})[key] = json_scalar(raw)
                continue
            violations.append(FieldViolation(field=key, description=f"unknown query parameter of {route.method.name}"))
            continue
        if field.message_type is not None and field.message_type.full_name not in _OPAQUE_JSON:
            violations.append(FieldViolation(field=key, description="is a message; set its fields (key.field=value)"))
            continue
        if _is_repeated(field):
            _set_path(document, key, _query_value(field, raw), append=True)
        else:
            _set_path(document, key, _query_value(field, raw))
    for alias in route.aliases:
        if alias.default is not None and alias.field and alias.name not in given:
            _set_path(document, alias.field, alias.default)
    if filters:
        existing = document.get("filter")
        clauses = ([f"({existing})"] if isinstance(existing, str) and existing.strip() else []) + filters
        document["filter"] = " AND ".join(clauses)
    for name, values in extra_struct.items():
        current = document.get(name)
        document[name] = {**(current if isinstance(current, dict) else {}), **values}
    checker = _Checker()
    checked = checker.message(descriptor, document, "")
    violations.extend(checker.violations)
    if violations:
        raise invalid_argument(violations)
    request = message_class(descriptor)()
    try:
        json_format.ParseDict(checked, request)
    except json_format.ParseError as exc:
        raise invalid_argument([FieldViolation(field="body", description=_short(exc))]) from None
    return request


# Repeated float (float32) fields at least this long are printed by _float_list, not json_format.
_LONG_FLOATS = 64
_FLOAT32 = struct.Struct("<f")


def _shortest_float32(value: float) -> float | str:
    """json_format's ToShortestFloat (the shortest decimal that reads back as the same float32),
    with integers and repeats short-cut: curves are mostly whole rewards and repeated epsilons."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e6:
        return value
    for precision in (6, 7, 8):
        rounded = float(f"{value:.{precision}g}")
        if _FLOAT32.unpack(_FLOAT32.pack(rounded))[0] == value:
            return rounded
    return float(f"{value:.9g}")


def _float_list(values: Any) -> list[float | str]:
    seen: dict[float, float | str] = {}
    out: list[float | str] = []
    for value in values:
        if value == 0:  # 0.0 and -0.0 are one dict key but print differently
            out.append(value)
            continue
        printed = seen.get(value)
        if printed is None:
            printed = seen[value] = _shortest_float32(value)
        out.append(printed)
    return out


def _strip_long_floats(
    message: Message, path: tuple[str | int, ...], found: list[tuple[tuple[str | int, ...], Any]]
) -> None:
    """Moves long repeated float fields out of `message` (a copy), noting where they go."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_FLOAT and field.is_repeated and len(value) >= _LONG_FLOATS:
            found.append(((*path, field.json_name), list(value)))
            message.ClearField(field.name)
        elif field.message_type is not None and field.message_type.full_name not in _OPAQUE_JSON:
            if field.message_type.GetOptions().map_entry:
                continue
            if field.is_repeated:
                for index, item in enumerate(value):
                    _strip_long_floats(item, (*path, field.json_name, index), found)
            else:
                _strip_long_floats(value, (*path, field.json_name), found)


def to_json(message: Message) -> dict[str, Any]:
    """Canonical proto3 JSON, fields at their default values included (a listing's empty `runs`).

    Long float32 columns (a run's curves) are printed here with json_format's own rule:
    json_format spends ~5 us per value on them, most of a 6000-episode run's reply.
    """
    found: list[tuple[tuple[str | int, ...], Any]] = []
    copy = type(message)()
    copy.CopyFrom(message)
    _strip_long_floats(copy, (), found)
    document = json_format.MessageToDict(copy if found else message, always_print_fields_with_no_presence=True)
    for path, values in found:
        node: Any = document
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = _float_list(values)
    return document


def status_json(status: status_pb2.Status) -> dict[str, Any]:
    return json_format.MessageToDict(status)


def error_status(error: BaseException) -> status_pb2.Status:
    """google.rpc.Status of a gRPC failure or of our own ServiceError."""
    if isinstance(error, ServiceError):
        for key, value in error.to_status().trailing_metadata:
            if key == "grpc-status-details-bin":
                return status_pb2.Status.FromString(value)
    if isinstance(error, grpc.aio.AioRpcError):
        rich = rpc_status.from_call(error)  # type: ignore[arg-type]
        if rich is not None:
            return rich
        return status_pb2.Status(code=error.code().value[0], message=error.details() or "")
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def http_status(status: status_pb2.Status) -> int:
    return HTTP_STATUS.get(status.code, 500)


# Registers BadRequest / ErrorInfo with the default pool so Any details print as JSON.
_DETAILS = (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo)
