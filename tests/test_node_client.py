"""A Node.js backend (grpc-js + proto-loader, protos/ loaded at run time) against the real gateway.

tests/node_client/client.mjs calls every public RPC of the cookbook with an admin key and prints
what it saw as JSON; this module asserts on the values. The client's packages are pinned by its
committed package-lock.json and installed by `npm ci` here, into a git-ignored node_modules.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from typing import Any

import psycopg
import pytest

from registry_service import users
from tests.support import ROOT, InProcessService

CLIENT_DIR = ROOT / "tests" / "node_client"
NODE = shutil.which("node")
NPM = shutil.which("npm")

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node and npm are not installed: the Node.js client test cannot run (Debian: apt-get install nodejs npm)",
)


def install_client() -> None:
    """`npm ci` unless node_modules already matches the committed lock file."""
    lock = CLIENT_DIR / "package-lock.json"
    installed = CLIENT_DIR / "node_modules" / ".package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    assert NPM is not None
    subprocess.run(
        [NPM, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=CLIENT_DIR,
        check=True,
        capture_output=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def admin_key(database_url: str, registry: InProcessService) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return users.ensure_user_with_key(conn, f"node-client-{uuid.uuid4().hex[:8]}", "admin")


@pytest.fixture(scope="module")
def report(secured_gateway: InProcessService, admin_key: str) -> dict[str, Any]:
    install_client()
    assert NODE is not None
    result = subprocess.run(
        [NODE, "client.mjs", "--target", secured_gateway.target, "--key", admin_key, "--protos", str(ROOT / "protos")],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def is_uuid(value: str) -> bool:
    return str(uuid.UUID(value)) == value


def test_health_and_algorithms(report: dict[str, Any]) -> None:
    assert report["health"] == {"overall": "SERVING", "registry": "SERVING"}
    assert set(report["algorithms"]) == {
        "brute_force",
        "q_learning",
        "sarsa",
        "expected_sarsa",
        "double_q_learning",
        "monte_carlo",
    }
    assert "training_episodes" in report["parameter_names"]


def test_runs_started_and_watched_to_completion(report: dict[str, Any]) -> None:
    started = report["started"]
    assert [run["status"] for run in started] == ["RUN_STATUS_QUEUED"] * 2
    assert all(is_uuid(run["run_id"]) for run in started)
    assert [run["seed"] for run in started] == ["41", "42"]  # uint64 as a decimal string (longs: String)
    assert report["watch"] == {
        "code": "OK",
        "episodes": 230,
        "first_episode": 0,
        "last_status": "RUN_STATUS_COMPLETED",
    }
    assert report["watch_second_last_status"] == "RUN_STATUS_COMPLETED"


def test_queries_read_structs_enums_and_int64(report: dict[str, Any]) -> None:
    first, second = (run["run_id"] for run in report["started"])
    got = report["get_run"]
    assert got["status"] == "RUN_STATUS_COMPLETED"
    assert got["mode"] == "user"
    assert got["alpha"] == 0.37
    assert got["training_runs"] == 230
    assert 0.0 <= got["success_rate"] <= 1.0
    assert got["curve_length"] == 230
    assert int(got["create_time_seconds"]) > 1_700_000_000
    assert {first, second} <= set(report["list_runs"]["run_ids"])
    assert int(report["list_runs"]["total_size"]) >= 2
    assert {first, second} <= set(report["best_run_ids"])
    statistics = report["statistics"]
    assert isinstance(statistics["total_runs"], str) and int(statistics["total_runs"]) >= 2
    assert "q_learning" in statistics["algorithms"]
    assert second in report["search_run_ids"] and first not in report["search_run_ids"]
    assert report["compare"]["run_ids"] == [first, second]
    assert report["compare"]["alpha_values"] == [0.37, 0.73]
    assert "test_metrics.success_rate" in report["compare"]["metrics"]


def test_annotations(report: dict[str, Any]) -> None:
    annotations = report["annotations"]
    assert annotations["listed"] == [
        {"id": annotations["created"], "text": "trained from Node.js", "tags": ["node", "contract-test"]}
    ]


def test_models_and_artifacts_stream_both_ways(report: dict[str, Any]) -> None:
    model = report["model"]
    assert model["export_code"] == "OK"
    assert model["first_message_has_model"] is True
    assert int(model["model_size"]) == model["exported_bytes"] > 0
    imported = report["imported"]
    assert int(imported["model_size"]) == model["exported_bytes"]
    assert imported["run_id"] == ""
    assert imported["metadata"] == {"source": "node", "layers": [500, 6]}
    artifact = report["artifact"]
    assert artifact["kinds"] == ["ARTIFACT_KIND_MODEL"]
    assert int(artifact["size_bytes"]) == artifact["downloaded_bytes"]
    assert artifact["sha256_matches"] is True


def test_watch_runs_on_one_bidirectional_stream(report: dict[str, Any]) -> None:
    first, second = (run["run_id"] for run in report["started"])
    assert report["watch_runs"] == {
        "code": "OK",
        "terminal": {first: "RUN_STATUS_COMPLETED", second: "RUN_STATUS_COMPLETED"},
    }


def test_cancelled_watch_duration_and_cancel_run(report: dict[str, Any]) -> None:
    assert report["cancelled_watch"]["code"] == "CANCELLED"
    assert report["cancelled_watch"]["messages"] >= 1
    assert report["time_budget"]["final_status"] == "RUN_STATUS_CANCELLED"
    assert report["time_budget"]["time_budget_s"] == 600  # {seconds: 600} arrived as the Duration
    resumed = report["resume_cancelled"]
    assert resumed["code"] == "FAILED_PRECONDITION"
    assert resumed["reason"] == "RUN_NOT_RESUMABLE"


def test_errors_decode_to_field_violations(report: dict[str, Any]) -> None:
    # proto-loader sends an enum string it does not know as 0: refused, never run as a default.
    assert report["unknown_enum"]["code"] == "INVALID_ARGUMENT"
    assert report["unknown_enum"]["violations"] == ["mode"]
    assert report["bad_values"]["code"] == "INVALID_ARGUMENT"
    assert report["bad_values"]["reason"] == "INVALID_ARGUMENT"
    assert set(report["bad_values"]["violations"]) == {"hyperparameters.alpha", "hyperparameters.gamma"}
    # A camelCase field name is not a field: run_id arrives empty and is named.
    assert report["camel_case_field"]["code"] == "INVALID_ARGUMENT"
    assert report["camel_case_field"]["violations"] == ["run_id"]


def test_delete_and_purge(report: dict[str, Any]) -> None:
    deleted = report["deleted"]
    assert deleted["run_id"] == report["time_budget"]["cancel_reply_run_id"]
    assert int(deleted["episodes_deleted"]) >= 0
    assert report["get_deleted"]["code"] == "NOT_FOUND"
    assert int(report["purge"]["purged_runs"]) >= 0
    assert report["purge"]["has_cutoff"] is True


def test_request_id_is_echoed_in_response_metadata(report: dict[str, Any]) -> None:
    assert report["request_id"]["echoed"] == report["request_id"]["sent"]
    assert report["error_request_id"]["echoed"] == report["error_request_id"]["sent"]  # errors too


def test_client_lock_pins_the_packages() -> None:
    lock = json.loads((CLIENT_DIR / "package-lock.json").read_text())
    pinned = lock["packages"][""]["dependencies"]
    assert pinned == {"@grpc/grpc-js": "1.14.7", "@grpc/proto-loader": "0.8.1", "protobufjs": "7.6.6"}


LOAD_DESCRIPTOR = """
import { readFileSync } from "node:fs";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
const definition = protoLoader.loadFileDescriptorSetFromBuffer(readFileSync(process.argv[1]), {
  keepCase: true, enums: String, longs: String, defaults: true, oneofs: true,
});
const api = grpc.loadPackageDefinition(definition);
console.log(JSON.stringify({
  trainer: Object.keys(api.taxidriver.trainer.v1.TrainerService.service),
  registry: Object.keys(api.taxidriver.registry.v1.RegistryService.service).length,
  health: Object.keys(api.grpc.health.v1.Health.service),
  bad_request: Boolean(definition["google.rpc.BadRequest"]),
}));
"""


def test_the_descriptor_set_loads_in_proto_loader() -> None:
    """`make descriptor`'s file is enough for a Node.js client: no .proto files, no include dirs."""
    install_client()
    subprocess.run(["make", "-s", "descriptor"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert NODE is not None
    result = subprocess.run(
        [NODE, "--input-type=module", "-e", LOAD_DESCRIPTOR, str(ROOT / "build" / "taxidriver-public.binpb")],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded == {
        "trainer": ["StartRun", "CancelRun", "ResumeRun", "ListAlgorithms"],
        "registry": 19,  # 18 + GetCurrentUser
        "health": ["Check", "Watch", "List"],
        "bad_request": True,
    }
