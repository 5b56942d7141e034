#!/usr/bin/env bash
# The web app (web/): npm install and a Vite build into web/dist, which the gateway serves.
# Each step runs only when its inputs changed (stamps hold the hash of the inputs).
#   build    npm ci (when package-lock.json changed) + vite build (when the sources changed)
#   browser  Debian's chromium for the Playwright tests (apt, when missing)
# Usage: scripts/stack/web.sh {build|browser}
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WEB="$ROOT/web"
# Vite 8 needs Node.js 20.19 or newer.
NODE_MIN=20.19

require_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
    || die "web: node and npm are not installed (Node.js >= $NODE_MIN is a prerequisite, see the README)"
  local version
  version=$(node -p 'process.versions.node')
  node -e "const [a,b]=process.versions.node.split('.').map(Number);const [x,y]='$NODE_MIN'.split('.').map(Number);process.exit(a>x||(a===x&&b>=y)?0:1)" \
    || die "web: Node.js $version is too old (need >= $NODE_MIN)"
}

hash_of() { (cd "$WEB" && cat "$@" 2>/dev/null | sha256sum | cut -c1-16); }

deps() {
  local stamp="$WEB/node_modules/.substrate-stamp" want
  want=$(hash_of package.json package-lock.json)
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  say "web: npm ci (log in $(rel "$LOGS_DIR/web-npm.log"))"
  # Playwright drives Debian's chromium; its own browser download is neither needed nor reachable.
  (cd "$WEB" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund) > "$LOGS_DIR/web-npm.log" 2>&1 \
    || die "web: npm ci failed; see $(rel "$LOGS_DIR/web-npm.log")"
  echo "$want" > "$stamp"
}

build() {
  ensure_dirs
  require_node
  deps
  local stamp="$WEB/dist/.substrate-stamp" want files
  files=$(cd "$WEB" && find index.html src vite.config.ts tsconfig.json package.json package-lock.json -type f | sort)
  # shellcheck disable=SC2086
  want=$(hash_of $files)
  if [[ -f "$stamp" && -f "$WEB/dist/index.html" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  say "web: type check + vite build → web/dist"
  (cd "$WEB" && npm run -s build) > "$LOGS_DIR/web-build.log" 2>&1 \
    || { tail -n 30 "$LOGS_DIR/web-build.log" >&2; die "web: build failed; see $(rel "$LOGS_DIR/web-build.log")"; }
  echo "$want" > "$stamp"
}

browser() {
  [[ -x /usr/bin/chromium ]] && return 0
  local sudo=()
  [[ $EUID -eq 0 ]] || sudo=(sudo)
  say "installing (apt): chromium (the browser tests drive it)"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation
}

case "${1:-}" in
  build) build ;;
  browser) browser ;;
  *) echo "usage: $0 {build|browser}" >&2; exit 2 ;;
esac
