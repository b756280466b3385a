"""deploy/scripts/engine.sh recovers from a corrupt network store by itself.

A dockerd killed mid-write once left /tmp/td-docker/data/network/files/local-kv.db corrupt and
every later start panicked in libnetwork (`reservePools: index out of range`). The script must
notice that in dockerd's log, remove the store (networks only) and start once more, saying so.
Stand-ins for dockerd and docker play the engine: the real one needs root and minutes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "deploy" / "scripts" / "engine.sh"

# Panics like the real one while the network store exists; otherwise serves until killed.
FAKE_DOCKERD = r"""#!/usr/bin/env bash
while [ $# -gt 0 ]; do
  case "$1" in
    --data-root) data=$2; shift 2 ;;
    --pidfile) pidfile=$2; shift 2 ;;
    *) shift ;;
  esac
done
echo "$$" >> "$ENGINE_DIR/starts"
if [ -f "$data/network/files/local-kv.db" ] && [ -n "${FAKE_PANIC:-}" ]; then
  echo 'panic: runtime error: index out of range [0] with length 0'
  echo 'github.com/docker/docker/libnetwork.(*Controller).reservePools(...)'
  exit 2
fi
echo "$$" > "$pidfile"
touch "$ENGINE_DIR/serving"
trap 'rm -f "$ENGINE_DIR/serving"; exit 0' TERM
while :; do sleep 0.1; done
"""
FAKE_DOCKER = """#!/usr/bin/env bash
[ "$1" = version ] && [ -f "$ENGINE_DIR/serving" ] && { echo 99.0; exit 0; }
exit 1
"""


def run_engine(
    tmp_path: Path, command: str, dockerd: str = FAKE_DOCKERD, **env: str
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in {"dockerd": dockerd, "docker": FAKE_DOCKER, "debootstrap": "#!/bin/sh\n"}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    engine_dir = tmp_path / "engine"
    return subprocess.run(
        ["bash", str(ENGINE), command],
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "DOCKER": str(bin_dir / "docker"),
            "ENGINE_DIR": str(engine_dir),
            "ENGINE_SOCKET": f"unix://{tmp_path}/engine.sock",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_corrupt_network_store_is_removed_and_the_engine_started_once_more(tmp_path: Path) -> None:
    store = tmp_path / "engine" / "data" / "network" / "files" / "local-kv.db"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"\x00corrupt")
    try:
        started = run_engine(tmp_path, "start", FAKE_PANIC="1")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "network store is corrupt" in started.stderr and str(store) in started.stderr
        assert "serving" in started.stdout
        assert not store.exists()
        # Two starts: the one that panicked, then the one that serves.
        assert len((tmp_path / "engine" / "starts").read_text().split()) == 2
        assert "reservePools" in (tmp_path / "engine" / "dockerd.log.panic").read_text()
    finally:
        stopped = run_engine(tmp_path, "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (tmp_path / "engine" / "serving").exists()


def test_another_failure_is_reported_not_retried(tmp_path: Path) -> None:
    """Without the libnetwork panic nothing is deleted: the log's tail is shown and start fails."""
    store = tmp_path / "engine" / "data" / "network" / "files" / "local-kv.db"
    store.parent.mkdir(parents=True)
    store.write_bytes(b"fine")
    broken = '#!/bin/sh\necho "$$" >> "$ENGINE_DIR/starts"; echo "failed to mount overlay"; exit 1\n'
    failed = run_engine(tmp_path, "start", dockerd=broken)
    assert failed.returncode == 1
    assert "failed to mount overlay" in failed.stderr
    assert store.exists()
    assert len((tmp_path / "engine" / "starts").read_text().split()) == 1
