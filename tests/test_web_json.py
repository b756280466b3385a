"""The transcoder's JSON is json_format's canonical JSON, byte for byte, with its fast float columns."""

from __future__ import annotations

import json
import math
import struct

from google.protobuf import json_format

from taxidriver.registry.v1 import registry_service_pb2, resources_pb2
from web.transcoder import to_json


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


EDGES = [1e-8, 123456789.0, math.inf, -math.inf, math.nan, -0.0, 0.0, 0.1, 3.4e38, -7.0, 0.05]


def curves(count: int) -> resources_pb2.EpisodeCurves:
    return resources_pb2.EpisodeCurves(
        first_episode=5,
        rewards=[float((i * 37) % 800 - 790) for i in range(count)] + EDGES,
        steps=[(i * 13) % 200 + 1 for i in range(count + len(EDGES))],
        epsilons=[_float32(max(0.05, 0.999**i)) for i in range(count + len(EDGES))],
        td_errors=[_float32((i * 0.7391) % 3.1) for i in range(count + len(EDGES))],
        successes=[i % 3 == 0 for i in range(count + len(EDGES))],
    )


def same(message) -> bool:  # type: ignore[no-untyped-def]
    ours = json.dumps(to_json(message), sort_keys=True)
    reference = json.dumps(
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True), sort_keys=True
    )
    return ours == reference


def test_long_float_columns_print_exactly_like_json_format() -> None:
    assert same(registry_service_pb2.GetRunResponse(run=resources_pb2.Run(run_id="r", curves=curves(2000))))
    assert same(registry_service_pb2.WatchRunResponse(event=resources_pb2.RunEvent(run_id="r", episodes=curves(500))))
    assert same(
        registry_service_pb2.ListRunsResponse(
            runs=[resources_pb2.Run(run_id="a", curves=curves(300)), resources_pb2.Run(run_id="b")], total_size=2
        )
    )


def test_short_columns_and_messages_without_floats_are_left_to_json_format() -> None:
    assert same(registry_service_pb2.GetRunResponse(run=resources_pb2.Run(run_id="r", curves=curves(3))))
    assert same(registry_service_pb2.ListRunsResponse())
    assert to_json(registry_service_pb2.ListRunsResponse())["runs"] == []
