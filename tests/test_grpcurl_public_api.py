"""Every public RPC through the real gateway with grpcurl and JSON, as docs/grpcurl.md shows an operator."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support import InProcessService

GRPCURL = Path(sys.executable).parent / "grpcurl"
R = "taxidriver.registry.v1.RegistryService"
T = "taxidriver.trainer.v1.TrainerService"


def grpcurl(gateway: InProcessService, method: str, body: Any, *extra: str) -> list[dict[str, Any]]:
    """The call's JSON replies (one per streamed message); fails on a non-OK status."""
    data = body if isinstance(body, str) else json.dumps(body)
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "120", *extra, "-d", "@", gateway.target, method],
        input=data,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, f"{method}: {result.stderr}"
    return decode_all(result.stdout)


def grpcurl_error(gateway: InProcessService, method: str, body: Any) -> str:
    result = subprocess.run(
        [str(GRPCURL), "-plaintext", "-d", json.dumps(body), gateway.target, method],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    return result.stderr


def decode_all(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    replies: list[dict[str, Any]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        value, end = decoder.raw_decode(text, position)
        replies.append(value)
        position = end
        while position < len(text) and text[position].isspace():
            position += 1
    return replies


def start_and_wait(gateway: InProcessService, alpha: float, seed: int) -> str:
    started = grpcurl(
        gateway,
        f"{T}/StartRun",
        {
            "algorithm": "q_learning",
            "mode": "TRAINING_MODE_USER",
            "seed": seed,
            "test_episodes": 10,
            "hyperparameters": {
                "alpha": alpha,
                "gamma": 0.95,
                "epsilon": 1.0,
                "epsilon_min": 0.05,
                "epsilon_decay": 0.99,
                "training_episodes": 200,
                "max_steps": 200,
            },
        },
    )[0]
    run_id = started["run_id"]
    events = grpcurl(gateway, f"{R}/WatchRun", {"run_id": run_id, "status_only": True})
    assert events[-1]["event"]["status_change"]["status"] == "RUN_STATUS_COMPLETED"
    return run_id


@pytest.fixture(scope="module")
def runs(gateway: InProcessService) -> list[str]:
    return [start_and_wait(gateway, 0.4, 21), start_and_wait(gateway, 0.7, 22)]


def test_list_algorithms(gateway: InProcessService) -> None:
    reply = grpcurl(gateway, f"{T}/ListAlgorithms", {})[0]
    assert "sarsa" in {a["name"] for a in reply["algorithms"]}


def test_watch_run_replays_episodes(gateway: InProcessService, runs: list[str]) -> None:
    events = grpcurl(gateway, f"{R}/WatchRun", {"run_id": runs[0], "from_episode": 150})
    episodes = [e["event"]["episodes"] for e in events if "episodes" in e["event"]]
    assert episodes[0].get("first_episode") == 150
    assert sum(len(chunk["rewards"]) for chunk in episodes) == 50


def test_get_and_list_runs(gateway: InProcessService, runs: list[str]) -> None:
    run = grpcurl(gateway, f"{R}/GetRun", {"run_id": runs[0]})[0]["run"]
    assert run["status"] == "RUN_STATUS_COMPLETED"
    assert run["params"]["alpha"] == 0.4
    listed = grpcurl(gateway, f"{R}/ListRuns", {"page_size": 100, "filter": 'algorithm = "q_learning"'})[0]
    assert set(runs) <= {r["run_id"] for r in listed["runs"]}


def test_best_statistics_and_search(gateway: InProcessService, runs: list[str]) -> None:
    best = grpcurl(gateway, f"{R}/ListBestRuns", {"algorithm": "q_learning", "limit": 100})[0]
    assert set(runs) <= {r["run_id"] for r in best["runs"]}
    stats = grpcurl(gateway, f"{R}/GetStatistics", {})[0]
    assert int(stats["completed_runs"]) >= 2
    found = grpcurl(gateway, f"{R}/SearchRunsByParams", {"params": {"alpha": 0.7, "training_runs": 200}})[0]
    assert [r["run_id"] for r in found["runs"]] == [runs[1]]


def test_compare_runs(gateway: InProcessService, runs: list[str]) -> None:
    reply = grpcurl(gateway, f"{R}/CompareRuns", {"run_ids": runs})[0]
    alpha = next(d for d in reply["param_differences"] if d["key"] == "alpha")
    assert alpha["values"] == [0.4, 0.7]


def test_annotations(gateway: InProcessService, runs: list[str]) -> None:
    created = grpcurl(
        gateway,
        f"{R}/CreateAnnotation",
        {"run_id": runs[0], "annotation": "Excellent résultat", "tags": ["optimized", "best_performance"]},
    )[0]["annotation"]
    listed = grpcurl(gateway, f"{R}/ListAnnotations", {"run_id": runs[0]})[0]["annotations"]
    assert created["annotation_id"] in {a["annotation_id"] for a in listed}


def test_models_export_and_import(gateway: InProcessService, runs: list[str]) -> None:
    models = grpcurl(gateway, f"{R}/ListModels", {"run_id": runs[0]})[0]["models"]
    model_id = models[0]["model_id"]
    assert grpcurl(gateway, f"{R}/GetModel", {"model_id": model_id})[0]["model"]["model_id"] == model_id
    chunks = grpcurl(gateway, f"{R}/ExportModel", {"model_id": model_id})
    assert chunks[0]["model"]["model_id"] == model_id
    content = b"".join(base64.b64decode(c.get("chunk", "")) for c in chunks)
    assert content[:6] == b"\x93NUMPY"
    upload = "\n".join(
        [
            json.dumps({"header": {"model_name": "via_grpcurl.npy", "model_metadata": {"source": "grpcurl"}}}),
            json.dumps({"chunk": base64.b64encode(content).decode()}),
        ]
    )
    imported = grpcurl(gateway, f"{R}/ImportModel", upload)[0]["model"]
    assert imported["model_name"] == "via_grpcurl.npy"
    assert int(imported["model_size"]) == len(content)


def test_artifacts(gateway: InProcessService, runs: list[str]) -> None:
    artifacts = grpcurl(gateway, f"{R}/ListArtifacts", {"run_id": runs[0], "kind": "ARTIFACT_KIND_MODEL"})[0]
    artifact = artifacts["artifacts"][0]
    chunks = grpcurl(gateway, f"{R}/DownloadArtifact", {"artifact_id": artifact["artifact_id"]})
    content = b"".join(base64.b64decode(c.get("chunk", "")) for c in chunks)
    assert len(content) == int(artifact["size_bytes"])


def test_watch_runs_bidi(gateway: InProcessService, runs: list[str]) -> None:
    events = grpcurl(gateway, f"{R}/WatchRuns", {"add_run_ids": runs, "status_only": True})
    ended = {e["event"]["run_id"] for e in events if e["event"].get("status_change", {}).get("status")}
    assert ended == set(runs)


def test_cancel_and_resume_reach_the_trainer(gateway: InProcessService, runs: list[str]) -> None:
    # Cancelling a finished run changes nothing; resuming it is refused with a reason.
    cancelled = grpcurl(gateway, f"{T}/CancelRun", {"run_id": runs[1]})[0]
    assert cancelled == {"run_id": runs[1], "status": "RUN_STATUS_COMPLETED"}
    stderr = grpcurl_error(gateway, f"{T}/ResumeRun", {"run_id": runs[1]})
    assert "Code: FailedPrecondition" in stderr
    stderr = grpcurl_error(gateway, f"{T}/CancelRun", {"run_id": str(uuid.uuid4())})
    assert "Code: NotFound" in stderr


def test_bad_input_names_the_field(gateway: InProcessService) -> None:
    stderr = grpcurl_error(gateway, f"{R}/GetRun", {"run_id": "nope"})
    assert "Code: InvalidArgument" in stderr
    assert "run_id" in stderr
    # Reflection serves google/rpc/error_details.proto, so grpcurl decodes the details.
    assert "is not recognized" not in stderr
    assert 'type.googleapis.com/google.rpc.BadRequest","field_violations"' in stderr
    assert '{"field":"run_id"' in stderr


def test_purge_validate_only_and_delete(gateway: InProcessService, runs: list[str]) -> None:
    purge = grpcurl(gateway, f"{R}/PurgeRuns", {"older_than_days": 30, "validate_only": True})[0]
    assert int(purge.get("purged_runs", "0")) == 0
    deleted = grpcurl(gateway, f"{R}/DeleteRun", {"run_id": runs[1]})[0]
    assert deleted["run_id"] == runs[1]
    assert "Code: NotFound" in grpcurl_error(gateway, f"{R}/GetRun", {"run_id": runs[1]})


def test_health_of_the_registry_through_the_gateway(gateway: InProcessService) -> None:
    reply = grpcurl(gateway, "grpc.health.v1.Health/Check", {"service": R})[0]
    assert reply == {"status": "SERVING"}
