#!/usr/bin/env bash
# Apache Kafka 4.x, single KRaft node (broker+controller), from Maven Central jars.
# PLAINTEXT://127.0.0.1:9092, CONTROLLER://127.0.0.1:9093.
# Usage: scripts/stack/kafka.sh {install|start|stop|status}
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=kafka
POM="$ROOT/stack/kafka/pom.xml"
KAFKA_HOME="$TOOLS_DIR/kafka"
LIBS="$KAFKA_HOME/libs"
KDATA="$DATA_DIR/kafka"
PROPS="$KDATA/server.properties"
LOG4J="$KDATA/log4j2.properties"
CLUSTER_ID_FILE="$KDATA/cluster.id"
LOG_DIRS="$KDATA/log"
# ZGC on a fixed 1 GiB heap: the broker allocates ~90 MB/s at 1,000 events/s on the local
# stack, and G1's young pauses there (one a second, 13-400 ms on two busy cores) were the tail
# of every produce; ZGC collects concurrently (docs/benchmarks.md, "broker GC").
KAFKA_HEAP="${KAFKA_HEAP:--Xmx1g -Xms1g}"
KAFKA_GC="${KAFKA_GC:--XX:+UseZGC}"

pom_hash() { printf '%s-%s' "$(sha256sum "$POM" | cut -c1-16)" "${KAFKA_VERSION:-pom}"; }

install() {
  ensure_dirs
  local want have=""
  want=$(pom_hash)
  [[ -f "$KAFKA_HOME/pom.sha" ]] && have=$(cat "$KAFKA_HOME/pom.sha")
  if [[ -d "$LIBS" && "$have" == "$want" ]]; then
    return 0
  fi
  say "resolving Kafka jars from Maven Central ($(grep -o '<kafka.version>[^<]*' "$POM" | cut -d'>' -f2))"
  rm -rf "$LIBS" "$LIBS.tmp"
  mkdir -p "$KAFKA_HOME"
  mvn_quiet -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$LIBS.tmp" -DincludeScope=runtime ${KAFKA_VERSION:+-Dkafka.version=$KAFKA_VERSION} \
    || die "kafka: mvn dependency:copy-dependencies failed (see above)"
  local jar="" f
  for f in "$LIBS.tmp"/kafka_2.13-*.jar; do
    [[ -f "$f" && "$f" != *-test* ]] && { jar=$f; break; }
  done
  [[ -n "$jar" ]] || die "kafka: kafka_2.13 jar missing after copy-dependencies"
  local cls
  for cls in kafka/Kafka.class kafka/tools/StorageTool.class; do
    unzip -l "$jar" "$cls" >/dev/null 2>&1 || die "kafka: class ${cls%.class} not found in $(basename "$jar")"
  done
  mv "$LIBS.tmp" "$LIBS"
  printf '%s\n' "$want" > "$KAFKA_HOME/pom.sha"
}

write_config() {
  mkdir -p "$KDATA" "$LOG_DIRS"
  cat > "$PROPS" <<EOF
# Written by scripts/stack/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$LOG_DIRS
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
delete.topic.enable=true
log.retention.hours=168
EOF
  cat > "$LOG4J" <<'EOF'
# Written by scripts/stack/kafka.sh. Kafka logs to stdout, which goes to .local/logs/kafka.log.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
logger.controller.name = org.apache.kafka.controller
logger.controller.level = info
logger.state.name = state.change.logger
logger.state.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
# the full "... values:" config dumps (hundreds of lines per client/start)
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
EOF
}

java_cp() { "$JAVA" -Dlog4j2.configurationFile="$LOG4J" -cp "$LIBS/*" "$@"; }

format_storage() {
  local id
  if [[ ! -s "$CLUSTER_ID_FILE" ]]; then
    id=$(java_cp kafka.tools.StorageTool random-uuid 2>>"$(logfile "$NAME")" | tail -n1)
    [[ "$id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka: StorageTool random-uuid returned '$id'"
    printf '%s\n' "$id" > "$CLUSTER_ID_FILE"
  fi
  id=$(cat "$CLUSTER_ID_FILE")
  if [[ ! -f "$LOG_DIRS/meta.properties" ]]; then
    say "formatting Kafka storage (cluster id $id)"
    java_cp kafka.tools.StorageTool format -t "$id" -c "$PROPS" -g >> "$(logfile "$NAME")" 2>&1 \
      || { tail -n 30 "$(logfile "$NAME")" >&2; die "kafka: storage format failed; see $(rel "$(logfile "$NAME")")"; }
  fi
}

is_running() { running_pid "$NAME" "kafka.Kafka $PROPS"; }

# Ready = the broker logged "Kafka Server started" in this run and accepts connections on 9092.
kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  log_since "$(logfile "$NAME")" "$LOG_OFFSET" | grep -q 'Kafka Server started'
}

start() {
  install
  ensure_dirs
  local pid
  LOG_OFFSET=0
  if pid=$(is_running); then
    say "$NAME already running (pid $pid)"
    port_open "$KAFKA_PORT" && return 0
    # still starting: fall through to the wait, matching the whole log
  else
    require_port_free "$NAME" "$KAFKA_PORT"
    require_port_free "$NAME" "$KAFKA_CONTROLLER_PORT"
    JAVA=$(find_java 17)
    write_config
    format_storage
    LOG_OFFSET=$(log_size "$(logfile "$NAME")")
    say "starting $NAME on 127.0.0.1:$KAFKA_PORT"
    # shellcheck disable=SC2086
    spawn "$NAME" "$KDATA" "$JAVA" $KAFKA_HEAP $KAFKA_GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$LOG4J" -cp "$LIBS/*" kafka.Kafka "$PROPS"
    pid=$(head -n1 "$(pidfile "$NAME")")
  fi
  wait_ready "$NAME" "$pid" "$KAFKA_READY_TIMEOUT" kafka_ready
}

stop() {
  local pid
  if pid=$(is_running); then
    stop_pid "$NAME" "$pid" TERM 60 KILL
  else
    say "$NAME not running"
  fi
}

status() { status_line "$NAME" "kafka.Kafka $PROPS" "$KAFKA_PORT"; }

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {install|start|stop|status}" >&2; exit 2 ;;
esac
