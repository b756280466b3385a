"""AIP-155 request fingerprints, shared by the service that receives a request and the one
that stores it: a reused request_id is a retry only if the request is the same."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from google.protobuf.message import Message


def message_fingerprint(message: Message) -> str:
    """SHA-256 (hex) of a request without its request_id, serialised deterministically."""
    copy = type(message)()
    copy.CopyFrom(message)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def json_fingerprint(value: Any) -> str:
    """SHA-256 (hex) of a JSON-able value with sorted keys."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
