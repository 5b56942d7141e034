#!/usr/bin/env bash
# Apicurio Registry 3.x (Confluent-compatible API at /apis/ccompat/v7) on 127.0.0.1:8081,
# persisted in the stack's PostgreSQL (database "apicurio") so schema ids survive restarts.
# Usage: scripts/stack/registry.sh {install|start|stop|status|verify-persistence}
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=registry
APICURIO_VERSION="${APICURIO_VERSION:-3.3.3}"
APICURIO_BASE="$TOOLS_DIR/apicurio"
APICURIO_HOME="$APICURIO_BASE/apicurio-registry-$APICURIO_VERSION"
REGISTRY_HEAP="${REGISTRY_HEAP:--Xmx384m}"
CCOMPAT="http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"
MARKER="-Dsubstrate.stack.root=$ROOT"   # makes our process recognisable (pid file check)

install() {
  ensure_dirs
  find_java 21 >/dev/null   # Apicurio 3.3.x needs Java 21+
  [[ -f "$APICURIO_HOME/quarkus-run.jar" ]] && return 0
  say "fetching io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all from Maven Central"
  local dl="$APICURIO_BASE/download"
  rm -rf "$dl" "$APICURIO_HOME.tmp"
  mkdir -p "$dl" "$APICURIO_HOME.tmp"
  mvn_quiet -f "$ROOT/stack/apicurio/pom.xml" dependency:copy \
    -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
    -DoutputDirectory="$dl" || die "registry: mvn dependency:copy failed (see above)"
  tar -xzf "$dl/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$APICURIO_HOME.tmp"
  [[ -f "$APICURIO_HOME.tmp/quarkus-run.jar" ]] || die "registry: quarkus-run.jar not found in the archive"
  mv "$APICURIO_HOME.tmp" "$APICURIO_HOME"
  rm -rf "$dl"   # the archive stays in ~/.m2
}

is_running() { running_pid "$NAME" "$MARKER"; }

registry_ready() { curl -sf -o /dev/null "$CCOMPAT/subjects"; }

start() {
  install
  ensure_dirs
  local pid
  if pid=$(is_running); then
    say "$NAME already running (pid $pid)"
  else
    require_port_free "$NAME" "$REGISTRY_PORT"
    require_port_free "$NAME" "$REGISTRY_MGMT_PORT"
    [[ "$(bash "$ROOT/scripts/stack/postgres.sh" status)" == *" running "* ]] \
      || die "registry: postgres is not running (start it first: scripts/stack/postgres.sh start)"
    JAVA=$(find_java 21)   # Apicurio 3.3.x is built for Java 21 (class file 65)
    say "starting $NAME (Apicurio $APICURIO_VERSION, $JAVA) on 127.0.0.1:$REGISTRY_PORT"
    # shellcheck disable=SC2086
    spawn "$NAME" "$APICURIO_HOME" "$JAVA" $REGISTRY_HEAP -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      "$MARKER" \
      -Dquarkus.http.host=127.0.0.1 \
      -Dquarkus.http.port="$REGISTRY_PORT" \
      -Dquarkus.management.host=127.0.0.1 \
      -Dquarkus.management.port="$REGISTRY_MGMT_PORT" \
      "-Dquarkus.log.console.format=%d{yyyy-MM-dd HH:mm:ss,SSS} %p [%c{3.}] (%t) %m%n" \
      -Dapicurio.storage.kind=sql \
      -Dapicurio.storage.sql.kind=postgresql \
      -Dapicurio.datasource.url="jdbc:postgresql://127.0.0.1:$PG_PORT/apicurio" \
      -Dapicurio.datasource.username=postgres \
      -Dapicurio.datasource.password=postgres \
      -Dapicurio.datasource.jdbc.initial-size=2 \
      -Dapicurio.datasource.jdbc.min-size=2 \
      -Dapicurio.datasource.jdbc.max-size=20 \
      -Dapicurio.rest.deletion.group.enabled=true \
      -Dapicurio.rest.deletion.artifact.enabled=true \
      -Dapicurio.rest.deletion.artifact-version.enabled=true \
      -jar quarkus-run.jar
    pid=$(head -n1 "$(pidfile "$NAME")")
  fi
  wait_ready "$NAME" "$pid" "$REGISTRY_READY_TIMEOUT" registry_ready
}

stop() {
  local pid
  if pid=$(is_running); then
    stop_pid "$NAME" "$pid" TERM 30 KILL
  else
    say "$NAME not running"
  fi
}

status() { status_line "$NAME" "$MARKER" "$REGISTRY_PORT"; }

# Registers a throwaway schema (unique per run), restarts the registry, checks that its id still
# resolves to the same schema, then deletes the subject (soft, then permanent).
verify_persistence() {
  local subject="zz-persistence-check-value" name body id H='Content-Type: application/vnd.schemaregistry.v1+json'
  registry_ready || die "registry is not running"
  name="PersistenceCheck$(random_string 8)"
  local schema payload
  schema=$(printf '{"type":"record","name":"%s","fields":[]}' "$name")
  payload=$(printf '{"schema":"%s"}' "${schema//\"/\\\"}")   # schema as a JSON string
  body=$(curl -sf -X POST -H "$H" --data "$payload" "$CCOMPAT/subjects/$subject/versions") \
    || die "registry: could not register a test schema"
  id=$(printf '%s' "$body" | sed -n 's/.*"id"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p')
  [[ -n "$id" ]] || die "registry: unexpected register response: $body"
  say "registered $subject ($name) -> id $id; restarting registry"
  stop
  start
  body=$(curl -sf "$CCOMPAT/schemas/ids/$id") || die "registry: schema id $id did not survive the restart"
  [[ "$body" == *"$name"* ]] || die "registry: schema id $id resolves to a different schema after restart: $body"
  say "after restart GET /schemas/ids/$id -> $body"
  curl -sf -o /dev/null -X DELETE "$CCOMPAT/subjects/$subject" || warn "soft delete of $subject failed"
  curl -sf -o /dev/null -X DELETE "$CCOMPAT/subjects/$subject?permanent=true" || warn "permanent delete of $subject failed"
  say "persistence OK (test subject deleted)"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  verify-persistence) verify_persistence ;;
  *) echo "usage: $0 {install|start|stop|status|verify-persistence}" >&2; exit 2 ;;
esac
