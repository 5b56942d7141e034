#!/usr/bin/env bash
# SeaweedFS (Go module github.com/seaweedfs/seaweedfs, Apache-2.0) as the local S3 server: one
# `weed server -filer -s3` process (S3 8333, master 8334, volume 8335, filer 8336; gRPC = HTTP + 10000),
# every listener on 127.0.0.1, data in .local/data/s3. Requests must be SigV4-signed with the key pair
# generated once into .local/data/secrets.env (S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY); path-style URLs.
# The buckets media-uploads and event-archive are created on every start when missing.
# Usage: scripts/stack/s3.sh {install|start|stop|status|verify}
#   verify: boto3 + requests (throwaway venv under /tmp) check signed, presigned and unsigned access,
#           that every listener is on 127.0.0.1, and that objects survive an s3 restart.
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAME=s3
SEAWEEDFS_MODULE=github.com/seaweedfs/seaweedfs
SEAWEEDFS_VERSION="${SEAWEEDFS_VERSION:-v0.0.0-20261109003541-7506e5f91cd6}"
# Built once per machine and version (minutes on 2 cores), kept outside the clone like the cargo
# target dir so fresh clones reuse it; override with SUBSTRATE_TOOLS_CACHE.
WEED_HOME="${SUBSTRATE_TOOLS_CACHE:-$HOME/.cache/event-substrate/tools}/seaweedfs-$SEAWEEDFS_VERSION"
WEED="$WEED_HOME/bin/weed"
S3_HOME="$DATA_DIR/s3"          # cwd of the process (master.toml is read from ./) and s3.json
S3_STORE="$S3_HOME/store"       # master raft state, volumes, filer leveldb
S3_CONFIG="$S3_HOME/s3.json"    # S3 identities (holds the secret key; mode 600)
S3_URL="http://127.0.0.1:$S3_PORT"
S3_VOLUME_SIZE_MB="${S3_VOLUME_SIZE_MB:-64}"
S3_VOLUME_MAX="${S3_VOLUME_MAX:-32}"   # at most 32 volumes x 64 MB on disk
VERIFY_VENV="${S3_VERIFY_VENV:-/tmp/event-substrate-s3-verify-venv}"

# Builds bin/weed from the module source in the Go module cache (downloaded through the Go module proxy).
# A plain `go install MODULE/weed@VERSION` is rejected by the go command (SeaweedFS's go.mod has a replace directive),
# so the module is downloaded with `go mod download` and built as the main module from its cache dir.
# GOPATH/GOMODCACHE/GOCACHE keep their defaults, so later builds reuse the module and build caches.
install() {
  ensure_dirs
  if [[ -x "$WEED" && "$(cat "$WEED_HOME/version" 2>/dev/null)" == "$SEAWEEDFS_VERSION" ]]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "s3: go is not installed (needed to build SeaweedFS from the Go module proxy)"
  local log="$LOGS_DIR/seaweedfs-build.log" t0=$SECONDS src
  say "building SeaweedFS $SEAWEEDFS_VERSION from the Go module proxy (log in $(rel "$log"); takes minutes)"
  printf '\n---- %s go mod download %s@%s ----\n' "$(date -Is)" "$SEAWEEDFS_MODULE" "$SEAWEEDFS_VERSION" >> "$log"
  src=$(cd /tmp && go mod download -json "$SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION" 2>>"$log" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p') || true
  [[ -n "$src" && -f "$src/go.mod" ]] \
    || { tail -n 20 "$log" >&2; die "s3: go mod download $SEAWEEDFS_MODULE@$SEAWEEDFS_VERSION failed; see $(rel "$log")"; }
  mkdir -p "$WEED_HOME/bin"
  printf -- '---- %s go build ./weed in %s ----\n' "$(date -Is)" "$src" >> "$log"
  # nice: a background build should not starve an interactive cargo build on a small machine
  if ! (cd "$src" && nice -n 10 go build -mod=readonly -trimpath -ldflags=-s -o "$WEED.tmp" ./weed) >> "$log" 2>&1; then
    rm -f "$WEED.tmp"
    tail -n 40 "$log" >&2
    die "s3: building SeaweedFS failed; see $(rel "$log")"
  fi
  mv "$WEED.tmp" "$WEED"
  printf '%s\n' "$SEAWEEDFS_VERSION" > "$WEED_HOME/version"
  say "SeaweedFS built in $(( SECONDS - t0 ))s ($("$WEED" version 2>/dev/null | head -n1))"
}

write_config() {
  mkdir -p "$S3_HOME" "$S3_STORE"
  local ak sk
  ak=$(secret S3_ACCESS_KEY_ID); sk=$(secret S3_SECRET_ACCESS_KEY)
  [[ -n "$ak" && -n "$sk" ]] || die "s3: S3_ACCESS_KEY_ID/S3_SECRET_ACCESS_KEY missing in $(rel "$SECRETS_ENV")"
  (
    umask 077
    cat > "$S3_CONFIG.tmp" <<EOF
{
  "identities": [
    {
      "name": "substrate",
      "credentials": [ { "accessKey": "$ak", "secretKey": "$sk" } ],
      "actions": [ "Admin", "Read", "Write", "List", "Tagging" ]
    }
  ]
}
EOF
  )
  mv "$S3_CONFIG.tmp" "$S3_CONFIG"
  # Only what differs from the defaults; weed reads ./master.toml from its working directory.
  cat > "$S3_HOME/master.toml" <<'EOF'
# Written by scripts/stack/s3.sh on every start; edits are overwritten.
[master.volume_growth]
copy_1 = 1   # grow one volume at a time (default 7): a small dev store
EOF
}

is_running() { running_pid "$NAME" "$WEED server"; }

# s3_curl ARGS...: curl signed with SigV4 and the stack's key pair; prints only the HTTP status code.
s3_curl() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
    --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$(secret S3_ACCESS_KEY_ID):$(secret S3_SECRET_ACCESS_KEY)" "$@"
}

# Ready = a signed ListBuckets succeeds (S3 gateway, filer and identities are up) and the master has
# the volume server registered (before that the first PUT fails with "no writable volumes").
s3_ready() {
  [[ "$(s3_curl "$S3_URL/")" == 200 ]] || return 1
  curl -sf --max-time 5 "http://127.0.0.1:$S3_MASTER_PORT/dir/status" | grep -q "127.0.0.1:$S3_VOLUME_PORT"
}

ensure_buckets() {
  local b code
  for b in "$S3_MEDIA_BUCKET" "$S3_ARCHIVE_BUCKET"; do
    code=$(s3_curl -I "$S3_URL/$b")
    case "$code" in
      200) ;;
      404)
        code=$(s3_curl -X PUT "$S3_URL/$b")
        [[ "$code" == 200 ]] || die "s3: creating bucket $b returned HTTP $code"
        say "created bucket $b" ;;
      *) die "s3: HEAD bucket $b returned HTTP $code" ;;
    esac
  done
}

start() {
  install
  ensure_dirs
  ensure_secrets
  local pid
  if pid=$(is_running); then
    say "$NAME already running (pid $pid)"
  else
    local p
    for p in "$S3_PORT" "$S3_MASTER_PORT" "$S3_VOLUME_PORT" "$S3_FILER_PORT"; do
      require_port_free "$NAME" "$p"
      require_port_free "$NAME" "$(( p + 10000 ))"
    done
    write_config
    say "starting $NAME (SeaweedFS $SEAWEEDFS_VERSION) on 127.0.0.1:$S3_PORT"
    spawn "$NAME" "$S3_HOME" "$WEED" server \
      -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$S3_STORE" \
      -master.port="$S3_MASTER_PORT" -master.port.grpc="$(( S3_MASTER_PORT + 10000 ))" \
      -master.volumeSizeLimitMB="$S3_VOLUME_SIZE_MB" -master.telemetry=false -master.electionTimeout=2s \
      -volume.port="$S3_VOLUME_PORT" -volume.port.grpc="$(( S3_VOLUME_PORT + 10000 ))" \
      -volume.max="$S3_VOLUME_MAX" -volume.preStopSeconds=1 \
      -filer -filer.port="$S3_FILER_PORT" -filer.port.grpc="$(( S3_FILER_PORT + 10000 ))" \
      -filer.localSocket="$RUN_DIR/s3-filer.sock" \
      -s3 -s3.port="$S3_PORT" -s3.port.grpc="$(( S3_PORT + 10000 ))" -s3.localSocket="$RUN_DIR/s3.sock" \
      -s3.port.iceberg=0 -s3.port.lance=0 -s3.iam=false -s3.config="$S3_CONFIG"
    pid=$(head -n1 "$(pidfile "$NAME")")
  fi
  wait_ready "$NAME" "$pid" "$S3_READY_TIMEOUT" s3_ready
  ensure_buckets
}

stop() {
  local pid
  if pid=$(is_running); then
    stop_pid "$NAME" "$pid" TERM 30 KILL
  else
    say "$NAME not running"
  fi
}

status() { status_line "$NAME" "$WEED server" "$S3_PORT"; }

# verify_listeners: every TCP listener of the weed process is on 127.0.0.1
verify_listeners() {
  local pid=$1 addrs bad
  addrs=$(ss -Hltnp 2>/dev/null | grep "pid=$pid," | awk '{print $4}' | sort -u)
  [[ -n "$addrs" ]] || die "s3 verify: ss shows no listener for pid $pid"
  bad=$(printf '%s\n' "$addrs" | grep -v '^127\.0\.0\.1:' || true)
  [[ -z "$bad" ]] || die "s3 verify: listeners not on 127.0.0.1: $(echo "$bad" | tr '\n' ' ')"
  say "listeners (all 127.0.0.1): $(printf '%s\n' "$addrs" | sed 's/^127\.0\.0\.1://' | sort -n | tr '\n' ' ')"
}

# verify_py PHASE [ARGS...]: the boto3/requests checks below, in a venv reused across runs.
verify_py() {
  if [[ ! -x "$VERIFY_VENV/bin/python" ]] || ! "$VERIFY_VENV/bin/python" -c 'import boto3, requests' 2>/dev/null; then
    say "creating $VERIFY_VENV (pip install boto3 requests)"
    python3 -m venv "$VERIFY_VENV" || die "s3 verify: python3 -m venv failed"
    "$VERIFY_VENV/bin/pip" install -q --disable-pip-version-check boto3 requests \
      || die "s3 verify: pip install boto3 requests failed"
  fi
  S3_ENDPOINT="$S3_URL" S3_REGION="$S3_REGION" S3_MEDIA_BUCKET="$S3_MEDIA_BUCKET" S3_ARCHIVE_BUCKET="$S3_ARCHIVE_BUCKET" \
    S3_ACCESS_KEY_ID="$(secret S3_ACCESS_KEY_ID)" S3_SECRET_ACCESS_KEY="$(secret S3_SECRET_ACCESS_KEY)" \
    "$VERIFY_VENV/bin/python" - "$@" <<'PY'
import hashlib, os, sys, time
import boto3, requests
from botocore.config import Config
from botocore.exceptions import ClientError

ep, region = os.environ["S3_ENDPOINT"], os.environ["S3_REGION"]
ak, sk = os.environ["S3_ACCESS_KEY_ID"], os.environ["S3_SECRET_ACCESS_KEY"]
media, archive = os.environ["S3_MEDIA_BUCKET"], os.environ["S3_ARCHIVE_BUCKET"]
cfg = Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1})

def client(key=ak, secret=sk):
    return boto3.client("s3", endpoint_url=ep, region_name=region, aws_access_key_id=key,
                        aws_secret_access_key=secret, config=cfg)

s3 = client()
passed, failed = 0, 0

def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"  ok   {name}")
    else:
        failed += 1
        print(f"  FAIL {name} {detail}")

def err_code(fn):
    try:
        fn()
        return "no error"
    except ClientError as e:
        return f'{e.response["ResponseMetadata"]["HTTPStatusCode"]} {e.response["Error"]["Code"]}'

phase = sys.argv[1]
run = os.urandom(6).hex()
if phase == "check":
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    check(f"ListBuckets contains {media} and {archive}", {media, archive} <= names, names)

    key, body = f"zz-verify/{run}/object.bin", os.urandom(200_000)
    s3.put_object(Bucket=media, Key=key, Body=body, ContentType="application/octet-stream")
    head = s3.head_object(Bucket=media, Key=key)
    check("PutObject + HeadObject (size, md5 ETag)",
          head["ContentLength"] == len(body) and head["ETag"].strip('"') == hashlib.md5(body).hexdigest(), head)
    check("GetObject returns the same bytes", s3.get_object(Bucket=media, Key=key)["Body"].read() == body)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=media, Prefix=f"zz-verify/{run}/").get("Contents", [])]
    check("ListObjectsV2 with prefix", listed == [key], listed)
    s3.delete_object(Bucket=media, Key=key)
    check("DeleteObject, then HeadObject is 404", err_code(lambda: s3.head_object(Bucket=media, Key=key)).startswith("404"))

    # presigned PUT by a plain HTTP client, then read back (presigned GET and signed GetObject)
    pkey, pbody = f"zz-verify/{run}/presigned.png", os.urandom(50_000)
    put_url = s3.generate_presigned_url("put_object", ExpiresIn=300,
                                        Params={"Bucket": media, "Key": pkey, "ContentType": "image/png"})
    r = requests.put(put_url, data=pbody, headers={"Content-Type": "image/png"}, timeout=10)
    check("presigned PUT (requests) -> 200", r.status_code == 200, (r.status_code, r.text[:200]))
    get_url = s3.generate_presigned_url("get_object", ExpiresIn=300, Params={"Bucket": media, "Key": pkey})
    r = requests.get(get_url, timeout=10)
    check("presigned GET returns the same bytes", r.status_code == 200 and r.content == pbody, r.status_code)
    obj = s3.get_object(Bucket=media, Key=pkey)
    check("GetObject after presigned PUT: same bytes, Content-Type kept",
          obj["Body"].read() == pbody and obj["ContentType"] == "image/png", obj.get("ContentType"))
    tampered = put_url.replace("X-Amz-Signature=", "X-Amz-Signature=0")[:-1]
    r = requests.put(tampered, data=b"x", headers={"Content-Type": "image/png"}, timeout=10)
    check("presigned PUT with a tampered signature -> 403", r.status_code == 403, r.status_code)
    other = s3.generate_presigned_url("put_object", ExpiresIn=300,
                                      Params={"Bucket": media, "Key": pkey + ".other", "ContentType": "image/png"})
    r = requests.put(other.replace(".other", ".evil", 1), data=b"x", headers={"Content-Type": "image/png"}, timeout=10)
    check("presigned PUT used for another key -> 403", r.status_code == 403, r.status_code)
    short = s3.generate_presigned_url("get_object", ExpiresIn=1, Params={"Bucket": media, "Key": pkey})
    time.sleep(2.5)
    r = requests.get(short, timeout=10)
    check("expired presigned GET -> 403", r.status_code == 403, r.status_code)
    s3.delete_object(Bucket=media, Key=pkey)

    # multipart upload (2 x 5 MiB + tail) into the archive bucket
    mkey = f"zz-verify/{run}/multipart.bin"
    parts_data = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), os.urandom(1000)]
    up = s3.create_multipart_upload(Bucket=archive, Key=mkey)
    parts = [{"PartNumber": i + 1, "ETag": s3.upload_part(Bucket=archive, Key=mkey, UploadId=up["UploadId"],
                                                          PartNumber=i + 1, Body=d)["ETag"]}
             for i, d in enumerate(parts_data)]
    s3.complete_multipart_upload(Bucket=archive, Key=mkey, UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
    check("multipart upload (10 MiB) round trip",
          s3.get_object(Bucket=archive, Key=mkey)["Body"].read() == b"".join(parts_data))
    s3.delete_object(Bucket=archive, Key=mkey)

    # unsigned and wrongly signed requests are refused
    ukey = f"zz-verify/{run}/unsigned.txt"
    r = requests.get(f"{ep}/", timeout=10)
    check("unsigned ListBuckets -> 403", r.status_code == 403, (r.status_code, r.text[:120]))
    r = requests.put(f"{ep}/{media}/{ukey}", data=b"x", timeout=10)
    check("unsigned PutObject -> 403", r.status_code == 403, (r.status_code, r.text[:120]))
    s3.put_object(Bucket=media, Key=ukey, Body=b"secret")
    r = requests.get(f"{ep}/{media}/{ukey}", timeout=10)
    check("unsigned GetObject of an existing object -> 403", r.status_code == 403, r.status_code)
    code = err_code(lambda: client(secret=sk[:-1] + ("A" if sk[-1] != "A" else "B")).get_object(Bucket=media, Key=ukey))
    check(f"wrong secret key -> 403 SignatureDoesNotMatch ({code})", code == "403 SignatureDoesNotMatch", code)
    code = err_code(lambda: client(key="AKIAUNKNOWNKEY000000").list_buckets())
    check(f"unknown access key -> 403 InvalidAccessKeyId ({code})", code == "403 InvalidAccessKeyId", code)
    s3.delete_object(Bucket=media, Key=ukey)

    # marker for the restart check (phase 'persist')
    mk, mb = f"zz-verify/{run}/persist.bin", os.urandom(30_000)
    s3.put_object(Bucket=archive, Key=mk, Body=mb)
    with open(sys.argv[2], "w") as f:
        f.write(f"{mk} {hashlib.sha256(mb).hexdigest()}\n")
elif phase == "persist":
    mk, digest = open(sys.argv[2]).read().split()
    got = s3.get_object(Bucket=archive, Key=mk)["Body"].read()
    check("object written before the restart reads back unchanged", hashlib.sha256(got).hexdigest() == digest)
    s3.delete_object(Bucket=archive, Key=mk)
    names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    check("buckets still there after the restart", {media, archive} <= names, names)
print(f"s3 verify ({phase}): {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
}

# verify: S3 checks with a real client, then an s3 restart and a read of an object written before it.
verify() {
  s3_ready || die "s3 is not running (./taskw infra:start)"
  local pid marker rc=0
  pid=$(is_running) || die "s3 is running but not from $(rel "$(pidfile "$NAME")")"
  verify_listeners "$pid"
  marker=$(mktemp)
  verify_py check "$marker" || rc=$?
  if (( rc != 0 )); then rm -f "$marker"; die "s3 verify failed"; fi
  say "restarting s3 to check persistence"
  stop
  start
  verify_py persist "$marker" || rc=$?
  rm -f "$marker"
  (( rc == 0 )) || die "s3 verify failed after the restart"
  say "s3 verify OK"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  verify) verify ;;
  *) echo "usage: $0 {install|start|stop|status|verify}" >&2; exit 2 ;;
esac
