#!/usr/bin/env bash
# PostgreSQL 15 for the local stack: own cluster, 127.0.0.1:54322, wal_level=logical.
# Usage: scripts/stack/postgres.sh {install|start|stop|status|psql [args...]}
#
# Auth: the cluster is initialised with --auth=trust (local dev only: it listens on 127.0.0.1 and a
# unix socket inside .local/run). The postgres role still gets the real password 'postgres' so the
# URLs in .local/stack.env also work against a cluster that enforces passwords.
#
# TLS: ssl=on with a server certificate (DNS:localhost, IP:127.0.0.1) signed by a CA made once per
# data dir (kept in the data dir, readable by the cluster owner only); plain connections still work,
# the client chooses (sslmode). The CA certificate is copied to .local/data/postgres-ca.crt, which
# stack.env names as DATABASE_CA_FILE.
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=postgres
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_OS_USER="${PG_OS_USER:-substrate}"   # postgres refuses to run as root
PG_SUPERUSER=postgres
PG_PASSWORD=postgres
PG_LINK="$DATA_DIR/postgres"
PG_CA_COPY="$DATA_DIR/postgres-ca.crt"   # public: the CA certificate clients verify the server with

as_root() { [[ $EUID -eq 0 ]]; }

# Run a command as the unprivileged cluster owner (or as ourselves when not root).
as_pg() {
  if as_root; then
    (cd / && runuser -u "$PG_OS_USER" -- "$@")
  else
    (cd / && "$@")
  fi
}

install() {
  if [[ ! -x "$PG_BIN/initdb" ]] || ! command -v openssl >/dev/null; then
    say "installing postgresql-15 and openssl (apt)"
    local sudo=()
    as_root || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 openssl
  fi
  [[ -x "$PG_BIN/initdb" ]] || die "postgres: $PG_BIN/initdb still missing after install"
  command -v openssl >/dev/null || die "postgres: openssl (for the TLS certificate) still missing after install"
  if as_root && ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    say "creating system user $PG_OS_USER (owns the postgres data dir)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
}

# Where the data dir and the unix socket live. Preferred: .local/data/postgres and .local/run/postgres.
# If the cluster owner cannot traverse into the repo (e.g. a clone under /root), prepare_paths uses
# /var/tmp/event-substrate-<hash>/ instead and leaves a symlink at .local/data/postgres.
PGDATA=""
PG_SOCKET_DIR=""
compute_paths() {   # no side effects
  if [[ -L "$PG_LINK" ]]; then
    PGDATA=$(readlink -f "$PG_LINK")
    PG_SOCKET_DIR="$(dirname "$PGDATA")/run"
  else
    PGDATA="$PG_LINK"
    PG_SOCKET_DIR="$RUN_DIR/postgres"
  fi
}

prepare_paths() {
  ensure_dirs
  if [[ ! -e "$PG_LINK" ]] && as_root && ! as_pg test -x "$DATA_DIR" -a -x "$RUN_DIR"; then
    local base
    base="/var/tmp/event-substrate-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    warn "user $PG_OS_USER cannot traverse into $ROOT; keeping postgres data in $base (symlinked from $(rel "$PG_LINK"))"
    mkdir -p "$base/postgres" "$base/run"
    ln -sfn "$base/postgres" "$PG_LINK"
  fi
  compute_paths
  mkdir -p "$PGDATA" "$PG_SOCKET_DIR"
  if as_root; then
    chown "$PG_OS_USER:" "$PGDATA" "$PG_SOCKET_DIR"
  fi
  chmod 700 "$PGDATA"
}

PATTERN_FOR_PGDATA() { printf '%s' "postgres -D $PGDATA"; }

is_running() {
  running_pid "$NAME" "$(PATTERN_FOR_PGDATA)" && return 0
  # our pid file is gone but the server may still run: recover the pid from postmaster.pid
  local pid
  pid=$(head -n1 "$PGDATA/postmaster.pid" 2>/dev/null) || return 1
  pid_matches "$pid" "$(PATTERN_FOR_PGDATA)" || return 1
  mkdir -p "$RUN_DIR" && printf '%s\n' "$pid" > "$(pidfile "$NAME")"
  printf '%s' "$pid"
}

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres; }

psql_cmd() {
  PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" "$@"
}

write_conf() {
  # Settings live in substrate.conf (included from postgresql.conf) and are rewritten on each start.
  local conf="$PGDATA/substrate.conf"
  cat > "$conf" <<EOF
# Written by scripts/stack/postgres.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 200
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
EOF
  as_root && chown "$PG_OS_USER:" "$conf"
  grep -q "^include_if_exists = 'substrate.conf'" "$PGDATA/postgresql.conf" \
    || printf "\ninclude_if_exists = 'substrate.conf'\n" >> "$PGDATA/postgresql.conf"
}

# The server's TLS certificate and its CA, in the data dir (mode 600, owned by the cluster owner).
# Made once: kept while all three files exist, the certificate verifies against the CA and stays
# valid for 30 more days; otherwise a new CA and certificate are made. Always refreshes the public
# copy of the CA certificate.
ensure_tls() {
  local crt="$PGDATA/server.crt" key="$PGDATA/server.key" ca="$PGDATA/substrate-ca.crt"
  if ! { as_pg test -s "$crt" -a -s "$key" -a -s "$ca" \
      && as_pg openssl x509 -in "$crt" -noout -checkend 2592000 >/dev/null 2>&1 \
      && as_pg openssl verify -CAfile "$ca" "$crt" >/dev/null 2>&1; }; then
    say "generating the TLS CA and server certificate of $NAME (localhost, 127.0.0.1)"
    local tmp log
    tmp=$(mktemp -d)
    log=$(logfile "$NAME")
    if ! (
      umask 077
      cd "$tmp"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
        -keyout ca.key -out ca.crt -subj "/CN=Event Substrate local PostgreSQL CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout server.key -out server.csr -subj "/CN=localhost"
      printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=critical,CA:FALSE' \
        'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' > server.ext
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile server.ext -out server.crt
    ) >> "$log" 2>&1; then
      rm -rf "$tmp"
      die "postgres: making the TLS certificate failed; see $(rel "$log")"
    fi
    local owner=()
    as_root && owner=(-o "$PG_OS_USER" -g "$PG_OS_USER")
    command install -m 600 "${owner[@]}" "$tmp/server.crt" "$crt"
    command install -m 600 "${owner[@]}" "$tmp/server.key" "$key"
    command install -m 600 "${owner[@]}" "$tmp/ca.crt" "$ca"
    command install -m 600 "${owner[@]}" "$tmp/ca.key" "$PGDATA/substrate-ca.key"
    rm -rf "$tmp"
  fi
  as_pg cat "$ca" > "$PG_CA_COPY.tmp"
  chmod 644 "$PG_CA_COPY.tmp"
  mv "$PG_CA_COPY.tmp" "$PG_CA_COPY"
}

bootstrap_sql() {
  psql_cmd -d postgres -c "ALTER USER $PG_SUPERUSER WITH PASSWORD '$PG_PASSWORD'"
  if [[ "$(psql_cmd -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'apicurio'")" != 1 ]]; then
    say "creating database apicurio"
    psql_cmd -d postgres -c "CREATE DATABASE apicurio"
  fi
}

start() {
  install
  prepare_paths
  local pid
  if pid=$(is_running); then
    say "$NAME already running (pid $pid)"
  else
    require_port_free "$NAME" "$PG_PORT"
    if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
      say "initdb $PGDATA"
      as_pg "$PG_BIN/initdb" -D "$PGDATA" -U "$PG_SUPERUSER" --auth=trust -E UTF8 --locale=C.UTF-8 \
        >> "$(logfile "$NAME")" 2>&1 || { tail -n 30 "$(logfile "$NAME")" >&2; die "postgres: initdb failed; see $(rel "$(logfile "$NAME")")"; }
    fi
    ensure_tls
    write_conf
    local cmd=("$PG_BIN/postgres" -D "$PGDATA")
    if as_root; then
      cmd=(setpriv --reuid="$PG_OS_USER" --regid="$PG_OS_USER" --init-groups --reset-env "${cmd[@]}")
    fi
    say "starting $NAME on 127.0.0.1:$PG_PORT"
    spawn "$NAME" / "${cmd[@]}"
    pid=$(head -n1 "$(pidfile "$NAME")")
  fi
  wait_ready "$NAME" "$pid" "$PG_READY_TIMEOUT" pg_ready
  bootstrap_sql
}

stop() {
  compute_paths
  local pid
  if pid=$(is_running); then
    # SIGINT = "fast" shutdown: disconnects clients, checkpoints, exits cleanly (SIGTERM would wait for
    # every client to disconnect). Escalates to SIGQUIT (immediate shutdown) after 60 s.
    stop_pid "$NAME" "$pid" INT 60 QUIT
  else
    say "$NAME not running"
  fi
}

status() {
  compute_paths
  is_running >/dev/null || true   # re-creates a lost pid file
  status_line "$NAME" "$(PATTERN_FOR_PGDATA)" "$PG_PORT"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  psql) shift; psql_cmd "$@" ;;
  datadir) compute_paths; printf '%s\n' "$PGDATA" ;;
  ca-file) printf '%s\n' "$PG_CA_COPY" ;;
  *) echo "usage: $0 {install|start|stop|status|psql [args]|datadir|ca-file}" >&2; exit 2 ;;
esac
