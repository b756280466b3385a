"""Rows <-> protobuf messages. The only place that knows both shapes."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format, struct_pb2, timestamp_pb2

from taxidriver.errors import FieldViolation, Violations, invalid_argument
from taxidriver.errors import parse_uuid as parse_uuid  # re-exported: registry modules import it from here
from taxidriver.registry.v1 import resources_pb2
from taxidriver.vocabulary import MODE_NUMBERS, STATUS_NUMBERS, STATUS_WORDS, TERMINAL_WORDS

# Stored lower-case (the seed's `status = 'completed'`), exposed as the proto enum: the words
# and the terminal set come from RunStatus (taxidriver.vocabulary), never a copy here.
STATUS_TO_DB: dict[int, str] = STATUS_WORDS
STATUS_FROM_DB: dict[str, int] = STATUS_NUMBERS
TERMINAL_STATUSES: frozenset[str] = TERMINAL_WORDS

KIND_TO_DB: dict[int, str] = {
    resources_pb2.ARTIFACT_KIND_MODEL: "model",
    resources_pb2.ARTIFACT_KIND_CHECKPOINT: "checkpoint",
    resources_pb2.ARTIFACT_KIND_PLOT: "plot",
}
KIND_FROM_DB: dict[str, int] = {v: k for k, v in KIND_TO_DB.items()}

# Algorithm names are the trainer's (its registry of algorithms): the registry stores what the
# trainer sends and checks only the name's form (vocabulary.algorithm_name_problem).
MODES: frozenset[str] = frozenset(MODE_NUMBERS)

METRIC_GROUPS = (
    "training_metrics",
    "test_metrics",
    "system_metrics",
    "learning_stability",
    "brute_force_metrics",
    "improvement_metrics",
)

# Every column a Run message is built from; tags are the union of the run's annotation tags,
# kept on the run by a trigger (migration 0015).
RUN_COLUMNS = """
    r.run_id, r.algorithm, r.status, r.mode, r.env_id, r.params, r.training_metrics, r.test_metrics,
    r.system_metrics, r.learning_stability, r.brute_force_metrics, r.improvement_metrics, r.plots,
    r.model_path, r.execution_time, r.created_at, r.updated_at, r.episodes_recorded, r.episodes_planned,
    r.stop_reason, r.error_message, r.creator, r.resumed_by, r.cancelled_by, r.tags
"""


NUL = "\x00"
# PostgreSQL integer columns and the int32 fields they come from.
INT32_RANGE = range(-(2**31), 2**31)


def check_text(violations: Violations, field_name: str, value: str) -> None:
    """PostgreSQL text cannot hold NUL: refuse it at the edge, naming the field."""
    if NUL in value:
        violations.add(field_name, "must not contain NUL characters")


def _value_violations(value: struct_pb2.Value, path: str, out: list[FieldViolation]) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value" and not math.isfinite(value.number_value):
        out.append(FieldViolation(field=path, description="must be a finite number (JSON has no NaN or infinity)"))
    elif kind == "string_value" and NUL in value.string_value:
        out.append(FieldViolation(field=path, description="must not contain NUL characters"))
    elif kind == "struct_value":
        _struct_violations(value.struct_value, path, out)
    elif kind == "list_value":
        for index, item in enumerate(value.list_value.values):
            _value_violations(item, f"{path}[{index}]", out)


def _struct_violations(message: struct_pb2.Struct, path: str, out: list[FieldViolation]) -> None:
    for key in sorted(message.fields):
        if NUL in key:
            out.append(FieldViolation(field=path, description="keys must not contain NUL characters"))
            continue
        _value_violations(message.fields[key], f"{path}.{key}", out)


def struct_violations(message: struct_pb2.Struct, field_name: str) -> list[FieldViolation]:
    """What a user's Struct holds that JSONB cannot store (NaN, infinities, NUL), by path."""
    found: list[FieldViolation] = []
    _struct_violations(message, field_name, found)
    return found


def user_struct(message: struct_pb2.Struct, field_name: str, violations: Violations | None = None) -> dict[str, Any]:
    """A Struct from a request as a dict, or INVALID_ARGUMENT naming each value JSONB cannot hold.

    With `violations`, problems are collected there (the caller raises) and {} is returned.
    """
    found = struct_violations(message, field_name)
    if found:
        if violations is None:
            raise invalid_argument(found)
        violations.items.extend(found)
        return {}
    return struct_to_dict(message)


def _normalise(value: Any) -> Any:
    """Struct numbers are doubles; store integral ones as JSON integers (params.training_runs = 6000)."""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return _normalise(json_format.MessageToDict(message))  # type: ignore[no-any-return]


def fill_struct(struct: struct_pb2.Struct, value: Mapping[str, Any] | None) -> None:
    """Struct.update, with numbers and strings (most of a run's values) set directly.

    Struct.update dispatches every value through a chain of isinstance tests: on a page of 50
    runs that was about a third of the registry's CPU for the page (3x slower per value).
    """
    if not value:
        return
    fields = struct.fields
    for key, item in value.items():
        kind = type(item)
        if kind is float or kind is int:
            fields[key].number_value = item
        elif kind is str:
            fields[key].string_value = item
        else:
            struct.update({key: item})


def dict_to_struct(value: Mapping[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    fill_struct(struct, value)
    return struct


def value_to_proto(value: Any) -> struct_pb2.Value:
    proto = struct_pb2.Value()
    if value is None:
        proto.null_value = struct_pb2.NULL_VALUE
    else:
        json_format.ParseDict(value, proto)
    return proto


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if value is not None:
        stamp.FromDatetime(value)
    return stamp


def run_from_row(row: Mapping[str, Any]) -> resources_pb2.Run:
    run = resources_pb2.Run(
        run_id=str(row["run_id"]),
        algorithm=row["algorithm"],
        status=STATUS_FROM_DB.get(row["status"], resources_pb2.RUN_STATUS_UNSPECIFIED),  # type: ignore[arg-type]
        mode=row["mode"] or "",
        env_id=row["env_id"] or "",
        model_path=row["model_path"] or "",
        execution_time=row["execution_time"] or 0.0,
        episodes_recorded=row["episodes_recorded"],
        episodes_planned=row["episodes_planned"],
        stop_reason=row["stop_reason"] or "",
        error_message=row["error_message"] or "",
        tags=list(row.get("tags") or []),
        # NULL (unknown owner: older runs, authentication off) travels as "".
        creator=row.get("creator") or "",
        resumed_by=row.get("resumed_by") or "",
        cancelled_by=row.get("cancelled_by") or "",
    )
    # Present (HasField) even when empty, as CopyFrom of an empty Struct made them.
    run.params.SetInParent()
    fill_struct(run.params, row["params"])
    run.plots.SetInParent()
    fill_struct(run.plots, row["plots"])
    for group in METRIC_GROUPS:
        if row[group] is not None:
            getattr(run, group).SetInParent()
            fill_struct(getattr(run, group), row[group])
    run.create_time.CopyFrom(timestamp(row["created_at"]))
    run.update_time.CopyFrom(timestamp(row["updated_at"]))
    return run


ARTIFACT_COLUMNS = "artifact_id, run_id, kind, name, content_type, size, sha256, episode, metadata, created_at"


def artifact_from_row(row: Mapping[str, Any]) -> resources_pb2.Artifact:
    artifact = resources_pb2.Artifact(
        artifact_id=str(row["artifact_id"]),
        run_id=str(row["run_id"]) if row["run_id"] else "",
        kind=KIND_FROM_DB[row["kind"]],  # type: ignore[arg-type]
        name=row["name"],
        content_type=row["content_type"],
        size_bytes=row["size"],
        sha256=row["sha256"],
        episode=row["episode"],
    )
    artifact.metadata.CopyFrom(dict_to_struct(row["metadata"]))
    artifact.create_time.CopyFrom(timestamp(row["created_at"]))
    return artifact


MODEL_COLUMNS = "model_id, run_id, model_name, model_path, model_size, model_metadata, created_at, imported_by"


def model_from_row(row: Mapping[str, Any]) -> resources_pb2.Model:
    model = resources_pb2.Model(
        model_id=str(row["model_id"]),
        run_id=str(row["run_id"]) if row["run_id"] else "",
        model_name=row["model_name"] or "",
        model_path=row["model_path"] or "",
        model_size=row["model_size"] or 0,
        imported_by=row.get("imported_by") or "",
    )
    model.model_metadata.CopyFrom(dict_to_struct(row["model_metadata"]))
    model.create_time.CopyFrom(timestamp(row["created_at"]))
    return model


ANNOTATION_COLUMNS = "annotation_id, run_id, annotation, tags, created_at, author"


def annotation_from_row(row: Mapping[str, Any]) -> resources_pb2.Annotation:
    return resources_pb2.Annotation(
        annotation_id=str(row["annotation_id"]),
        run_id=str(row["run_id"]),
        annotation=row["annotation"],
        tags=list(row["tags"]),
        create_time=timestamp(row["created_at"]),
        author=row.get("author") or "",
    )


def curves_from_rows(rows: Sequence[Mapping[str, Any]], first_episode: int = 0) -> resources_pb2.EpisodeCurves:
    """Concatenate stored chunks (ordered by first_episode), keeping episodes >= first_episode."""
    curves = resources_pb2.EpisodeCurves(first_episode=first_episode)
    for row in rows:
        skip = max(0, first_episode - row["first_episode"])
        count = row["episode_count"]
        if skip >= count:
            continue
        # numpy arrays (episodes.read_chunks): tolist() hands protobuf plain Python values in one C call.
        curves.rewards.extend(row["rewards"][skip:].tolist())
        curves.steps.extend(row["steps"][skip:].tolist())
        for name, fill in (("epsilons", 0.0), ("td_errors", 0.0), ("successes", False)):
            values = row[name]
            getattr(curves, name).extend(values[skip:].tolist() if values is not None else [fill] * (count - skip))
    return curves
