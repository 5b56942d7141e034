#!/usr/bin/env bash
# Jaeger v1.76.0 (its `jaeger` binary is Jaeger v2.13.0, built on the OpenTelemetry Collector;
# Go module github.com/jaegertracing/jaeger, Apache-2.0) as the local stack's trace backend, with
# in-memory storage (bounded by max_traces; traces are gone when it stops).
#   127.0.0.1:4317 OTLP gRPC, 127.0.0.1:4318 OTLP HTTP (POST /v1/traces), 127.0.0.1:16686 query
#   API over HTTP (/api/services, /api/traces?service=, /api/v3/traces/{id}, /api/v3/traces?query.…),
#   127.0.0.1:16685 the same query API over gRPC, 127.0.0.1:13133 health check (GET /status),
#   127.0.0.1:8888 the collector's own Prometheus metrics (/metrics).
#   Ports: JAEGER_OTLP_GRPC_PORT, JAEGER_OTLP_HTTP_PORT, JAEGER_QUERY_PORT, JAEGER_QUERY_GRPC_PORT,
#   JAEGER_HEALTH_PORT, JAEGER_METRICS_PORT. Nothing else listens (no Jaeger/Zipkin receivers, no
#   remote sampling, zpages, expvar or pprof extensions).
# Config: stack/jaeger/config.yaml (template, @PLACEHOLDERS@ filled on every start into
# .local/data/jaeger/config.yaml).
# Built once per machine into the tools cache (~/.cache/event-substrate/tools, SUBSTRATE_TOOLS_CACHE)
# from the Go module proxy. `go install github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0` is
# refused (Jaeger's go.mod has a replace directive), so stack/jaeger is a wrapper module (`tool`
# directive, the same replace, pinned go.sum) whose tool package is built. A module build has no
# UI assets (those are made by npm in a release build): the UI path serves a placeholder page,
# the APIs work.
# Usage: scripts/stack/jaeger.sh {install|start|stop|status|url|otlp-endpoint}
#   url            print the query API base URL (for .local/stack.env: JAEGER_URL)
#   otlp-endpoint  print the OTLP/HTTP base endpoint (for .local/stack.env:
#                  OTEL_EXPORTER_OTLP_ENDPOINT; exporters append /v1/traces)
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=jaeger
JAEGER_VERSION=v1.76.0
JAEGER_V2_VERSION=v2.13.0   # the version the v2 `jaeger` binary of the v1.76.0 release reports
JAEGER_OTLP_GRPC_PORT="${JAEGER_OTLP_GRPC_PORT:-4317}"
JAEGER_OTLP_HTTP_PORT="${JAEGER_OTLP_HTTP_PORT:-4318}"
JAEGER_QUERY_PORT="${JAEGER_QUERY_PORT:-16686}"
JAEGER_QUERY_GRPC_PORT="${JAEGER_QUERY_GRPC_PORT:-16685}"
JAEGER_HEALTH_PORT="${JAEGER_HEALTH_PORT:-13133}"
JAEGER_METRICS_PORT="${JAEGER_METRICS_PORT:-8888}"
JAEGER_MAX_TRACES="${JAEGER_MAX_TRACES:-100000}"
JAEGER_SRC="$ROOT/stack/jaeger"   # wrapper Go module + config template
JAEGER_HOME="${SUBSTRATE_TOOLS_CACHE:-$HOME/.cache/event-substrate/tools}/jaeger-$JAEGER_VERSION"
JAEGER="$JAEGER_HOME/bin/jaeger"
JAEGER_DATA="$DATA_DIR/jaeger"
JAEGER_CONFIG="$JAEGER_DATA/config.yaml"
JAEGER_URL="http://127.0.0.1:$JAEGER_QUERY_PORT"
JAEGER_OTLP_ENDPOINT="http://127.0.0.1:$JAEGER_OTLP_HTTP_PORT"
JAEGER_READY_TIMEOUT="${JAEGER_READY_TIMEOUT:-60}"

VERSION_PKG=github.com/jaegertracing/jaeger/internal/version
BUILD_LDFLAGS="-s -X $VERSION_PKG.latestVersion=$JAEGER_V2_VERSION -X $VERSION_PKG.commitSHA=$JAEGER_VERSION"

# The wrapper module's hash is part of the stamp: a change of go.mod/go.sum rebuilds.
build_stamp() {
  printf '%s %s ldflags=%s' "$JAEGER_VERSION" \
    "$(cat "$JAEGER_SRC/go.mod" "$JAEGER_SRC/go.sum" | sha256sum | cut -c1-12)" "$BUILD_LDFLAGS"
}

install() {
  ensure_dirs
  local stamp
  stamp=$(build_stamp)
  if [[ -x "$JAEGER" && "$(cat "$JAEGER_HOME/build-flags" 2>/dev/null)" == "$stamp" ]]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "jaeger: go is not installed (needed to build Jaeger from the Go module proxy)"
  local log="$LOGS_DIR/jaeger-build.log" t0=$SECONDS
  say "building Jaeger $JAEGER_VERSION ($JAEGER_V2_VERSION) from the Go module proxy (log in $(rel "$log"); ~7 min cold on 2 cores)"
  mkdir -p "$JAEGER_HOME/bin"
  printf '\n---- %s go build github.com/jaegertracing/jaeger/cmd/jaeger in %s (%s) ----\n' \
    "$(date -Is)" "$(rel "$JAEGER_SRC")" "$stamp" >> "$log"
  # Built into a staging file, so a failed build never replaces a working binary; -mod=readonly
  # never writes to the wrapper module. GOPATH/GOMODCACHE/GOCACHE keep their defaults (the Go
  # caches shared with the other tools). nice: a background build should not starve an
  # interactive cargo build.
  rm -f "$JAEGER.tmp"
  if ! (cd "$JAEGER_SRC" && CGO_ENABLED=0 nice -n 10 go build -mod=readonly -trimpath \
      -ldflags="$BUILD_LDFLAGS" -o "$JAEGER.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) >> "$log" 2>&1; then
    rm -f "$JAEGER.tmp"
    tail -n 40 "$log" >&2
    die "jaeger: building Jaeger failed; see $(rel "$log")"
  fi
  mv -f "$JAEGER.tmp" "$JAEGER"
  printf '%s\n' "$stamp" > "$JAEGER_HOME/build-flags"
  say "Jaeger built in $(( SECONDS - t0 ))s ($("$JAEGER" version 2>/dev/null | tr -d '\n' | cut -c1-120))"
}

# write_config OUT: the template with its placeholders filled in.
write_config() {
  sed -e "s|@OTLP_GRPC_PORT@|$JAEGER_OTLP_GRPC_PORT|g" \
      -e "s|@OTLP_HTTP_PORT@|$JAEGER_OTLP_HTTP_PORT|g" \
      -e "s|@QUERY_PORT@|$JAEGER_QUERY_PORT|g" \
      -e "s|@QUERY_GRPC_PORT@|$JAEGER_QUERY_GRPC_PORT|g" \
      -e "s|@HEALTH_PORT@|$JAEGER_HEALTH_PORT|g" \
      -e "s|@METRICS_PORT@|$JAEGER_METRICS_PORT|g" \
      -e "s|@MAX_TRACES@|$JAEGER_MAX_TRACES|g" \
      "$JAEGER_SRC/config.yaml" > "$1"
  local left   # placeholders left outside comments
  left=$(sed 's/#.*//' "$1" | grep -o '@[A-Z_]*@' | sort -u | tr '\n' ' ' || true)
  [[ -z "$left" ]] || die "jaeger: unfilled placeholders in $(rel "$1"): $left"
}

pattern() { printf '%s --config=%s' "$JAEGER" "$JAEGER_CONFIG"; }
is_running() { running_pid "$NAME" "$(pattern)"; }
# Ready: the health check reports every component up, and the query API answers.
jaeger_ready() {
  curl -sf --max-time 2 "http://127.0.0.1:$JAEGER_HEALTH_PORT/status" >/dev/null \
    && curl -sf --max-time 2 "$JAEGER_URL/api/services" >/dev/null
}

start() {
  ensure_dirs
  install
  local pid
  if pid=$(is_running); then
    say "$NAME already running (pid $pid)"
    return 0
  fi
  local port
  for port in "$JAEGER_OTLP_GRPC_PORT" "$JAEGER_OTLP_HTTP_PORT" "$JAEGER_QUERY_PORT" "$JAEGER_QUERY_GRPC_PORT" "$JAEGER_HEALTH_PORT" "$JAEGER_METRICS_PORT"; do
    require_port_free "$NAME" "$port"
  done
  mkdir -p "$JAEGER_DATA"
  write_config "$JAEGER_CONFIG.new"
  mv "$JAEGER_CONFIG.new" "$JAEGER_CONFIG"
  say "starting $NAME (Jaeger $JAEGER_VERSION, memory storage) on 127.0.0.1: OTLP $JAEGER_OTLP_GRPC_PORT (gRPC) / $JAEGER_OTLP_HTTP_PORT (HTTP), query $JAEGER_QUERY_PORT"
  spawn "$NAME" "$JAEGER_DATA" "$JAEGER" --config="$JAEGER_CONFIG"
  pid=$(head -n1 "$(pidfile "$NAME")")
  wait_ready "$NAME" "$pid" "$JAEGER_READY_TIMEOUT" jaeger_ready
}

stop() {
  local pid
  if pid=$(is_running); then
    stop_pid "$NAME" "$pid" TERM 30 KILL
  else
    say "$NAME not running"
  fi
}

status() { status_line "$NAME" "$(pattern)" "$JAEGER_QUERY_PORT"; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) printf '%s\n' "$JAEGER_URL" ;;
  otlp-endpoint) printf '%s\n' "$JAEGER_OTLP_ENDPOINT" ;;
  *) echo "usage: $0 {install|start|stop|status|url|otlp-endpoint}" >&2; exit 2 ;;
esac
