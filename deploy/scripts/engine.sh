#!/usr/bin/env bash
# A private Docker engine for machines without one (CI, this dev box): Debian's docker.io
# dockerd on its own socket, data-root and pidfile, started in the background.
#   deploy/scripts/engine.sh start|stop|ping
# Env: ENGINE_DIR (default /tmp/td-docker), ENGINE_SOCKET (default unix://$ENGINE_DIR.sock).
# `start` installs docker.io and debootstrap with apt-get when they are missing and we are root.
set -euo pipefail
ENGINE_DIR=${ENGINE_DIR:-/tmp/td-docker}
ENGINE_SOCKET=${ENGINE_SOCKET:-unix://$ENGINE_DIR.sock}
PIDFILE="$ENGINE_DIR/dockerd.pid"
LOG="$ENGINE_DIR/dockerd.log"
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}

ping_engine() { DOCKER_HOST=$ENGINE_SOCKET "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

install_tools() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "engine: missing ${missing[*]}; install them (apt-get install -y ${missing[*]})" >&2
    return 1
  fi
  echo "engine: installing ${missing[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# One dockerd start: 0 once it answers, 1 when it died or never answered.
launch() {
  nohup dockerd --host "$ENGINE_SOCKET" --data-root "$ENGINE_DIR/data" --exec-root "$ENGINE_DIR/exec" \
    --pidfile "$PIDFILE" >"$LOG" 2>&1 &
  local pid=$!
  for _ in $(seq 1 60); do
    if ping_engine; then
      echo "engine: dockerd $(cat "$PIDFILE") serving $ENGINE_SOCKET"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.5
  done
  # Never answered: stop it before anything retries (the pidfile would still name it).
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  return 1
}

# A dockerd killed mid-write can leave its network store (bolt db) corrupt; the next start
# then panics in libnetwork ("reservePools ... index out of range"). The store holds only
# networks, rebuilt on demand (stack.sh creates its own): removing it loses no image or volume.
NETWORK_DB="$ENGINE_DIR/data/network/files/local-kv.db"
network_db_corrupt() {
  grep -q 'reservePools' "$LOG" 2>/dev/null && grep -qE 'panic|index out of range' "$LOG" 2>/dev/null
}

start() {
  if ping_engine; then
    echo "engine: already running at $ENGINE_SOCKET"
    return 0
  fi
  install_tools
  command -v "$DOCKER" >/dev/null || DOCKER=$(command -v /usr/bin/docker || command -v docker)
  mkdir -p "$ENGINE_DIR/data" "$ENGINE_DIR/exec"
  launch && return 0
  if network_db_corrupt && [ -f "$NETWORK_DB" ]; then
    echo "engine: dockerd panicked in libnetwork (reservePools): its network store is corrupt;" \
      "removing $NETWORK_DB (networks only) and starting once more" >&2
    cp "$LOG" "$LOG.panic" 2>/dev/null || true
    rm -f "$NETWORK_DB"
    launch && return 0
  fi
  echo "engine: dockerd did not start; last lines of $LOG:" >&2
  tail -n 30 "$LOG" >&2 || true
  return 1
}

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    echo "engine: dockerd $pid stopped"
  else
    echo "engine: no pidfile at $PIDFILE; nothing to stop"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  ping) ping_engine ;;
  *) echo "usage: $0 start|stop|ping" >&2; exit 2 ;;
esac
