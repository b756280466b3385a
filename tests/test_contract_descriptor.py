"""The contract other backends consume: `make descriptor` and the buf module under protos/."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from tests.support import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("npm") is None, reason="npm is not installed: buf (from npm) cannot build the descriptor"
)

DESCRIPTOR = ROOT / "build" / "taxidriver-public.binpb"


def build_descriptor() -> descriptor_pb2.FileDescriptorSet:
    subprocess.run(["make", "-s", "descriptor"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(DESCRIPTOR.read_bytes())
    return files


def test_descriptor_holds_the_public_api_with_every_import() -> None:
    files = build_descriptor()
    # A pool that knows nothing (not even the well-known types) must accept every file:
    # the set is self-contained, in dependency order.
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    names = {file.name for file in files.file}
    assert {
        "taxidriver/trainer/v1/trainer_service.proto",
        "taxidriver/registry/v1/registry_service.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "grpc/health/v1/health.proto",
        "google/protobuf/struct.proto",
    } <= names
    trainer = pool.FindServiceByName("taxidriver.trainer.v1.TrainerService")
    assert [m.name for m in trainer.methods] == ["StartRun", "CancelRun", "ResumeRun", "ListAlgorithms"]
    assert "WatchRuns" in [m.name for m in pool.FindServiceByName("taxidriver.registry.v1.RegistryService").methods]
    violation = pool.FindMessageTypeByName("google.rpc.BadRequest.FieldViolation")
    assert "field" in violation.fields_by_name
    assert pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Check"]
    # The shared vocabulary travels too: every ErrorInfo reason, and the status traits option.
    assert "ERROR_REASON_LEASE_LOST" in pool.FindEnumTypeByName("taxidriver.reasons.v1.ErrorReason").values_by_name
    assert pool.FindExtensionByName("taxidriver.options.v1.status_traits")
    # Internal contracts stay out of what clients are handed.
    assert not any(name.startswith(("taxidriver/ingest/", "taxidriver/auth/")) for name in names)
    # Comments travel with it (clients and tools show them).
    trainer_file = next(f for f in files.file if f.name == "taxidriver/trainer/v1/trainer_service.proto")
    comments = " ".join(loc.leading_comments for loc in trainer_file.source_code_info.location)
    assert "Validates, registers the run" in comments


def test_buf_module_builds_offline_with_its_vendored_dependencies(tmp_path) -> None:
    """protos/ alone (no registry, no Python packages) compiles, lint included."""
    buf = ROOT / ".stamps" / "node" / "node_modules" / ".bin" / "buf"
    subprocess.run(["make", "-s", ".stamps/buf"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    image = tmp_path / "image.binpb"
    subprocess.run([str(buf), "build", "-o", str(image)], cwd=ROOT / "protos", check=True, timeout=120)
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(image.read_bytes())
    names = {file.name for file in files.file}
    assert {"google/rpc/error_details.proto", "grpc/health/v1/health.proto"} <= names
    assert "taxidriver/ingest/v1/ingest_service.proto" in names
    lint = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
