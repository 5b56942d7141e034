#!/usr/bin/env bash
# PostgreSQL 15 for the local stack: own cluster, 127.0.0.1:54322, wal_level=logical.
# Usage: scripts/stack/postgres.sh {install|start|stop|status|psql [args...]}
#
# Auth: the cluster is initialised with --auth=trust (local dev only: it listens on 127.0.0.1 and a
# unix socket inside .local/run). The postgres role still gets the real password 'postgres' so the
# URLs in .local/stack.env also work against a cluster that enforces passwords.
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=postgres
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_OS_USER="${PG_OS_USER:-substrate}"   # postgres refuses to run as root
PG_SUPERUSER=postgres
PG_PASSWORD=postgres
PG_LINK="$DATA_DIR/postgres"

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
  if [[ ! -x "$PG_BIN/initdb" ]]; then
    say "installing postgresql-15 (apt)"
    local sudo=()
    as_root || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15
  fi
  [[ -x "$PG_BIN/initdb" ]] || die "postgres: $PG_BIN/initdb still missing after install"
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
EOF
  as_root && chown "$PG_OS_USER:" "$conf"
  grep -q "^include_if_exists = 'substrate.conf'" "$PGDATA/postgresql.conf" \
    || printf "\ninclude_if_exists = 'substrate.conf'\n" >> "$PGDATA/postgresql.conf"
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
  *) echo "usage: $0 {install|start|stop|status|psql [args]|datadir}" >&2; exit 2 ;;
esac
