#!/usr/bin/env bash
# The project's own Rust services on top of the infra (scripts/stack/stack.sh start must have run).
# Usage: scripts/stack/services.sh {start|stop|status|build|start-one NAME|stop-one NAME}
#   start: stop running services, cargo build --release, esctl migrate, esctl provision,
#          start gateway, notification-writer, rule-evaluator, dispatcher and media-saga in the
#          background and wait for /readyz.
#          SKIP_BUILD=1 skips the cargo build (binaries must already exist).
#   start-one NAME / stop-one NAME: (re)start or stop one service from the binaries already
#          built, without migrating or provisioning (the fault tests replace one service).
# Every command sees the variables of .local/stack.env.
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/event-substrate/target}"
BIN_DIR="$CARGO_TARGET_DIR/release"
SERVICES=(gateway notification-writer rule-evaluator dispatcher media-saga)

load_env() {
  [[ -f "$STACK_ENV" ]] || die "$(rel "$STACK_ENV") missing: run the infra first (./taskw infra:start)"
  set -a
  # shellcheck disable=SC1090
  . "$STACK_ENV"
  set +a
  export RUST_LOG="${RUST_LOG:-info}"
}

port_of() {
  case "$1" in
    gateway) echo "$GATEWAY_PORT" ;;
    notification-writer) echo "$NOTIFICATION_WRITER_PORT" ;;
    rule-evaluator) echo "$RULE_EVALUATOR_PORT" ;;
    dispatcher) echo "$DISPATCHER_PORT" ;;
    media-saga) echo "$MEDIA_SAGA_PORT" ;;
  esac
}

ready_url() {
  case "$1" in
    gateway) echo "${GATEWAY_OPS_URL:-http://127.0.0.1:$GATEWAY_OPS_PORT}/readyz" ;;
    notification-writer) echo "http://127.0.0.1:$NOTIFICATION_WRITER_PORT/readyz" ;;
    rule-evaluator) echo "http://127.0.0.1:$RULE_EVALUATOR_PORT/readyz" ;;
    dispatcher) echo "http://127.0.0.1:$DISPATCHER_PORT/readyz" ;;
    media-saga) echo "http://127.0.0.1:$MEDIA_SAGA_PORT/readyz" ;;
  esac
}

build() {
  bash "$ROOT/scripts/stack/prereqs.sh" build
  say "cargo build --release -p gateway -p notification-writer -p rule-evaluator -p dispatcher -p media-saga -p esctl (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$ROOT" && cargo build --release -p gateway -p notification-writer -p rule-evaluator -p dispatcher -p media-saga -p esctl)
}

stop_one() {
  local name=$1 pid
  if pid=$(running_pid "$name" "release/$name"); then
    stop_pid "$name" "$pid" TERM 20 KILL
  else
    say "$name not running"
  fi
}

stop() {
  local i
  for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do stop_one "${SERVICES[$i]}"; done
}

start() {
  ensure_dirs
  load_env
  stop
  [[ "${SKIP_BUILD:-0}" == 1 ]] || build
  # the web app the gateway serves (npm ci + vite build, each only when its inputs changed)
  bash "$ROOT/scripts/stack/web.sh" build
  local name bin
  for bin in esctl "${SERVICES[@]}"; do
    [[ -x "$BIN_DIR/$bin" ]] || die "binary $BIN_DIR/$bin missing (cargo build failed or SKIP_BUILD=1 without a build)"
  done
  say "esctl migrate"
  (cd "$ROOT" && "$BIN_DIR/esctl" migrate) || die "esctl migrate failed"
  # the login webhook trigger's secret, readable only by the database owner (docs/security.md)
  "$BIN_DIR/esctl" secrets set-login-webhook-secret >/dev/null || die "esctl secrets set-login-webhook-secret failed"
  say "esctl provision"
  (cd "$ROOT" && "$BIN_DIR/esctl" provision) || die "esctl provision failed"
  for name in "${SERVICES[@]}"; do
    require_port_free "$name" "$(port_of "$name")"
    say "starting $name on 127.0.0.1:$(port_of "$name")"
    spawn "$name" "$ROOT" "$BIN_DIR/$name"
  done
  for name in "${SERVICES[@]}"; do
    local pid url
    pid=$(head -n1 "$(pidfile "$name")")
    url=$(ready_url "$name")
    wait_ready "$name" "$pid" "$SERVICE_READY_TIMEOUT" curl -sf -o /dev/null "$url"
  done
  say "web app: open http://127.0.0.1:$GATEWAY_PORT/ (sign up with any e-mail and a password of 8+ characters)"
}

start_one() {
  local name=$1 pid
  ensure_dirs
  load_env
  stop_one "$name"
  [[ -x "$BIN_DIR/$name" ]] || die "binary $BIN_DIR/$name missing (run ./taskw start first)"
  require_port_free "$name" "$(port_of "$name")"
  say "starting $name on 127.0.0.1:$(port_of "$name")"
  spawn "$name" "$ROOT" "$BIN_DIR/$name"
  pid=$(head -n1 "$(pidfile "$name")")
  wait_ready "$name" "$pid" "$SERVICE_READY_TIMEOUT" curl -sf -o /dev/null "$(ready_url "$name")"
}

known() {
  local name
  for name in "${SERVICES[@]}"; do [[ "$name" == "${1:-}" ]] && return 0; done
  die "unknown service '${1:-}' (${SERVICES[*]})"
}

status() {
  local name
  for name in "${SERVICES[@]}"; do
    status_line "$name" "release/$name" "$(port_of "$name")"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  build) build ;;
  start-one) known "${2:-}"; start_one "$2" ;;
  stop-one) known "${2:-}"; stop_one "$2" ;;
  *) echo "usage: $0 {start|stop|status|build|start-one NAME|stop-one NAME}" >&2; exit 2 ;;
esac
