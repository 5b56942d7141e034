#!/usr/bin/env bash
# A real Kubernetes API server for the chart tests (never for `start`): etcd v3.7.3 and
# kube-apiserver v1.37.2 on loopback, with kubectl v1.37.2 and helm v3.22.0 — all built from the
# Go module proxy once per machine into the tools cache (~/.cache/event-substrate/tools, shared
# Go module and build caches), plus the CRDs of the Prometheus Operator (ServiceMonitor) and KEDA
# (ScaledObject) from their Go modules.
#   tools   build what is missing (helm ~4 min, etcd ~2 min, kube-apiserver ~9 min + kubectl cold)
#   start   a fresh etcd + kube-apiserver (token auth, self-signed serving certificate);
#           writes .local/k8s.env (KUBECONFIG, HELM, KUBECTL, the CRD files)
#   stop    stop both;  status  one line each
# Usage: scripts/stack/k8s.sh {tools|start|stop|status}
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HELM_VERSION=v3.22.0
ETCD_VERSION=v3.7.3
KUBE_VERSION=v1.37.2
PROMETHEUS_OPERATOR_VERSION=v0.85.0
KEDA_VERSION=v2.21.0
TOOLS_CACHE="${SUBSTRATE_TOOLS_CACHE:-$HOME/.cache/event-substrate/tools}"
HELM="$TOOLS_CACHE/helm-$HELM_VERSION/bin/helm"
ETCD="$TOOLS_CACHE/etcd-$ETCD_VERSION/bin/etcd"
KUBE_HOME="$TOOLS_CACHE/kubernetes-$KUBE_VERSION"
KUBE_APISERVER="$KUBE_HOME/bin/kube-apiserver"
KUBECTL="$KUBE_HOME/bin/kubectl"
K8S_DATA="$DATA_DIR/k8s"
K8S_ENV="$LOCAL_DIR/k8s.env"
KUBECONFIG_FILE="$K8S_DATA/kubeconfig"
ETCD_PORT=23790
ETCD_PEER_PORT=23800
APISERVER_PORT=16443
BUILD_LOG="$LOGS_DIR/k8s-build.log"

# go_build NAME DIR OUT PKG [LDFLAGS]: builds PKG of the wrapper module DIR (stack/k8s/NAME) in a
# copy under the tools cache, so the clone is never written to.
go_build() {
  local name=$1 src=$2 out=$3 pkg=$4 ldflags=${5:-} work
  work="$TOOLS_CACHE/k8s-build/$name"
  mkdir -p "$work" "$(dirname "$out")"
  # go.mod and go.sum, and main.go where the module has its own main package (etcd)
  find "$src" -maxdepth 1 -type f \( -name 'go.*' -o -name '*.go' \) -exec cp {} "$work/" \;
  printf '\n---- %s go build %s ----\n' "$(date -Is)" "$pkg" >> "$BUILD_LOG"
  # The wrapper's go.sum pins every module; without one (a version bump) tidy writes it first.
  if [[ ! -f "$src/go.sum" ]]; then
    (cd "$work" && go mod tidy) >> "$BUILD_LOG" 2>&1 || { tail -n 30 "$BUILD_LOG" >&2; die "k8s: go mod tidy for $name failed; see $(rel "$BUILD_LOG")"; }
  fi
  if ! (cd "$work" && CGO_ENABLED=0 nice -n 10 go build -mod=readonly -trimpath -ldflags="-s $ldflags" -o "$out.tmp" "$pkg") >> "$BUILD_LOG" 2>&1; then
    rm -f "$out.tmp"
    tail -n 30 "$BUILD_LOG" >&2
    die "k8s: building $pkg failed; see $(rel "$BUILD_LOG")"
  fi
  mv "$out.tmp" "$out"
}

tools() {
  ensure_dirs
  command -v go >/dev/null 2>&1 || die "k8s: go is not installed (the chart tests build helm, etcd and kube-apiserver from the Go module proxy)"
  local t0
  # Helm's release builds set the Kubernetes version `helm template` and `helm lint` assume (a
  # plain build says v1.20, below the chart's kubeVersion) and its own version.
  local helm_flags="-s -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  local pkg minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  for pkg in pkg/chartutil pkg/lint/rules; do
    helm_flags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$minor"
  done
  if [[ ! -x "$HELM" || "$(cat "$(dirname "$HELM")/../build-flags" 2>/dev/null)" != "$helm_flags" ]]; then
    t0=$SECONDS
    say "building helm $HELM_VERSION from the Go module proxy (log in $(rel "$BUILD_LOG"))"
    mkdir -p "$(dirname "$HELM")"
    (GOBIN="$(dirname "$HELM")" CGO_ENABLED=0 nice -n 10 go install -trimpath -ldflags="$helm_flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION") >> "$BUILD_LOG" 2>&1 \
      || { tail -n 30 "$BUILD_LOG" >&2; die "k8s: building helm failed; see $(rel "$BUILD_LOG")"; }
    printf '%s\n' "$helm_flags" > "$(dirname "$HELM")/../build-flags"
    say "helm built in $(( SECONDS - t0 ))s"
  fi
  if [[ ! -x "$ETCD" ]]; then
    t0=$SECONDS
    say "building etcd $ETCD_VERSION from the Go module proxy (log in $(rel "$BUILD_LOG"))"
    go_build etcd "$ROOT/stack/k8s/etcd" "$ETCD" .
    say "etcd built in $(( SECONDS - t0 ))s"
  fi
  if [[ ! -x "$KUBE_APISERVER" || ! -x "$KUBECTL" ]]; then
    t0=$SECONDS
    say "building kube-apiserver and kubectl $KUBE_VERSION from the Go module proxy (log in $(rel "$BUILD_LOG"); ~10 min cold, 2.4 GB peak)"
    local version="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
    go_build kubernetes "$ROOT/stack/k8s/kubernetes" "$KUBE_APISERVER" k8s.io/kubernetes/cmd/kube-apiserver "$version"
    go_build kubernetes "$ROOT/stack/k8s/kubernetes" "$KUBECTL" k8s.io/kubernetes/cmd/kubectl "$version"
    say "kube-apiserver and kubectl built in $(( SECONDS - t0 ))s"
  fi
}

# crd_dir MODULE@VERSION SUBDIR: the directory of a module in the Go module cache (downloaded
# through the proxy when missing).
crd_dir() {
  local dir
  dir=$(go mod download -json "$1" 2>>"$BUILD_LOG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') \
    || die "k8s: go mod download $1 failed; see $(rel "$BUILD_LOG")"
  [[ -d "$dir/$2" ]] || die "k8s: $1 has no $2"
  printf '%s/%s' "$dir" "$2"
}

certs() {
  mkdir -p "$K8S_DATA"
  [[ -s "$K8S_DATA/serving.crt" && -s "$K8S_DATA/sa.key" && -s "$K8S_DATA/tokens.csv" ]] && return 0
  command -v openssl >/dev/null || die "k8s: openssl is needed for the API server's certificates"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$K8S_DATA/serving.key" -out "$K8S_DATA/serving.crt" 2>/dev/null
  openssl genrsa -out "$K8S_DATA/sa.key" 2048 2>/dev/null
  openssl rsa -in "$K8S_DATA/sa.key" -pubout -out "$K8S_DATA/sa.pub" 2>/dev/null
  printf '%s,chart-tests,chart-tests,system:masters\n' "$(random_string 40)" > "$K8S_DATA/tokens.csv"
  chmod 600 "$K8S_DATA"/*.key "$K8S_DATA/tokens.csv"
}

start() {
  ensure_dirs
  tools
  stop >/dev/null 2>&1 || true
  certs
  local token pid
  token=$(cut -d, -f1 "$K8S_DATA/tokens.csv")
  # A fresh store every time: each test run starts from an empty cluster.
  rm -rf "$K8S_DATA/etcd"
  require_port_free etcd "$ETCD_PORT"
  require_port_free kube-apiserver "$APISERVER_PORT"
  spawn etcd "$K8S_DATA" "$ETCD" --name chart-tests --data-dir "$K8S_DATA/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "chart-tests=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn
  pid=$(head -n1 "$(pidfile etcd)")
  wait_ready etcd "$pid" 30 curl -sf "http://127.0.0.1:$ETCD_PORT/health"
  # --endpoint-reconciler-type=none: a loopback advertise address is refused otherwise.
  spawn kube-apiserver "$K8S_DATA" "$KUBE_APISERVER" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
    --advertise-address 127.0.0.1 --endpoint-reconciler-type none \
    --tls-cert-file "$K8S_DATA/serving.crt" --tls-private-key-file "$K8S_DATA/serving.key" \
    --service-account-key-file "$K8S_DATA/sa.pub" --service-account-signing-key-file "$K8S_DATA/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --token-auth-file "$K8S_DATA/tokens.csv" \
    --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/16 --cert-dir "$K8S_DATA/certs"
  pid=$(head -n1 "$(pidfile kube-apiserver)")
  cat > "$KUBECONFIG_FILE" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
  - name: chart-tests
    cluster:
      server: https://127.0.0.1:$APISERVER_PORT
      certificate-authority: $K8S_DATA/serving.crt
users:
  - name: chart-tests
    user:
      token: $token
contexts:
  - name: chart-tests
    context: {cluster: chart-tests, user: chart-tests}
current-context: chart-tests
KUBECONFIG
  chmod 600 "$KUBECONFIG_FILE"
  wait_ready kube-apiserver "$pid" 90 "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz
  local monitoring keda
  monitoring=$(crd_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" example/prometheus-operator-crd)
  keda=$(crd_dir "github.com/kedacore/keda/v2@$KEDA_VERSION" config/crd/bases)
  cat > "$K8S_ENV" <<ENV
# Written by scripts/stack/k8s.sh start: the chart tests' API server and tools.
KUBECONFIG=$KUBECONFIG_FILE
HELM=$HELM
KUBECTL=$KUBECTL
SERVICEMONITOR_CRD=$monitoring/monitoring.coreos.com_servicemonitors.yaml
SCALEDOBJECT_CRD=$keda/keda.sh_scaledobjects.yaml
ENV
  say "kube-apiserver $KUBE_VERSION on https://127.0.0.1:$APISERVER_PORT (kubeconfig $(rel "$KUBECONFIG_FILE"))"
}

stop() {
  local name pid
  rm -f "$K8S_ENV"
  for name in kube-apiserver etcd; do
    if pid=$(running_pid "$name" "$name"); then
      stop_pid "$name" "$pid" TERM 20
    fi
  done
}

status() {
  status_line kube-apiserver kube-apiserver "$APISERVER_PORT"
  status_line etcd etcd "$ETCD_PORT"
}

case "${1:-}" in
  tools) tools ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {tools|start|stop|status}" >&2; exit 2 ;;
esac
