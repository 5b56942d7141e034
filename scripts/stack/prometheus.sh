#!/usr/bin/env bash
# Prometheus 3.16.0 (Go module github.com/prometheus/prometheus v0.316.0, Apache-2.0) for the local
# stack: scrapes every service's /metrics every 5 s and evaluates the alerting rules of
# deploy/observability/rules/*.yml (docs/observability.md).
#   127.0.0.1:9095 (HTTP API: /api/v1/query, /api/v1/rules, /api/v1/alerts, /-/ready); data in
#   .local/data/prometheus (tsdb/, and prometheus.yml, generated on every start).
# Built once per machine into the tools cache (~/.cache/event-substrate/tools, SUBSTRATE_TOOLS_CACHE)
# with `go install` from the Go module proxy, prometheus and promtool together. A module build has
# no web UI assets (those are made by npm in a release build): the UI pages answer 500, the HTTP
# API and /metrics work. Built with the `remove_all_sd` tag (static targets only: no cloud service
# discovery SDKs to compile) and `netgo` like a release.
# Usage: scripts/stack/prometheus.sh {install|start|stop|status|config|url|promtool}
#   config    write and check .local/data/prometheus/prometheus.yml (promtool check config)
#   url       print the base URL (for .local/stack.env: PROMETHEUS_URL)
#   promtool  print the path of promtool (built when missing)
# A running Prometheus given `start` again re-reads its configuration and the rule files (SIGHUP).
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=prometheus
PROMETHEUS_VERSION=v0.316.0   # the Go module version of Prometheus 3.16.0 (v3.x.y tags are v0.3xy.0 modules)
PROMETHEUS_RELEASE=3.16.0
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9095}"
SCRAPE_INTERVAL=5s
PROM_HOME="${SUBSTRATE_TOOLS_CACHE:-$HOME/.cache/event-substrate/tools}/prometheus-$PROMETHEUS_VERSION"
PROMETHEUS="$PROM_HOME/bin/prometheus"
PROMTOOL="$PROM_HOME/bin/promtool"
PROM_DATA="$DATA_DIR/prometheus"
PROM_CONFIG="$PROM_DATA/prometheus.yml"
RULES_DIR="$ROOT/deploy/observability/rules"
PROM_URL="http://127.0.0.1:$PROMETHEUS_PORT"
PROMETHEUS_READY_TIMEOUT="${PROMETHEUS_READY_TIMEOUT:-60}"

VERSION_PKG=github.com/prometheus/common/version
BUILD_TAGS=netgo,remove_all_sd
BUILD_LDFLAGS="-s -X $VERSION_PKG.Version=$PROMETHEUS_RELEASE -X $VERSION_PKG.Revision=$PROMETHEUS_VERSION -X $VERSION_PKG.Branch=module -X $VERSION_PKG.BuildUser=event-substrate"

install() {
  ensure_dirs
  local stamp="$PROMETHEUS_VERSION tags=$BUILD_TAGS ldflags=$BUILD_LDFLAGS"
  if [[ -x "$PROMETHEUS" && -x "$PROMTOOL" && "$(cat "$PROM_HOME/build-flags" 2>/dev/null)" == "$stamp" ]]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "prometheus: go is not installed (needed to build Prometheus from the Go module proxy)"
  local log="$LOGS_DIR/prometheus-build.log" t0=$SECONDS
  say "building Prometheus $PROMETHEUS_RELEASE ($PROMETHEUS_VERSION) and promtool from the Go module proxy (log in $(rel "$log"); takes minutes)"
  mkdir -p "$PROM_HOME/bin"
  printf '\n---- %s go install github.com/prometheus/prometheus/cmd/{prometheus,promtool}@%s (%s) ----\n' \
    "$(date -Is)" "$PROMETHEUS_VERSION" "$BUILD_TAGS" >> "$log"
  # GOBIN is a staging folder, so a failed build never leaves half a pair; GOPATH/GOMODCACHE/
  # GOCACHE keep their defaults (the Go caches shared with the other tools). Run outside any Go
  # module. nice: a background build should not starve an interactive cargo build.
  rm -rf "$PROM_HOME/bin.tmp"
  if ! (cd "$PROM_HOME" && GOBIN="$PROM_HOME/bin.tmp" CGO_ENABLED=0 nice -n 10 \
      go install -trimpath -tags="$BUILD_TAGS" -ldflags="$BUILD_LDFLAGS" \
        "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
        "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION") >> "$log" 2>&1; then
    rm -rf "$PROM_HOME/bin.tmp"
    tail -n 40 "$log" >&2
    die "prometheus: building Prometheus failed; see $(rel "$log")"
  fi
  mv -f "$PROM_HOME/bin.tmp/prometheus" "$PROMETHEUS"
  mv -f "$PROM_HOME/bin.tmp/promtool" "$PROMTOOL"
  rm -rf "$PROM_HOME/bin.tmp"
  printf '%s\n' "$stamp" > "$PROM_HOME/build-flags"
  say "Prometheus built in $(( SECONDS - t0 ))s ($("$PROMETHEUS" --version 2>&1 | head -n1))"
}

# write_config OUT: the scrape configuration; one job per service (job = service name, plus a
# `service` target label), every SCRAPE_INTERVAL, and the rule files of the repository.
write_config() {
  local out=$1 name port
  {
    cat <<EOF
# Written by scripts/stack/prometheus.sh on every start; do not edit (edits are overwritten).
global:
  scrape_interval: $SCRAPE_INTERVAL
  scrape_timeout: 4s
  evaluation_interval: $SCRAPE_INTERVAL
  external_labels:
    environment: local
rule_files:
  - $RULES_DIR/*.yml
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ['127.0.0.1:$PROMETHEUS_PORT']
        labels: {service: prometheus}
EOF
    # the gateway's /metrics is on its operational listener, never on the public 8080
    for name in gateway notification-writer rule-evaluator dispatcher media-saga; do
      case "$name" in
        gateway) port=$GATEWAY_OPS_PORT ;;
        notification-writer) port=$NOTIFICATION_WRITER_PORT ;;
        rule-evaluator) port=$RULE_EVALUATOR_PORT ;;
        dispatcher) port=$DISPATCHER_PORT ;;
        media-saga) port=$MEDIA_SAGA_PORT ;;
      esac
      cat <<EOF
  - job_name: $name
    metrics_path: /metrics
    static_configs:
      - targets: ['127.0.0.1:$port']
        labels: {service: $name}
EOF
    done
  } > "$out"
}

# config: writes the configuration and checks it with the rule files it loads.
config() {
  install
  mkdir -p "$PROM_DATA"
  write_config "$PROM_CONFIG.new"
  local out
  if ! out=$("$PROMTOOL" check config "$PROM_CONFIG.new" 2>&1); then
    printf '%s\n' "$out" >&2
    rm -f "$PROM_CONFIG.new"
    die "prometheus: the configuration or a rule file in $(rel "$RULES_DIR") is invalid (promtool check config)"
  fi
  mv "$PROM_CONFIG.new" "$PROM_CONFIG"
}

pattern() { printf '%s --config.file=%s' "$PROMETHEUS" "$PROM_CONFIG"; }
is_running() { running_pid "$NAME" "$(pattern)"; }
prom_ready() { curl -sf --max-time 2 "$PROM_URL/-/ready" >/dev/null; }

# reloaded_since EPOCH: the last successful configuration reload happened at or after EPOCH.
reloaded_since() {
  curl -sf --max-time 2 "$PROM_URL/metrics" | awk -v since="$1" '
    $1 == "prometheus_config_last_reload_successful" { ok = $2 }
    $1 == "prometheus_config_last_reload_success_timestamp_seconds" { at = $2 + 0 }
    END { exit !(ok == 1 && at >= since) }'
}

start() {
  ensure_dirs
  config
  local pid
  if pid=$(is_running); then
    local since
    since=$(date +%s)
    kill -HUP "$pid"
    local t0=$SECONDS
    until reloaded_since "$since"; do
      (( SECONDS - t0 < 15 )) || die "prometheus: reloading the configuration failed; see $(rel "$(logfile "$NAME")")"
      sleep 0.3
    done
    say "$NAME already running (pid $pid); configuration and rules reloaded"
    return 0
  fi
  require_port_free "$NAME" "$PROMETHEUS_PORT"
  say "starting $NAME (Prometheus $PROMETHEUS_RELEASE) on 127.0.0.1:$PROMETHEUS_PORT"
  spawn "$NAME" "$PROM_DATA" "$PROMETHEUS" --config.file="$PROM_CONFIG" \
    --storage.tsdb.path="$PROM_DATA/tsdb" --storage.tsdb.retention.time=7d \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.external-url="$PROM_URL"
  pid=$(head -n1 "$(pidfile "$NAME")")
  wait_ready "$NAME" "$pid" "$PROMETHEUS_READY_TIMEOUT" prom_ready
}

stop() {
  local pid
  if pid=$(is_running); then
    stop_pid "$NAME" "$pid" TERM 30 KILL
  else
    say "$NAME not running"
  fi
}

status() { status_line "$NAME" "$(pattern)" "$PROMETHEUS_PORT"; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  config) config; say "wrote $(rel "$PROM_CONFIG")" ;;
  url) printf '%s\n' "$PROM_URL" ;;
  promtool) install >&2; printf '%s\n' "$PROMTOOL" ;;
  *) echo "usage: $0 {install|start|stop|status|config|url|promtool}" >&2; exit 2 ;;
esac
