#!/usr/bin/env bash
# Infra orchestration for the local stack: postgres -> kafka + registry + s3 + kratos (+ prometheus,
# jaeger), plus .local/stack.env.
# Usage: scripts/stack/stack.sh {install|start|stop|status|env|purge|logs NAME}
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

S="$ROOT/scripts/stack"

install() {
  ensure_dirs
  bash "$S/prereqs.sh" build
  bash "$S/postgres.sh" install
  bash "$S/kafka.sh" install
  bash "$S/registry.sh" install
  bash "$S/s3.sh" install
  bash "$S/kratos.sh" install
  bash "$S/prometheus.sh" install
  bash "$S/jaeger.sh" install
}

# The key that seals rule action secrets (AES-256-GCM, 32 random bytes), made once per machine
# and kept in .local/data/secrets.env as SECRETS_KEYS (`id:base64`, comma-separated; the first
# seals). To rotate: put a new `esctl secrets generate-key --id …` entry first, restart, then
# `esctl secrets rotate`.
ensure_secrets_key() {
  grep -q "^SECRETS_KEYS=" "$SECRETS_ENV" && return 0
  ( umask 077; printf 'SECRETS_KEYS=local1:%s\n' "$(head -c 32 /dev/urandom | base64 | tr -d '\n')" >> "$SECRETS_ENV" )
}

write_env() {
  ensure_dirs
  ensure_secrets
  ensure_secrets_key
  local JWT_SECRET LOGIN_WEBHOOK_SECRET MEDIA_WEBHOOK_SECRET S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY API_KEY_PEPPER
  API_KEY_PEPPER=$(secret API_KEY_PEPPER)
  JWT_SECRET=$(secret JWT_SECRET)
  LOGIN_WEBHOOK_SECRET=$(secret LOGIN_WEBHOOK_SECRET)
  MEDIA_WEBHOOK_SECRET=$(secret MEDIA_WEBHOOK_SECRET)
  S3_ACCESS_KEY_ID=$(secret S3_ACCESS_KEY_ID)
  S3_SECRET_ACCESS_KEY=$(secret S3_SECRET_ACCESS_KEY)
  local kafka="127.0.0.1:$KAFKA_PORT"
  local sr="http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
  local db="postgres://postgres:postgres@127.0.0.1:$PG_PORT/postgres"
  local db_ca
  db_ca=$(bash "$S/postgres.sh" ca-file)   # the CA of the server's TLS certificate
  local routes="${SUBSTRATE_ROUTES_FILE:-$ROOT/routes.yaml}"
  local s3="http://127.0.0.1:$S3_PORT"
  local jwks="http://127.0.0.1:$KRATOS_JWKS_PORT/jwks.json"
  cat > "$STACK_ENV.tmp" <<EOF
# Written by scripts/stack/stack.sh on every start; do not edit (edits are overwritten).
GATEWAY_URL=http://127.0.0.1:$GATEWAY_PORT
GATEWAY_OPS_URL=http://127.0.0.1:$GATEWAY_OPS_PORT
API_KEY_PEPPER=$API_KEY_PEPPER
KAFKA_BOOTSTRAP_SERVERS=$kafka
SCHEMA_REGISTRY_URL=$sr
DATABASE_URL=$db
DATABASE_CA_FILE=$db_ca
JWT_SECRET=$JWT_SECRET
LOGIN_WEBHOOK_SECRET=$LOGIN_WEBHOOK_SECRET
MEDIA_SAGA_URL=http://127.0.0.1:$MEDIA_SAGA_PORT
MEDIA_WEBHOOK_SECRET=$MEDIA_WEBHOOK_SECRET
S3_ENDPOINT=$s3
S3_REGION=$S3_REGION
S3_ACCESS_KEY_ID=$S3_ACCESS_KEY_ID
S3_SECRET_ACCESS_KEY=$S3_SECRET_ACCESS_KEY
S3_MEDIA_BUCKET=$S3_MEDIA_BUCKET
S3_ARCHIVE_BUCKET=$S3_ARCHIVE_BUCKET
KRATOS_PUBLIC_URL=http://127.0.0.1:$KRATOS_PUBLIC_PORT
KRATOS_ADMIN_URL=http://127.0.0.1:$KRATOS_ADMIN_PORT
KRATOS_JWKS_URL=$jwks
KRATOS_TOKEN_TEMPLATE=gateway
KRATOS_BIN=$(bash "$S/kratos.sh" bin)
KRATOS_CONFIG=$(bash "$S/kratos.sh" config)
# Prometheus scraping every service's /metrics with the rules of deploy/observability (docs/observability.md).
PROMETHEUS_URL=$(bash "$S/prometheus.sh" url)
# Jaeger (in-memory trace store): its query API, and the OTLP/HTTP base endpoint the services
# export spans to (exporters append /v1/traces).
JAEGER_URL=$(bash "$S/jaeger.sh" url)
OTEL_EXPORTER_OTLP_ENDPOINT=$(bash "$S/jaeger.sh" otlp-endpoint)
SUBSTRATE_KAFKA__BOOTSTRAP_SERVERS=$kafka
SUBSTRATE_SCHEMA_REGISTRY__URL=$sr
SUBSTRATE_DATABASE__URL=$db
SUBSTRATE_AUTH__JWT_SECRET=$JWT_SECRET
# Kratos' tokenizer JWTs (ES256), beside the HS256 secret that esctl token and the tests use.
SUBSTRATE_AUTH__JWKS_URL=$jwks
SUBSTRATE_WEBHOOKS__LOGIN_SECRET=$LOGIN_WEBHOOK_SECRET
SUBSTRATE_SECRETS__KEYS=$(secret SECRETS_KEYS)
SUBSTRATE_GATEWAY__LISTEN=127.0.0.1:$GATEWAY_PORT
SUBSTRATE_GATEWAY__OPS_LISTEN=127.0.0.1:$GATEWAY_OPS_PORT
SUBSTRATE_API_KEYS__PEPPER=$API_KEY_PEPPER
SUBSTRATE_GATEWAY__ROUTES_FILE=$routes
SUBSTRATE_GATEWAY__AVRO_DIR=$ROOT/avro
# The web app (web/dist, built by scripts/stack/web.sh) on the gateway's origin; it signs in with
# Kratos and PUTs/GETs media straight to the S3 endpoint's presigned URLs.
SUBSTRATE_GATEWAY__WEB__ROOT=$ROOT/web/dist
SUBSTRATE_GATEWAY__WEB__AUTH_URL=http://127.0.0.1:$KRATOS_PUBLIC_PORT
SUBSTRATE_GATEWAY__WEB__CONNECT_ORIGINS=[$s3]
WEB_URL=http://127.0.0.1:$GATEWAY_PORT
SUBSTRATE_AUTH__AUDIENCE=authenticated
SUBSTRATE_NOTIFICATION_WRITER__LISTEN=127.0.0.1:$NOTIFICATION_WRITER_PORT
SUBSTRATE_RULE_EVALUATOR__LISTEN=127.0.0.1:$RULE_EVALUATOR_PORT
SUBSTRATE_RULE_EVALUATOR__AVRO_DIR=$ROOT/avro
SUBSTRATE_DISPATCHER__LISTEN=127.0.0.1:$DISPATCHER_PORT
SUBSTRATE_DISPATCHER__AVRO_DIR=$ROOT/avro
# Local receivers live on loopback; outside the local stack the SSRF guard stays on.
SUBSTRATE_DISPATCHER__HTTP__ALLOW_PRIVATE_TARGETS=true
SUBSTRATE_MEDIA_SAGA__LISTEN=127.0.0.1:$MEDIA_SAGA_PORT
SUBSTRATE_MEDIA_SAGA__AVRO_DIR=$ROOT/avro
SUBSTRATE_MEDIA_SAGA__BUCKET=$S3_MEDIA_BUCKET
SUBSTRATE_MEDIA_SAGA__WEBHOOK_SECRET=$MEDIA_WEBHOOK_SECRET
SUBSTRATE_MEDIA__BUCKET=$S3_MEDIA_BUCKET
SUBSTRATE_S3__ENDPOINT=$s3
SUBSTRATE_S3__REGION=$S3_REGION
SUBSTRATE_S3__ACCESS_KEY_ID=$S3_ACCESS_KEY_ID
SUBSTRATE_S3__SECRET_ACCESS_KEY=$S3_SECRET_ACCESS_KEY
EOF
  chmod 600 "$STACK_ENV.tmp"
  mv "$STACK_ENV.tmp" "$STACK_ENV"
  say "wrote $(rel "$STACK_ENV")"
}

start() {
  local t0=$SECONDS
  ensure_dirs
  install   # sequential: concurrent Maven runs could race on ~/.m2
  ensure_secrets   # before the parallel starts (s3.sh reads the S3 keys)
  bash "$S/postgres.sh" start
  # kafka, registry and kratos (which only need postgres) and s3 start in parallel; kratos' login
  # hook calls the gateway, which is needed only at login time; prometheus needs nothing (it
  # scrapes the services once they run), nor does jaeger (the services export spans to it)
  local kpid rpid spid xpid ppid jpid krc=0 rrc=0 src=0 xrc=0 prc=0 jrc=0
  bash "$S/kafka.sh" start & kpid=$!
  bash "$S/registry.sh" start & rpid=$!
  bash "$S/s3.sh" start & spid=$!
  bash "$S/kratos.sh" start & xpid=$!
  bash "$S/prometheus.sh" start & ppid=$!
  bash "$S/jaeger.sh" start & jpid=$!
  wait "$kpid" || krc=$?
  wait "$rpid" || rrc=$?
  wait "$spid" || src=$?
  wait "$xpid" || xrc=$?
  wait "$ppid" || prc=$?
  wait "$jpid" || jrc=$?
  (( krc == 0 && rrc == 0 && src == 0 && xrc == 0 && prc == 0 && jrc == 0 )) || exit 1
  write_env
  say "infra up in $(( SECONDS - t0 ))s"
}

stop() {
  # reverse order; registry and kratos before postgres (they hold connection pools)
  bash "$S/jaeger.sh" stop
  bash "$S/prometheus.sh" stop
  bash "$S/kratos.sh" stop
  bash "$S/registry.sh" stop
  bash "$S/s3.sh" stop
  bash "$S/kafka.sh" stop
  bash "$S/postgres.sh" stop
}

status() {
  bash "$S/postgres.sh" status
  bash "$S/kafka.sh" status
  bash "$S/registry.sh" status
  bash "$S/s3.sh" status
  bash "$S/kratos.sh" status
  bash "$S/prometheus.sh" status
  bash "$S/jaeger.sh" status
}

purge() {
  local pgdata="$DATA_DIR/postgres" target=""
  [[ -L "$pgdata" ]] && target=$(dirname "$(readlink -f "$pgdata")")
  rm -rf "$DATA_DIR" "$LOGS_DIR" "$RUN_DIR" "$STACK_ENV"
  # data kept outside the repo (see postgres.sh) goes too
  if [[ -n "$target" && "$target" == /var/tmp/event-substrate-* ]]; then
    rm -rf "$target"
  fi
  say "purged .local/{data,logs,run} and .local/stack.env (kept .local/tools)"
}

logs() {
  local name=${1:-}
  case "$name" in
    kafka|registry|postgres|s3|kratos|kratos-jwks|prometheus|jaeger|gateway|notification-writer|rule-evaluator|dispatcher|media-saga) ;;
    *) die "unknown component '$name' (kafka, registry, postgres, s3, kratos, kratos-jwks, prometheus, jaeger, gateway, notification-writer, rule-evaluator, dispatcher, media-saga)" ;;
  esac
  local f
  f=$(logfile "$name")
  [[ -f "$f" ]] || die "no log yet: $(rel "$f")"
  if [[ -n "${CI:-}" ]]; then
    tail -n 200 "$f"
  else
    exec tail -n 200 -F "$f"
  fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) write_env ;;
  purge) purge ;;
  logs) shift; logs "$@" ;;
  *) echo "usage: $0 {install|start|stop|status|env|purge|logs NAME}" >&2; exit 2 ;;
esac
