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
# shellcheck shell=bash

APIMW_REDIS_PID=""
APIMW_REDIS_DIR=""

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
  trap apimw_redis_stop EXIT
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
