#!/usr/bin/env bash
# The benchmark run recorded in docs/benchmarks.md, against the running local stack:
#   1. idle RSS of each service
#   2. the notification-writer draining a backlog of 100,000 events (loadgen writer), then upload
#      sagas end to end through gateway, media-saga, S3 and the writer (loadgen media)
#   3. ingest against the broker's real ceiling, twice — with the whole stack running, then with
#      the consumers stopped: Kafka's own ProducerPerformance (kafka-tools of the broker's release,
#      resolved from Maven Central on the first bench run) and a multi-task rdkafka producer
#      (loadgen raw) on 3-partition topics with ~300-byte records, acks=all, idempotent; then the
#      gateway over HTTP (batches of 100, single events, a fixed 2,000 req/s for latency), and
#      batched ingest as a ratio of the higher ceiling
#   4. tracing overhead: the gateway's ingest with spans off, sampled at 10 % and at 100 %
#   5. the dispatcher: signed webhooks delivered to a local receiver (loadgen dispatch)
#   6. the rule-evaluator: consume → evaluate → produce requests and unified events (loadgen rules)
# The ingest runs happen with the notification-writer stopped, so that it does not compete for
# the two cores while the gateway is measured; it is started again at the end and then drains
# what the ingest runs produced (minutes: leave it before running the tests).
# Every load targets 127.0.0.1 only and is bounded in time or count.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/event-substrate/target}"
DURATION="${DURATION:-15s}"
# The services' own package set plus loadgen: building a different set would unify dependency
# features differently and rebuild (and relink the running services' binaries).
cargo build --release -q -p gateway -p notification-writer -p rule-evaluator -p dispatcher \
  -p media-saga -p esctl -p loadgen
set -a
# shellcheck disable=SC1091
. .local/stack.env
set +a
L="$CARGO_TARGET_DIR/release/loadgen"

echo "== $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(uname -r)"
echo "== idle RSS (services restarted, measured 5 s after they are ready)"
SKIP_BUILD=1 bash scripts/stack/services.sh start >/dev/null 2>&1
sleep 5
for name in gateway notification-writer rule-evaluator dispatcher media-saga; do
  pid=$(head -n1 ".local/run/$name.pid")
  echo "$name: $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MiB"
done

echo "== notification-writer (100,000 events produced while it is stopped, then drained)"
kill -TERM "$(head -n1 .local/run/notification-writer.pid)"
sleep 2
out=$(mktemp)
"$L" writer --events 100000 > "$out" 2>&1 &
loadgen_pid=$!
until grep -q '^produced' "$out"; do
  kill -0 "$loadgen_pid" 2>/dev/null || { cat "$out"; exit 1; }
  sleep 0.2
done
SKIP_BUILD=1 bash scripts/stack/services.sh start >/dev/null 2>&1
wait "$loadgen_pid"
cat "$out"
rm -f "$out"
echo "== notification stream (post → the gateway's SSE stream; then 1,000 idle streams for memory)"
"$L" stream --rate 200 --duration 20s
"$L" stream --rate 1000 --duration 20s
"$L" stream --rate 10 --duration 5s --idle-streams 1000 --gateway-pid "$(head -n1 .local/run/gateway.pid)"
echo "== media sagas (intent → upload_ready → PUT → upload-complete → confirmed, through gateway, media-saga, S3 and the notification-writer; before the ingest runs leave a backlog)"
"$L" media --uploads 1000 --concurrency 8
"$L" media --uploads 1000 --concurrency 32

KT=.local/tools/kafka-tools/libs
if [[ ! -f "$KT/kafka-tools-4.4.0.jar" ]]; then
  echo "(resolving kafka-tools 4.4.0 from Maven Central into $KT)"
  mvn -q -B -ntp -f stack/kafka-tools/pom.xml dependency:copy-dependencies \
    -DoutputDirectory="$PWD/$KT" -DincludeScope=runtime
fi
kafka_tool() { java -Xmx512m -cp "$KT/*" "$@"; }
kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" \
  --create --if-not-exists --topic bench.ceiling --partitions 3 --replication-factor 1 >/dev/null

# One round: both ceilings, the gateway, and the ratio. $1 names the round.
ingest_round() {
  local label=$1 perf raw batched ceiling out
  echo "-- ceiling: Kafka ProducerPerformance, 1,000,000 x 300 B to 3 partitions, acks=all, idempotent ($label)"
  perf=$(kafka_tool org.apache.kafka.tools.ProducerPerformance --topic bench.ceiling \
    --num-records 1000000 --record-size 300 --throughput -1 \
    --producer-props bootstrap.servers="$KAFKA_BOOTSTRAP_SERVERS" acks=all enable.idempotence=true \
      linger.ms=5 batch.size=262144 compression.type=none | tail -n 1)
  echo "$perf"
  perf=$(sed -E 's/.* records sent, ([0-9.]+) records\/sec.*/\1/' <<<"$perf")
  echo "-- ceiling: loadgen raw, 4 tasks, keys spread over 3 partitions, ~300 B Avro records ($label)"
  out=$("$L" raw --duration "$DURATION" --tasks 4 --message-bytes 200)
  echo "$out"
  raw=$(sed -nE 's/^raw producer: .* = ([0-9]+) events\/s$/\1/p' <<<"$out")
  echo "-- gateway ($label)"
  out=$("$L" http --batch 100 --connections 16 --duration "$DURATION")
  echo "$out"
  batched=$(sed -nE 's/^.*: [0-9]+ events in .* = ([0-9]+) events\/s$/\1/p' <<<"$out" | head -n 1)
  "$L" http --connections 64 --duration "$DURATION"
  "$L" http --rate 2000 --duration "$DURATION"
  ceiling=$(awk -v a="${perf:-0}" -v b="${raw:-0}" 'BEGIN { print (a > b ? a : b) }')
  awk -v g="${batched:-0}" -v c="$ceiling" -v l="$label" \
    'BEGIN { printf "ratio (%s): gateway batched ingest %.0f events/s = %.2f x the broker ceiling %.0f records/s\n", l, g, (c > 0 ? g / c : 0), c }'
}

echo "== ingest with the whole stack running"
ingest_round "whole stack"
echo "== ingest with the consumers stopped (notification-writer, rule-evaluator, dispatcher, media-saga)"
for name in media-saga dispatcher rule-evaluator notification-writer; do
  kill -TERM "$(head -n1 ".local/run/$name.pid")"
done
sleep 3
ingest_round "consumers stopped"

SKIP_BUILD=1 bash scripts/stack/services.sh start >/dev/null

# Tracing overhead: the same ingest with spans off, 10 % of new traces sampled, and all of them
# (every service exporting to the stack's Jaeger over OTLP/HTTP). The load generator sends no
# traceparent, so the gateway's sampler decides and every downstream span follows it.
# consumers_drained: waits (at most 5 min) until every consumer's lag (substrate_kafka_consumer_lag_records
# on the services' /metrics, from librdkafka statistics every 5 s) is under 100 records twice in a
# row, so that a run does not share the cores with the backlog of the one before.
consumers_drained() {
  local quiet=0 t0=$SECONDS lag
  while (( quiet < 2 && SECONDS - t0 < 300 )); do
    sleep 5
    lag=$(for port in 8091 8092 8093 8094; do curl -sf "http://127.0.0.1:$port/metrics"; done |
      awk '/^substrate_kafka_consumer_lag_records/ { s += $2 } END { print s + 0 }')
    if (( lag < 100 )); then quiet=$(( quiet + 1 )); else quiet=0; fi
  done
}
echo "== ingest by tracing mode (whole stack, consumers drained before each run; single events on 64 connections, then a fixed 2,000 req/s; three rounds)"
for mode in off 0.1 1.0 off 0.1 1.0 off 0.1 1.0; do
  if [[ "$mode" == off ]]; then
    OTEL_SDK_DISABLED=true SKIP_BUILD=1 bash scripts/stack/services.sh start >/dev/null
  else
    OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=$mode \
      SKIP_BUILD=1 bash scripts/stack/services.sh start >/dev/null
  fi
  consumers_drained
  echo "-- tracing: $mode"
  "$L" http --connections 64 --duration "$DURATION"
  "$L" http --rate 2000 --duration "$DURATION"
done
SKIP_BUILD=1 bash scripts/stack/services.sh start >/dev/null

echo "== dispatcher (50,000 signed webhooks to a local receiver, its own process and topic)"
"$L" dispatch --requests 50000 --dispatcher-bin "$CARGO_TARGET_DIR/release/dispatcher"

echo "== rule-evaluator (50,000 purchases, half matching a rule with two actions)"
E="$CARGO_TARGET_DIR/release/esctl"
"$E" rules save --name bench-vip --topic public.commerce.purchase.events \
  --condition "purchase.amount > 500 AND user.segment == 'VIP'" \
  --actions '[{"type":"kafka","topic":"public.commerce.vip.events"},{"type":"s3","bucket":"event-archive","prefix":"vip"}]'
sleep 1
"$L" rules --events 50000
"$E" rules disable bench-vip
echo "== done; the notification-writer is draining the events produced above"
