# A throw-away redis-server for the test suite. Source this file, then call apimw_redis_start:
#
#   source scripts/redis-server.sh
#   apimw_redis_start
#
# - keeps $APIMW_TEST_REDIS_URL if it is already set (a server you run yourself);
# - installs redis-server with apt-get when it is missing and we are root on Debian/Ubuntu;
# - starts it on a free loopback port, nothing persisted, in the background;
# - exports APIMW_TEST_REDIS_URL=redis://127.0.0.1:PORT/0 and stops the server on exit.
# Without redis-server (and no way to install it) it fails when APIMW_REDIS_REQUIRED is set
# (the test script sets it), else says so and returns 0: the Redis tests then skip.
#
# apimw_redis_cluster_start does the same for a 3-node Redis Cluster (no replicas):
# `redis-server --cluster-enabled yes` x3 on free loopback ports, `redis-cli --cluster create`,
# then it waits for cluster_state:ok and exports APIMW_TEST_REDIS_CLUSTER_URL (kept if set).
# shellcheck shell=bash

APIMW_REDIS_PID=""
APIMW_REDIS_DIR=""
APIMW_REDIS_CLUSTER_PIDS=""
APIMW_REDIS_CLUSTER_DIR=""

apimw_redis_stop_all() {
  apimw_redis_stop
  apimw_redis_cluster_stop
}

apimw_redis_cluster_stop() {
  local pid
  for pid in $APIMW_REDIS_CLUSTER_PIDS; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  APIMW_REDIS_CLUSTER_PIDS=""
  if [ -n "$APIMW_REDIS_CLUSTER_DIR" ]; then
    rm -rf "$APIMW_REDIS_CLUSTER_DIR"
    APIMW_REDIS_CLUSTER_DIR=""
  fi
}

apimw_redis_stop() {
  if [ -n "$APIMW_REDIS_PID" ]; then
    kill "$APIMW_REDIS_PID" 2>/dev/null || true
    wait "$APIMW_REDIS_PID" 2>/dev/null || true
    APIMW_REDIS_PID=""
  fi
  if [ -n "$APIMW_REDIS_DIR" ]; then
    rm -rf "$APIMW_REDIS_DIR"
    APIMW_REDIS_DIR=""
  fi
}

apimw_redis_install() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  fi
  command -v redis-server >/dev/null 2>&1
}

apimw_redis_start() {
  if [ -n "${APIMW_TEST_REDIS_URL:-}" ]; then
    echo "== redis: using APIMW_TEST_REDIS_URL"
    return 0
  fi
  if ! apimw_redis_install; then
    if [ -n "${APIMW_REDIS_REQUIRED:-}" ]; then
      echo "== redis: redis-server is missing and could not be installed" >&2
      return 1
    fi
    echo "== redis: redis-server not available; Redis tests will skip"
    return 0
  fi
  local port
  port="$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  APIMW_REDIS_DIR="$(mktemp -d)"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --dir "$APIMW_REDIS_DIR" --loglevel warning >"$APIMW_REDIS_DIR/redis.log" 2>&1 &
  APIMW_REDIS_PID=$!
  trap apimw_redis_stop_all EXIT
  local tries=0
  until "${PYTHON:-python3}" - "$port" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5) as s:
    s.sendall(b"PING\r\n")
    sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
  do
    tries=$((tries + 1))
    if [ "$tries" -ge 100 ] || ! kill -0 "$APIMW_REDIS_PID" 2>/dev/null; then
      echo "== redis: redis-server did not start:" >&2
      cat "$APIMW_REDIS_DIR/redis.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  export APIMW_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
  echo "== redis: $(redis-server --version | cut -d' ' -f1-3) on $APIMW_TEST_REDIS_URL"
}

apimw_redis_cluster_start() {
  if [ -n "${APIMW_TEST_REDIS_CLUSTER_URL:-}" ]; then
    echo "== redis cluster: using APIMW_TEST_REDIS_CLUSTER_URL"
    return 0
  fi
  if ! apimw_redis_install || ! command -v redis-cli >/dev/null 2>&1; then
    if [ -n "${APIMW_REDIS_REQUIRED:-}" ]; then
      echo "== redis cluster: redis-server or redis-cli is missing" >&2
      return 1
    fi
    echo "== redis cluster: redis-server/redis-cli not available; cluster tests will skip"
    return 0
  fi
  local started=$SECONDS ports port nodes=""
  # Free ports whose cluster bus ports (port + 10000) are free too.
  ports="$("${PYTHON:-python3}" - <<'PY'
import random, socket
ports = []
while len(ports) < 3:
    port = random.randrange(20000, 50000)
    if any(abs(port - p) in (0, 10000) for p in ports):
        continue
    try:
        for candidate in (port, port + 10000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", candidate))
    except OSError:
        continue
    ports.append(port)
print(*ports)
PY
)"
  APIMW_REDIS_CLUSTER_DIR="$(mktemp -d)"
  trap apimw_redis_stop_all EXIT
  for port in $ports; do
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
      --cluster-enabled yes --cluster-config-file "$APIMW_REDIS_CLUSTER_DIR/nodes-$port.conf" \
      --cluster-node-timeout 5000 --dir "$APIMW_REDIS_CLUSTER_DIR" --loglevel warning \
      >>"$APIMW_REDIS_CLUSTER_DIR/redis.log" 2>&1 &
    APIMW_REDIS_CLUSTER_PIDS="$APIMW_REDIS_CLUSTER_PIDS $!"
    nodes="$nodes 127.0.0.1:$port"
  done
  local tries=0
  for port in $ports; do
    until [ "$(redis-cli -p "$port" ping 2>/dev/null)" = "PONG" ]; do
      tries=$((tries + 1))
      if [ "$tries" -ge 150 ]; then
        echo "== redis cluster: a node did not start:" >&2
        cat "$APIMW_REDIS_CLUSTER_DIR/redis.log" >&2 || true
        return 1
      fi
      sleep 0.1
    done
  done
  # shellcheck disable=SC2086 # one argument per node
  if ! redis-cli --cluster create $nodes --cluster-replicas 0 --cluster-yes \
    >"$APIMW_REDIS_CLUSTER_DIR/create.log" 2>&1; then
    echo "== redis cluster: redis-cli --cluster create failed:" >&2
    cat "$APIMW_REDIS_CLUSTER_DIR/create.log" >&2 || true
    return 1
  fi
  tries=0
  for port in $ports; do
    until redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok'; do
      tries=$((tries + 1))
      if [ "$tries" -ge 300 ]; then
        echo "== redis cluster: cluster_state is not ok" >&2
        return 1
      fi
      sleep 0.1
    done
  done
  set -- $ports
  export APIMW_TEST_REDIS_CLUSTER_URL="redis://127.0.0.1:$1"
  echo "== redis cluster: 3 nodes ($ports) on $APIMW_TEST_REDIS_CLUSTER_URL, up in $((SECONDS - started))s"
}
