"""google.api.field_behavior (AIP-203) read from the descriptors: what the gateway enforces
(REQUIRED, gateway/required.py) and what the web's OpenAPI says (required, readOnly)."""

from __future__ import annotations

from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import FieldDescriptor


def behaviors(field: FieldDescriptor) -> set[int]:
    declared: Any = field.GetOptions().Extensions[field_behavior_pb2.field_behavior]
    return set(declared)


def is_required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in behaviors(field)


def is_output_only(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.OUTPUT_ONLY in behaviors(field)
