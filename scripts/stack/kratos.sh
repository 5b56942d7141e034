#!/usr/bin/env bash
# Ory Kratos v1.3.1 (Go module github.com/ory/kratos, Apache-2.0) as the local identity provider:
# email + password sign-up and login (API and browser flows), sessions turned into Supabase-shaped
# ES256 JWTs by its tokenizer (`GET /sessions/whoami?tokenize_as=gateway`), and an after-login web
# hook that posts a Supabase Database Webhook payload to the gateway's /webhooks/login.
#   public API 127.0.0.1:4433, admin API 127.0.0.1:4434, database "kratos" on the stack's PostgreSQL;
#   kratos-jwks: python3's http.server on 127.0.0.1:4435 serving the tokenizer's *public* JWK set
#   (.local/data/kratos/public/jwks.json) as the gateway's JWKS URL (Kratos does not publish it).
# Config: stack/kratos/kratos.yml (template, @PLACEHOLDERS@ filled on every start into
# .local/data/kratos/kratos.yml, mode 600: it holds the cookie/cipher secrets and the login webhook
# secret), identity.schema.json, tokenizer-claims.jsonnet, login-webhook.jsonnet.
# Login durability: the web hook is synchronous (no `response.ignore`): the login fails (no session)
# unless the gateway answered 2xx, which it does only once Kafka stored the `identity.login` event.
# Usage: scripts/stack/kratos.sh {install|start|stop|status|bin|config}
#   bin, config: print the path of the kratos binary / of the written configuration (for tests
#   that start a second Kratos on the same database).
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=kratos
JWKS_NAME=kratos-jwks
KRATOS_VERSION=v1.3.1
KRATOS_SRC="$ROOT/stack/kratos"          # config templates, Jsonnet, identity schema
KRATOS_BUILD="$KRATOS_SRC/build"         # wrapper Go module pinning github.com/ory/kratos
# Built once per machine and wrapper module (minutes on 2 cores), kept outside the clone like
# SeaweedFS and the cargo target dir so fresh clones reuse it; override with SUBSTRATE_TOOLS_CACHE.
KRATOS_HOME="${SUBSTRATE_TOOLS_CACHE:-$HOME/.cache/event-substrate/tools}/kratos-$KRATOS_VERSION"
KRATOS="$KRATOS_HOME/bin/kratos"
KRATOS_DATA="$DATA_DIR/kratos"
KRATOS_CONFIG="$KRATOS_DATA/kratos.yml"
PRIVATE_JWKS="$KRATOS_DATA/private/jwks.json"   # ES256 signing key of the tokenizer (mode 600)
PUBLIC_DIR="$KRATOS_DATA/public"                # served by kratos-jwks
PUBLIC_JWKS="$PUBLIC_DIR/jwks.json"
KRATOS_DB=kratos
# The origin of the browser app using the browser flows (CORS, allowed return URLs): the web app
# the gateway serves. One host name for app and Kratos (localhost and 127.0.0.1 are different
# sites for cookies).
KRATOS_UI_URL="${KRATOS_UI_URL:-http://127.0.0.1:$GATEWAY_PORT}"
PUBLIC_URL="http://127.0.0.1:$KRATOS_PUBLIC_PORT"
ADMIN_URL="http://127.0.0.1:$KRATOS_ADMIN_PORT"

# The wrapper module's hash is part of the stamp: a change of go.mod/go.sum rebuilds.
build_stamp() {
  printf '%s %s' "$KRATOS_VERSION" "$(cat "$KRATOS_BUILD/go.mod" "$KRATOS_BUILD/go.sum" | sha256sum | cut -c1-12)"
}

# Builds bin/kratos from the Go module proxy. `go install github.com/ory/kratos@v1.3.1` is refused
# (kratos' go.mod replaces its SDK with a directory), so stack/kratos/build is a wrapper module that
# requires kratos with the same replaces (pinned go.sum) and builds its main package. PostgreSQL
# only: no `sqlite` tag, so no CGO. GOPATH/GOMODCACHE/GOCACHE keep their defaults (shared caches).
install() {
  ensure_dirs
  local stamp
  stamp=$(build_stamp)
  if [[ -x "$KRATOS" && "$(cat "$KRATOS_HOME/version" 2>/dev/null)" == "$stamp" ]]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "kratos: go is not installed (needed to build Ory Kratos from the Go module proxy)"
  local log="$LOGS_DIR/kratos-build.log" t0=$SECONDS
  say "building Ory Kratos $KRATOS_VERSION from the Go module proxy (log in $(rel "$log"); takes minutes)"
  mkdir -p "$KRATOS_HOME/bin"
  printf '\n---- %s go build github.com/ory/kratos in %s (%s) ----\n' "$(date -Is)" "$(rel "$KRATOS_BUILD")" "$stamp" >> "$log"
  # nice: a background build should not starve an interactive cargo build on a small machine
  if ! (cd "$KRATOS_BUILD" && CGO_ENABLED=0 nice -n 10 go build -mod=readonly -trimpath \
      -ldflags="-s -X github.com/ory/kratos/driver/config.Version=$KRATOS_VERSION" \
      -o "$KRATOS.tmp" github.com/ory/kratos) >> "$log" 2>&1; then
    rm -f "$KRATOS.tmp"
    tail -n 40 "$log" >&2
    die "kratos: building Ory Kratos failed; see $(rel "$log")"
  fi
  mv "$KRATOS.tmp" "$KRATOS"
  printf '%s\n' "$stamp" > "$KRATOS_HOME/version"
  say "Ory Kratos built in $(( SECONDS - t0 ))s ($("$KRATOS" version 2>/dev/null | grep -m1 -i version | tr -s ' '))"
}

# The tokenizer's ES256 key, made once per machine (kept until purge): the private JWK set for
# Kratos, the public one for the gateway. openssl makes the P-256 key; python3 writes the JWKs.
ensure_keys() {
  [[ -s "$PRIVATE_JWKS" && -s "$PUBLIC_JWKS" ]] && return 0
  command -v openssl >/dev/null || die "kratos: openssl is needed to make the tokenizer key"
  mkdir -p "$KRATOS_DATA/private" "$PUBLIC_DIR"
  chmod 700 "$KRATOS_DATA/private"
  local tmp kid
  tmp=$(mktemp -d)
  kid="substrate-local-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  (
    umask 077
    openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/key.pem" 2>/dev/null
    openssl ec -in "$tmp/key.pem" -noout -text > "$tmp/key.txt" 2>/dev/null
    python3 - "$tmp/key.txt" "$kid" "$PRIVATE_JWKS.tmp" "$PUBLIC_JWKS.tmp" <<'PY'
import base64, json, re, sys

text, kid, private_out, public_out = sys.argv[1:5]
dump = open(text).read()

def hexblock(label, stop):
    block = dump.split(label + ":", 1)[1].split(stop, 1)[0]
    return bytes.fromhex(re.sub(r"[^0-9a-fA-F]", "", block))

d = hexblock("priv", "pub:")[-32:].rjust(32, b"\0")
pub = hexblock("pub", "ASN1 OID")
if len(pub) != 65 or pub[0] != 4:
    sys.exit("unexpected public key encoding")
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
public = {"kty": "EC", "crv": "P-256", "x": b64(pub[1:33]), "y": b64(pub[33:]),
          "alg": "ES256", "use": "sig", "kid": kid}
json.dump({"keys": [dict(public, d=b64(d))]}, open(private_out, "w"), indent=2)
json.dump({"keys": [public]}, open(public_out, "w"), indent=2)
PY
  ) || { rm -rf "$tmp" "$PRIVATE_JWKS.tmp" "$PUBLIC_JWKS.tmp"; die "kratos: making the tokenizer key failed"; }
  rm -rf "$tmp"
  chmod 600 "$PRIVATE_JWKS.tmp"
  chmod 644 "$PUBLIC_JWKS.tmp"
  mv "$PRIVATE_JWKS.tmp" "$PRIVATE_JWKS"
  mv "$PUBLIC_JWKS.tmp" "$PUBLIC_JWKS"
  say "made the tokenizer key $kid (ES256) in $(rel "$KRATOS_DATA")"
}

# Kratos' cookie and cipher secrets, made once into .local/data/secrets.env like the others.
ensure_kratos_secrets() {
  ensure_secrets
  local key
  for key in KRATOS_COOKIE_SECRET KRATOS_CIPHER_SECRET; do
    grep -q "^$key=" "$SECRETS_ENV" && continue
    ( umask 077; printf '%s=%s\n' "$key" "$(random_string 32)" >> "$SECRETS_ENV" )
  done
}

db_dsn() {
  local ca
  ca=$(bash "$ROOT/scripts/stack/postgres.sh" ca-file)
  printf 'postgres://postgres:postgres@127.0.0.1:%s/%s?sslmode=verify-full&sslrootcert=%s&max_conns=20&max_idle_conns=4' \
    "$PG_PORT" "$KRATOS_DB" "$ca"
}

ensure_database() {
  local pg="$ROOT/scripts/stack/postgres.sh"
  if [[ "$(bash "$pg" psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$KRATOS_DB'")" != 1 ]]; then
    say "creating database $KRATOS_DB"
    bash "$pg" psql -d postgres -c "CREATE DATABASE $KRATOS_DB"
  fi
}

# write_config OUT: the template with every @PLACEHOLDER@ filled.
write_config() {
  local out=$1 text key value
  text=$(cat "$KRATOS_SRC/kratos.yml")
  local -A values=(
    [DSN]="$(db_dsn)"
    [PUBLIC_PORT]="$KRATOS_PUBLIC_PORT"
    [ADMIN_PORT]="$KRATOS_ADMIN_PORT"
    [PUBLIC_URL]="$PUBLIC_URL"
    [ADMIN_URL]="$ADMIN_URL"
    [UI_URL]="$KRATOS_UI_URL"
    [STACK_DIR]="$KRATOS_SRC"
    [PRIVATE_JWKS]="$PRIVATE_JWKS"
    [LOGIN_WEBHOOK_URL]="http://127.0.0.1:$GATEWAY_PORT/webhooks/login"
    [LOGIN_WEBHOOK_SECRET]="$(secret LOGIN_WEBHOOK_SECRET)"
    [COOKIE_SECRET]="$(secret KRATOS_COOKIE_SECRET)"
    [CIPHER_SECRET]="$(secret KRATOS_CIPHER_SECRET)"
  )
  for key in "${!values[@]}"; do
    value=${values[$key]}
    [[ -n "$value" ]] || die "kratos: no value for @$key@"
    text=${text//"@$key@"/"$value"}   # quoted: no pattern or & expansion in the value
  done
  [[ "$text" != *@[A-Z_]*@* ]] || die "kratos: unfilled placeholder in $(rel "$KRATOS_SRC/kratos.yml"): $(grep -o '@[A-Z_]*@' <<< "$text" | head -n1)"
  ( umask 077; printf '%s\n' "$text" > "$out" )
}

is_running() { running_pid "$NAME" "$KRATOS serve"; }
jwks_pattern() { printf 'http.server --bind 127.0.0.1 %s' "$KRATOS_JWKS_PORT"; }
jwks_running() { running_pid "$JWKS_NAME" "$(jwks_pattern)"; }

kratos_ready() {
  curl -sf --max-time 2 "$ADMIN_URL/admin/health/ready" >/dev/null \
    && curl -sf --max-time 2 "$PUBLIC_URL/health/ready" >/dev/null
}
jwks_ready() { curl -sf --max-time 2 "http://127.0.0.1:$KRATOS_JWKS_PORT/jwks.json" | grep -q '"kty"'; }

start_jwks() {
  local pid py
  if pid=$(jwks_running); then
    say "$JWKS_NAME already running (pid $pid)"
  else
    require_port_free "$JWKS_NAME" "$KRATOS_JWKS_PORT"
    # the interpreter itself, not a version-manager shim, so the pid file holds the server
    py=$(python3 -c 'import sys; print(sys.executable)') || die "kratos: python3 is needed for the JWKS server"
    say "starting $JWKS_NAME on 127.0.0.1:$KRATOS_JWKS_PORT"
    spawn "$JWKS_NAME" "$PUBLIC_DIR" "$py" -m http.server --bind 127.0.0.1 "$KRATOS_JWKS_PORT" --directory "$PUBLIC_DIR"
    pid=$(head -n1 "$(pidfile "$JWKS_NAME")")
  fi
  wait_ready "$JWKS_NAME" "$pid" "$KRATOS_READY_TIMEOUT" jwks_ready
}

start() {
  install
  ensure_dirs
  ensure_kratos_secrets
  mkdir -p "$KRATOS_DATA"
  chmod 700 "$KRATOS_DATA"   # the config holds secrets
  ensure_keys
  start_jwks
  ensure_database
  write_config "$KRATOS_CONFIG.new"
  local pid
  if pid=$(is_running); then
    if cmp -s "$KRATOS_CONFIG.new" "$KRATOS_CONFIG"; then
      rm -f "$KRATOS_CONFIG.new"
      say "$NAME already running (pid $pid)"
      wait_ready "$NAME" "$pid" "$KRATOS_READY_TIMEOUT" kratos_ready
      return 0
    fi
    say "$NAME configuration changed; restarting"
    stop_pid "$NAME" "$pid" TERM 20 KILL
  fi
  mv "$KRATOS_CONFIG.new" "$KRATOS_CONFIG"
  require_port_free "$NAME" "$KRATOS_PUBLIC_PORT"
  require_port_free "$NAME" "$KRATOS_ADMIN_PORT"
  local log
  log=$(logfile "$NAME")
  printf '\n---- %s kratos migrate sql ----\n' "$(date -Is)" >> "$log"
  if ! (cd "$KRATOS_DATA" && "$KRATOS" migrate sql -e --yes -c "$KRATOS_CONFIG") >> "$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "kratos: migrations failed; see $(rel "$log")"
  fi
  say "starting $NAME (Ory Kratos $KRATOS_VERSION) on 127.0.0.1:$KRATOS_PUBLIC_PORT (admin $KRATOS_ADMIN_PORT)"
  spawn "$NAME" "$KRATOS_DATA" "$KRATOS" serve -c "$KRATOS_CONFIG" --dev --sqa-opt-out
  pid=$(head -n1 "$(pidfile "$NAME")")
  wait_ready "$NAME" "$pid" "$KRATOS_READY_TIMEOUT" kratos_ready
}

stop() {
  local pid
  if pid=$(is_running); then
    stop_pid "$NAME" "$pid" TERM 20 KILL
  else
    say "$NAME not running"
  fi
  if pid=$(jwks_running); then
    stop_pid "$JWKS_NAME" "$pid" TERM 10 KILL
  else
    say "$JWKS_NAME not running"
  fi
}

status() {
  status_line "$NAME" "$KRATOS serve" "$KRATOS_PUBLIC_PORT"
  status_line "$JWKS_NAME" "$(jwks_pattern)" "$KRATOS_JWKS_PORT"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  bin) printf '%s\n' "$KRATOS" ;;
  config) printf '%s\n' "$KRATOS_CONFIG" ;;
  *) echo "usage: $0 {install|start|stop|status|bin|config}" >&2; exit 2 ;;
esac
