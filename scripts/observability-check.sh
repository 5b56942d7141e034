#!/usr/bin/env bash
# Checks deploy/observability against promtool and a running Prometheus (docs/observability.md).
#   1. promtool check rules deploy/observability/rules/*.yml
#   2. promtool test rules deploy/observability/tests/*.yml, and every alert has a firing and a
#      quiet case there; every runbook link has its section in docs/observability.md
#   3. the dashboards: JSON, schemaVersion >= 39, the `datasource` variable, every target on it
#   --- skipped with --offline ---
#   4. the running Prometheus (PROMETHEUS_URL, default http://127.0.0.1:9095) scrapes the five
#      services and has loaded the rules without evaluation errors
#   5. every `expr` of every dashboard panel parses (/api/v1/query answers success, not bad_data)
#   6. a small load through the gateway of the running stack (.local/stack.env): messages (single,
#      batch, an Idempotency-Key replayed, two refused), a notification stream opened and
#      closed, a rule `observability-check` (webhook to a receiver of this script, S3 archive,
#      notification) matching them, and two media uploads (intent, PUT, complete, download,
#      delete) — in two rounds a scrape apart, so that counters created by the first are
#      incremented by the second; then two scrape intervals
#   7. every expr returns data (a non-empty result that is not only NaN), Grafana's
#      $__rate_interval read as RATE_WINDOW (5m) and $__range as RANGE (1h). A failure names the
#      dashboard, the panel title and the expr.
# Usage: scripts/observability-check.sh [--offline]
# Needs: promtool (built by scripts/stack/prometheus.sh when missing); for the live part
# `./taskw start` and scripts/stack/prometheus.sh start.
# shellcheck source=scripts/stack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/stack/lib.sh"

OFFLINE=0
case "${1:-}" in
  --offline) OFFLINE=1 ;;
  "") ;;
  *) echo "usage: $0 [--offline]" >&2; exit 2 ;;
esac

OBS="$ROOT/deploy/observability"
PROMTOOL=$(bash "$ROOT/scripts/stack/prometheus.sh" promtool)
shopt -s nullglob
rule_files=("$OBS"/rules/*.yml)
test_files=("$OBS"/tests/*.yml)
(( ${#rule_files[@]} > 0 )) || die "no rule files in $(rel "$OBS/rules")"
(( ${#test_files[@]} > 0 )) || die "no rule tests in $(rel "$OBS/tests")"

say "promtool check rules $(for f in "${rule_files[@]}"; do printf '%s ' "$(rel "$f")"; done)"
"$PROMTOOL" check rules "${rule_files[@]}"
say "promtool test rules $(for f in "${test_files[@]}"; do printf '%s ' "$(rel "$f")"; done)"
"$PROMTOOL" test rules "${test_files[@]}"

export OBS_DIR="$OBS" OBS_ROOT="$ROOT" OBS_OFFLINE="$OFFLINE"
if (( OFFLINE == 0 )); then
  [[ -f "$STACK_ENV" ]] || die "$(rel "$STACK_ENV") missing: start the stack first (./taskw start)"
  set -a
  # shellcheck disable=SC1090
  . "$STACK_ENV"
  set +a
  export PROMETHEUS_URL="${PROMETHEUS_URL:-$(bash "$ROOT/scripts/stack/prometheus.sh" url)}"
  export ESCTL="${ESCTL:-${CARGO_TARGET_DIR:-$HOME/.cache/event-substrate/target}/release/esctl}"
  [[ -x "$ESCTL" ]] || die "esctl not found at $ESCTL (./taskw start builds it)"
fi

exec python3 - <<'PY'
import glob
import json
import math
import os
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OBS = os.environ["OBS_DIR"]
ROOT = os.environ["OBS_ROOT"]
OFFLINE = os.environ["OBS_OFFLINE"] == "1"
SERVICES = ["gateway", "notification-writer", "rule-evaluator", "dispatcher", "media-saga"]
RATE_WINDOW = os.environ.get("RATE_WINDOW", "5m")
RANGE = os.environ.get("RANGE", "1h")
SCRAPE_SECS = float(os.environ.get("SCRAPE_INTERVAL_SECS", "5"))
RULE_NAME = "observability-check"
failures = []


def say(msg):
    print(f"[observability] {msg}", flush=True)


def fail(msg):
    failures.append(msg)
    print(f"[observability] FAIL {msg}", flush=True)


def rel(path):
    return os.path.relpath(path, ROOT)


# ------------------------------------------------------------------ static checks
def alert_names(text):
    return re.findall(r"^\s*-\s*alert:\s*(\S+)\s*$", text, re.M)


def check_tests_cover_alerts():
    rules = "".join(open(f).read() for f in sorted(glob.glob(f"{OBS}/rules/*.yml")))
    firing, quiet = set(), set()
    for f in sorted(glob.glob(f"{OBS}/tests/*.yml")):
        name = None
        for line in open(f):
            m = re.match(r"\s*alertname:\s*(\S+)", line)
            if m:
                name = m.group(1)
                continue
            m = re.match(r"\s*exp_alerts:\s*(\[\s*\])?\s*(#.*)?$", line)
            if m and name:
                (quiet if m.group(1) else firing).add(name)
                name = None
    names = alert_names(rules)
    for name in names:
        if name not in firing:
            fail(f"alert {name} has no firing case in {rel(OBS)}/tests")
        if name not in quiet:
            fail(f"alert {name} has no quiet case in {rel(OBS)}/tests")
    doc = os.path.join(ROOT, "docs/observability.md")
    anchors = set()
    if os.path.exists(doc):
        for line in open(doc):
            m = re.match(r"#+\s+(.*?)\s*$", line)
            if m:
                a = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
                anchors.add(a)
    for link in re.findall(r"runbook_url:\s*(\S+)", rules):
        path, _, anchor = link.partition("#")
        if path != "docs/observability.md" or anchor not in anchors:
            fail(f"runbook link {link} has no section in docs/observability.md")
    say(f"{len(names)} alerts, each with a firing and a quiet test; runbook sections present")
    return names


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def load_dashboards():
    """Static checks of every dashboard; returns (file, panel title, refId, expr) of each target."""
    exprs, names = [], []
    for f in sorted(glob.glob(f"{OBS}/dashboards/*.json")):
        name = os.path.basename(f)
        names.append(name)
        try:
            board = json.load(open(f))
        except ValueError as e:
            fail(f"{name}: not JSON: {e}")
            continue
        if board.get("schemaVersion", 0) < 39:
            fail(f"{name}: schemaVersion {board.get('schemaVersion')} < 39")
        if not any(v.get("name") == "datasource" and v.get("type") == "datasource"
                   and v.get("query") == "prometheus"
                   for v in board.get("templating", {}).get("list", [])):
            fail(f"{name}: no `datasource` variable of type datasource (prometheus)")
        panels = list(walk_panels(board.get("panels", [])))
        ids = [p.get("id") for p in panels]
        if len(ids) != len(set(ids)):
            fail(f"{name}: duplicate panel ids")
        for p in panels:
            targets = p.get("targets", [])
            if targets and (p.get("datasource") or {}).get("uid") != "${datasource}":
                fail(f"{name} / {p.get('title')}: panel datasource is not ${{datasource}}")
            for t in targets:
                if (t.get("datasource") or {}).get("uid") != "${datasource}":
                    fail(f"{name} / {p.get('title')} / {t.get('refId')}: target datasource is not ${{datasource}}")
                if not t.get("expr"):
                    fail(f"{name} / {p.get('title')} / {t.get('refId')}: target without expr")
                    continue
                # a fallback to 0 only for counters absent until their first increment, and said so
                if "vector(0)" in t["expr"] and "absent until" not in (p.get("description") or "").lower():
                    fail(f"{name} / {p.get('title')} / {t.get('refId')}: falls back to vector(0) "
                         "but the panel description does not say which series is absent until when")
                exprs.append((f"{name} ({board.get('title')})", p.get("title"), t.get("refId"), t["expr"]))
    say(f"{len(names)} dashboards ({', '.join(names)}), {len(exprs)} panel queries")
    return exprs


# ------------------------------------------------------------------ HTTP helpers
def http(method, url, body=None, headers=None, timeout=15):
    data = None
    headers = dict(headers or {})
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        else:
            data = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def expect(what, got, status):
    if got != status:
        raise SystemExit(f"[observability] load: {what} answered {got}, expected {status}")


def promql(expr):
    for var, value in (("$__rate_interval", RATE_WINDOW), ("${__rate_interval}", RATE_WINDOW),
                       ("$__interval", "1m"), ("${__interval}", "1m"),
                       ("$__range", RANGE), ("${__range}", RANGE)):
        expr = expr.replace(var, value)
    return expr


def query(expr):
    url = f"{os.environ['PROMETHEUS_URL']}/api/v1/query?" + urllib.parse.urlencode({"query": promql(expr)})
    return http("GET", url)


# ------------------------------------------------------------------ live checks
def check_prometheus():
    prom = os.environ["PROMETHEUS_URL"]
    status, _ = http("GET", f"{prom}/-/ready")
    if status != 200:
        raise SystemExit(f"[observability] Prometheus at {prom} is not ready ({status}); "
                         "start it: bash scripts/stack/prometheus.sh start")
    status, body = query("up")
    up = {s["metric"].get("job"): s["value"][1] for s in body["data"]["result"]}
    for job in SERVICES:
        if up.get(job) != "1":
            fail(f"Prometheus does not scrape {job} (up = {up.get(job)})")
    status, body = http("GET", f"{prom}/api/v1/rules")
    ours = [g for g in body["data"]["groups"] if g["file"].startswith(os.path.join(OBS, "rules"))]
    rules = [r for g in ours for r in g["rules"]]
    files_text = "".join(open(f).read() for f in sorted(glob.glob(f"{OBS}/rules/*.yml")))
    if len(rules) != len(alert_names(files_text)):
        fail(f"Prometheus has loaded {len(rules)} of the {len(alert_names(files_text))} alerts "
             f"(a changed rule file is read on `scripts/stack/prometheus.sh start`)")
    for r in rules:
        if r.get("health") == "err":
            fail(f"rule {r['name']} fails to evaluate: {r.get('lastError')}")
    say(f"Prometheus {prom}: the five services scraped, {len(rules)} alerts loaded")


def parse_all(exprs):
    bad = 0
    for board, title, ref, expr in exprs:
        status, body = query(expr)
        if status != 200 or not isinstance(body, dict) or body.get("status") != "success":
            err = body.get("errorType") if isinstance(body, dict) else status
            msg = body.get("error") if isinstance(body, dict) else body
            fail(f"{board} / {title} / {ref}: does not parse ({err}: {msg}): {expr}")
            bad += 1
    say(f"{len(exprs) - bad} of {len(exprs)} panel queries parse")


class Receiver(BaseHTTPRequestHandler):
    hits = 0
    lock = threading.Lock()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        with Receiver.lock:
            Receiver.hits += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def esctl(*args):
    out = subprocess.run([os.environ["ESCTL"], *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"[observability] esctl {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                         f"{out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def png(width=2, height=2):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class Load:
    def __init__(self):
        self.api = os.environ["GATEWAY_URL"].rstrip("/") + "/api/v1"
        self.user = str(uuid.uuid4())
        self.jwt = esctl("token", "--sub", self.user, "--email", "observability-check@example.com")
        self.auth = {"Authorization": f"Bearer {self.jwt}"}
        self.run_id = uuid.uuid4().hex[:12]

    def rule(self, receiver_url):
        actions = [
            {"type": "webhook", "url": receiver_url},
            {"type": "s3", "bucket": os.environ.get("S3_ARCHIVE_BUCKET", "event-archive"),
             "prefix": RULE_NAME},
            {"type": "notification", "event_type": "observability.check", "recipient_field": "sender_id"},
        ]
        out = esctl("rules", "save", "--name", RULE_NAME, "--topic", "public.user.message.events",
                    "--condition", f"message prefix '{RULE_NAME}'", "--actions", json.dumps(actions))
        m = re.search(r"version (\d+)", out)
        version = m.group(1) if m else None
        listen = os.environ.get("SUBSTRATE_RULE_EVALUATOR__LISTEN", "127.0.0.1:8092")
        deadline = time.time() + 30
        line = f'rule_evaluator_rule_version{{rule="{RULE_NAME}"}} {version}'
        while time.time() < deadline:
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
                if line in r.read().decode():
                    say(f"rule {RULE_NAME} version {version} in effect")
                    return
            time.sleep(0.5)
        raise SystemExit(f"[observability] load: the rule-evaluator did not load {RULE_NAME} version {version} within 30 s")

    def disable_rule(self):
        try:
            esctl("rules", "disable", RULE_NAME)
        except SystemExit as e:
            print(e, file=sys.stderr)

    def message(self, text, **extra):
        body = {"message": f"{RULE_NAME} {self.run_id} {text}", "visibility": "direct",
                "recipient_id": str(uuid.uuid4())}
        return http("POST", f"{self.api}/events/message", body, {**self.auth, **extra})

    def events(self, rnd):
        for i in range(3):
            status, body = self.message(f"round {rnd} message {i}")
            expect("message", status, 202)
        batch = [{"message": f"{RULE_NAME} {self.run_id} round {rnd} batch {i}", "visibility": "direct",
                  "recipient_id": str(uuid.uuid4())} for i in range(2)]
        status, body = http("POST", f"{self.api}/events/message/batch", batch, self.auth)
        expect("batch", status, 200)
        key = {"Idempotency-Key": f"{RULE_NAME}-{self.run_id}-{rnd}"}
        body = {"message": f"{RULE_NAME} {self.run_id} round {rnd} idempotent", "visibility": "direct",
                "recipient_id": str(uuid.uuid4())}
        status, first = http("POST", f"{self.api}/events/message", body, {**self.auth, **key})
        expect("message with an Idempotency-Key", status, 202)
        # the same key and body again: the stored answer is replayed, nothing is produced
        status, replay = http("POST", f"{self.api}/events/message", body, {**self.auth, **key})
        expect("the same message and key again", status, 202)
        if replay != first:
            raise SystemExit(f"[observability] load: the replay answered {replay}, not {first}")
        # refusals: a direct message without a recipient (400), no token (401)
        status, _ = http("POST", f"{self.api}/events/message",
                         {"message": "x", "visibility": "direct"}, self.auth)
        expect("message without recipient", status, 400)
        status, _ = http("POST", f"{self.api}/events/message", {"message": "x", "visibility": "broadcast"})
        expect("message without token", status, 401)

    def stream(self):
        """Opens the caller's notification stream, reads its first bytes, returns the response."""
        req = urllib.request.Request(f"{self.api}/notifications/stream", headers=self.auth)
        r = urllib.request.urlopen(req, timeout=15)
        if r.status != 200:
            raise SystemExit(f"[observability] load: the notification stream answered {r.status}")
        return r

    def notification(self, event_type, request_id, timeout=60):
        deadline = time.time() + timeout
        before = "18446744073709551615-9223372036854775807"   # the newest rows first
        while time.time() < deadline:
            status, body = http("GET", f"{self.api}/notifications?limit=50&before={before}", headers=self.auth)
            if status == 200:
                for n in body["notifications"]:
                    if n["event_type"] == event_type and str(n["payload"].get("request_id")) == request_id:
                        return n["payload"]
            time.sleep(0.3)
        raise SystemExit(f"[observability] load: no {event_type} notification for {request_id} within {timeout} s")

    def media(self, rnd):
        content = png()
        status, body = http("POST", f"{self.api}/media/upload-intent",
                            {"file_name": f"{RULE_NAME}-{rnd}.png", "media_type": "image/png",
                             "file_size": len(content)}, self.auth)
        expect("upload-intent", status, 202)
        request = body["request_id"]
        ready = self.notification("media.upload_ready", request)
        status, _ = http("PUT", ready["upload_url"], content, {"Content-Type": "image/png"})
        if status // 100 != 2:
            raise SystemExit(f"[observability] load: PUT to the upload URL answered {status}")
        status, body = http("POST", f"{self.api}/media/upload-complete", {"request_id": request}, self.auth)
        expect("upload-complete", status, 202)
        confirmed = self.notification("media.upload_confirmed", request)
        path = confirmed["file_path"]
        status, body = http("POST", f"{self.api}/media/download-intent", {"file_path": path}, self.auth)
        expect("download-intent", status, 202)
        self.notification("media.download_ready", body["request_id"])
        status, body = http("POST", f"{self.api}/media/delete-intent", {"file_path": path}, self.auth)
        expect("delete-intent", status, 202)
        self.notification("media.file_deleted", body["request_id"])


def generate_load():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    receiver = f"http://127.0.0.1:{server.server_address[1]}/hook"
    load = Load()
    load.rule(receiver)
    try:
        for rnd in (1, 2):
            t0 = time.time()
            stream = load.stream()
            load.events(rnd)
            stream.read(1)          # a row of the caller's (sent) messages arrives …
            stream.close()          # … then the client goes away
            load.media(rnd)
            deadline = time.time() + 60
            while Receiver.hits < 6 * rnd and time.time() < deadline:
                time.sleep(0.2)
            if Receiver.hits < 6 * rnd:
                raise SystemExit(f"[observability] load: the webhook receiver got {Receiver.hits} deliveries, expected {6 * rnd}")
            say(f"load round {rnd}: 6 messages (3 single, a batch of 2, 1 with an Idempotency-Key and its replay), "
                f"2 refused, a stream, an upload/download/delete; {Receiver.hits} webhook deliveries "
                f"({time.time() - t0:.1f} s)")
            if rnd == 1:
                time.sleep(SCRAPE_SECS + 1)   # the second round lands in a later scrape
    finally:
        load.disable_rule()
        server.shutdown()
    wait = 2 * SCRAPE_SECS + 1
    say(f"waiting {wait:.0f} s (two scrape intervals)")
    time.sleep(wait)


def data_all(exprs):
    empty = 0
    for board, title, ref, expr in exprs:
        status, body = query(expr)
        if status != 200 or body.get("status") != "success":
            continue   # reported by parse_all
        data = body["data"]
        if data["resultType"] in ("vector", "matrix"):
            values = [s["value"][1] for s in data["result"]]
        else:
            values = [data["result"][1]]
        if not values:
            fail(f"{board} / {title} / {ref}: no data: {expr}")
            empty += 1
        elif all(v.lower() in ("nan", "+nan", "-nan") for v in values):
            fail(f"{board} / {title} / {ref}: only NaN: {expr}")
            empty += 1
    say(f"{len(exprs) - empty} of {len(exprs)} panel queries return data")


def main():
    check_tests_cover_alerts()
    exprs = load_dashboards()
    if not OFFLINE:
        check_prometheus()
        parse_all(exprs)
        generate_load()
        data_all(exprs)
    if failures:
        print(f"[observability] {len(failures)} failure(s):", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    say("OK" + (" (offline: promtool and static checks only)" if OFFLINE else ""))


main()
PY
