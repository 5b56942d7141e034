#!/usr/bin/env bash
# The benchmark run recorded in docs/benchmarks.md, against the running local stack:
#   1. idle RSS of each service
#   2. the notification-writer draining a backlog of 100,000 events (loadgen writer), then upload
#      sagas end to end through gateway, media-saga, S3 and the writer (loadgen media)
#   3. the raw producer ceiling (loadgen raw), then the gateway over HTTP with the same payload:
#      batches, single events (closed loop), and a fixed 2,000 req/s for latency
#   4. the dispatcher: signed webhooks delivered to a local receiver (loadgen dispatch)
#   5. the rule-evaluator: consume → evaluate → produce requests and unified events (loadgen rules)
# The ingest runs happen with the notification-writer stopped, so that it does not compete for
# the two cores while the gateway is measured; it is started again at the end and then drains
# what the ingest runs produced (minutes: leave it before running the tests).
# Every load targets 127.0.0.1 only and is bounded in time or count.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/event-substrate/target}"
DURATION="${DURATION:-15s}"
cargo build --release -q -p loadgen -p esctl -p dispatcher
set -a
# shellcheck disable=SC1091
. .local/stack.env
set +a
L="$CARGO_TARGET_DIR/release/loadgen"

echo "== $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(uname -r)"
echo "== idle RSS"
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
echo "== media sagas (intent → upload_ready → PUT → upload-complete → confirmed, through gateway, media-saga, S3 and the notification-writer; before the ingest runs leave a backlog)"
"$L" media --uploads 1000 --concurrency 8
"$L" media --uploads 1000 --concurrency 32

kill -TERM "$(head -n1 .local/run/notification-writer.pid)"
sleep 2
echo "== ingest (notification-writer stopped)"
"$L" raw --duration "$DURATION"
"$L" http --batch 100 --connections 8 --duration "$DURATION"
"$L" http --connections 128 --duration "$DURATION"
"$L" http --rate 2000 --duration "$DURATION"

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
